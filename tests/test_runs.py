"""The committed runs (runs/<task>-full/, docs/reproducing-the-paper.md; runs/<task>-compare/, docs/compare.md): each one's dvc.lock must
record exactly the params of its params.yaml, and its report must cover exactly that file's seeds, so no
result in the README or docs/ can silently come from other settings than the committed file says."""

import json
from pathlib import Path

import pytest
from ruamel.yaml import YAML

from stages.params import load_params
from tests.conftest import REPO

RUNS = sorted(p for pattern in ("*-full", "*-compare") for p in (REPO / "runs").glob(pattern) if p.is_dir())


def _get(tree: dict, dotted: str):
    for key in dotted.split("."):
        tree = tree[key]
    return tree


def test_there_are_full_scale_and_compare_runs():
    assert {p.name for p in RUNS} >= {"sst2-full", "mrpc-full", "rte-full", "mrpc-compare", "tweets-compare", "sst2-compare"}


@pytest.mark.parametrize("run", RUNS, ids=lambda p: p.name)
def test_a_committed_run_is_the_params_file_it_ships_with(run: Path):
    yaml = YAML(typ="safe")  # YAML 1.2, as DVC reads and writes these files (5e-05 is a number)
    params_file = yaml.load((run / "params.yaml").read_text())
    params = load_params(run / "params.yaml")  # still a valid params file for today's code
    (task,) = params.tasks
    stages = yaml.load((run / "dvc.lock").read_text())["stages"]
    for name, stage in stages.items():
        for key, value in stage.get("params", {}).get("params.yaml", {}).items():
            assert _get(params_file, key) == value, f"{run.name}: {name} ran with {key}={value!r}"
    trained = {int(n.rsplit("-", 1)[1]) for n in stages if n.startswith(f"student@{task}-")}
    assert trained == set(params.seeds)
    report = json.loads((run / "metrics" / task / "report.json").read_text())
    assert report["task"] == task and report["seeds"] == params.seeds
    metrics = run / "metrics" / task
    for kind in ("student", "baseline"):
        # runs since archs: <kind>/<arch>/seed-<n>/; the full-scale runs predate archs: <kind>/seed-<n>/
        folders = ([metrics / kind / arch for arch in params.archs] if (metrics / kind / params.archs[0]).is_dir()
                   else [metrics / kind])
        for folder in folders:
            for seed in params.seeds:
                run_json = json.loads((folder / f"seed-{seed}" / "run.json").read_text())
                assert run_json["seed"] == seed and run_json["task"] == task


@pytest.mark.parametrize("run", [r for r in RUNS if r.name.endswith("-compare")], ids=lambda p: p.name)
def test_a_committed_compare_run_ranks_every_arch_of_its_params_over_its_seeds(run: Path):
    params = load_params(run / "params.yaml")
    (task,) = params.tasks
    compare = json.loads((run / "metrics" / task / "compare.json").read_text())
    students = {m["arch"]: m for m in compare["models"] if m["kind"] == "student"}
    assert set(students) == set(params.archs)
    for model in students.values():
        assert model["seeds"] == params.seeds
    shipped = [m["name"] for m in compare["models"] if m["shipped"]]
    assert shipped == [compare["ship"]["name"]]
    export = json.loads((run / "metrics" / task / "export.json").read_text())
    assert export["arch"] == compare["ship"]["arch"] and export["seed"] == compare["ship"]["seed"]
