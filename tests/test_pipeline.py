"""A real, tiny `dvc repro` of the whole pipeline in a temporary git repository, then the
experiment workflow users rely on: `dvc exp run -S student.hidden=...` reruns only what depends on
the student, and `dvc metrics diff` shows the change."""

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from stages.report.exp_table import KEY_PARAMS
from tests.conftest import REPO, pair_rows, write_glue_split, write_params

pytestmark = pytest.mark.slow

TINY = dict(
    tasks=["sst2", "mrpc"],
    seeds=[1, 2],
    teacher={"epochs": 1, "batch_size": 8, "max_length": 32, "max_train_examples": 24, "evals_per_epoch": 1},
    augment={"n_iter": 2, "max_examples": 80},
    label={"batch_size": 16, "shard_rows": 32},
    student={"hidden": 8, "fc": 8, "vocab_size": 200},
    distill={"epochs": 2, "batch_size": 16},
    evaluate={"throughput_sentences": 16, "batch_size": 8, "reference_architectures": ["bert-base"]},
)


TASKS, SEEDED = ("sst2", "mrpc"), ("student", "baseline")
SUMMARY_COLUMNS = ["student.dev_accuracy", "student.dev_accuracy_sd", "baseline.dev_accuracy",
                   "baseline.dev_accuracy_sd", "teacher.dev_accuracy", "gain.points", "gain.p_paired_t",
                   "gain.p_mcnemar", "student_of_teacher", "speedup", "seeds"]
MRPC_COLUMNS = ["student.dev_accuracy", "student.dev_accuracy_sd", "student.dev_f1", "student.dev_f1_sd",
                "baseline.dev_accuracy", "baseline.dev_accuracy_sd", "baseline.dev_f1", "baseline.dev_f1_sd",
                "teacher.dev_accuracy", "teacher.dev_f1", "gain.points", "gain.p_paired_t", "gain.p_mcnemar",
                "student_of_teacher", "speedup", "seeds"]


def _tiny_glue(root: Path) -> None:
    words = ["good", "bad", "fine", "dull", "movie", "plot", "cast", "long", "short", "songs"]
    for split, n in [("train", 40), ("validation", 12), ("test", 6)]:
        sentences = [" ".join(words[(i * k) % len(words)] for k in range(1, 6 + i % 4)) for i in range(n)]
        write_glue_split(root, "sst2", split, {"sentence": sentences, "label": [i % 2 if split != "test" else -1 for i in range(n)],
                                               "idx": list(range(n))})
        write_glue_split(root, "mrpc", split, pair_rows("sentence1", "sentence2", n, 2))


def _copy_project(repo: Path) -> None:
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data/external").mkdir(parents=True)
    shutil.copy(REPO / "data/external/README.md", repo / "data/external/README.md")


def _run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def test_tiny_pipeline_repro_rerun_and_experiment(tmp_path):
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_project(repo)
    _tiny_glue(tmp_path / "glue")
    write_params(repo / "params.yaml", **TINY, data={"glue_dir": str(tmp_path / "glue")})
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny"], repo)

    first = _run(["dvc", "repro"], repo)
    per_task = ["download", "teacher", "augment", "label", "evaluate", "export"]
    assert _ran(first) == ({"check", "sources"} | {f"{s}@{t}" for s in per_task for t in TASKS}
                           | {f"{s}@{t}-{seed}" for s in SEEDED for t in TASKS for seed in (1, 2)})
    for task in TASKS:
        report = json.loads((repo / f"metrics/{task}/report.json").read_text())
        assert report["seeds"] == [1, 2] and set(report["scores"]) == {"teacher", "baseline", "student"}
        assert report["scores"]["student"]["dev"]["accuracy"]["n"] == 2
        scores = {kind: report["scores"][kind]["dev"]["accuracy"]["seeds"] for kind in SEEDED}
        differences = [scores["student"][s] - scores["baseline"][s] for s in ("1", "2")]
        assert report["gain"]["dev"]["accuracy"]["mean"] == pytest.approx(sum(differences) / 2)
        assert report["student_vs_teacher"]["speedup"] > 0  # timed, so only its presence: benchmarks measure speed
        # the timing-only yardstick has BERT-base's published size (109,482,240 + a 2-way head)
        bert_base = report["references"]["bert-base"]
        assert bert_base["params_all"] == 109_483_778 and bert_base["weights"] == "random (timing only)"
        assert bert_base["student_speedup"] > 0
        assert (repo / f"metrics/{task}/summary.md").read_text().startswith(f"# {task}")
        assert (repo / f"metrics/{task}/results.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert (repo / f"models/student/{task}/seed-2/model.pt").is_file()
    labeled_rows = json.loads((repo / "metrics/mrpc/label.json").read_text())["rows"]
    assert labeled_rows == json.loads((repo / "metrics/mrpc/augment.json").read_text())["rows"] <= 80

    second = _run(["dvc", "repro"], repo)
    assert _ran(second) == set() and "Data and pipelines are up to date" in second

    # `dvc exp show`: the metrics are summary.json's alone, scores first; no params or split counts among them
    header = next(csv.reader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], repo))))
    assert header[:6] == ["Experiment", "rev", "typ", "Created", "parent", "metrics/sst2/summary.json:student.dev_accuracy"]
    workspace = json.loads(_run(["dvc", "exp", "show", "--json"], repo))[0]["data"]
    assert list(workspace["metrics"]) == ["metrics/sst2/summary.json", "metrics/mrpc/summary.json"]
    for task, columns in (("sst2", SUMMARY_COLUMNS), ("mrpc", MRPC_COLUMNS)):
        shown = workspace["metrics"][f"metrics/{task}/summary.json"]["data"]
        written = json.loads((repo / f"metrics/{task}/summary.json").read_text())
        flat = lambda d: [f"{k}.{kk}" if isinstance(v, dict) else k for k, v in d.items()
                          for kk in (v if isinstance(v, dict) else [None])]
        assert flat(written) == columns
        # DVC leaves out null metrics (a p-value that two identical seeds cannot give): the rest, in order
        null = {f"{k}.{kk}" for k, v in written.items() if isinstance(v, dict) for kk, vv in v.items() if vv is None}
        assert flat(shown) == [c for c in columns if c not in null]

    # every curated plot renders and has at least two points
    plots = json.loads(_run(["dvc", "plots", "show", "--json"], repo))["data"]
    assert len(plots) == 4
    for name, views in plots.items():
        assert len(views[0]["content"]["data"]["values"]) >= 2, name

    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline results"], repo)
    experiment = _run(["dvc", "exp", "run", "-S", "student.hidden=12", "-S", "distill.rho=0.9"], repo)
    # the student's size (and its optimizer) change the student and the plain BiLSTM (the same network) for
    # every seed, and the summary; never the teacher or the transfer set
    assert _ran(experiment) == ({"check"} | {f"{s}@{t}-{seed}" for s in SEEDED for t in TASKS for seed in (1, 2)}
                                | {f"{s}@{t}" for s in ("evaluate", "export") for t in TASKS})
    changed = json.loads(_run(["dvc", "metrics", "diff", "--json"], repo))
    assert "student.dev_accuracy" in json.dumps(changed["metrics/sst2/summary.json"])

    # `python -m stages show`: every metric, the key params, the param that differs (rho) and nothing else
    full = next(csv.reader(io.StringIO(_run(["dvc", "exp", "show", "--csv"], repo))))
    shown = next(csv.reader(io.StringIO(_run([sys.executable, "-m", "stages", "show", "--csv"], repo))))
    # DVC prefixes a name with its file only where two files share it (sst2's and mrpc's scores, `seeds`)
    metric_names = {*SUMMARY_COLUMNS, *MRPC_COLUMNS}
    metrics = [c for c in full if c.split(":")[-1] in metric_names and not c.startswith("params.yaml:")]
    params = [c for c in full[5:] if c not in metrics and "/" not in c]
    assert len(full) > 100 and len(metrics) > len(MRPC_COLUMNS) and "student.dev_f1" in metrics
    assert shown == ["Experiment", "rev", "typ", "Created", "parent", *metrics,
                     *[c for c in params if c.split(":")[-1] in (*KEY_PARAMS, "distill.rho")]]
    assert "params.yaml:seeds" in shown and "distill.lr" in params and "distill.lr" not in shown
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "hidden 12"], repo)

    # more seeds: only the new seed's runs and the summaries
    more = _run(["dvc", "exp", "run", "-S", "seeds=[1,2,3]"], repo)
    assert _ran(more) == {"check"} | {f"{s}@{t}-3" for s in SEEDED for t in TASKS} | {f"{s}@{t}" for s in ("evaluate", "export")
                                                                           for t in TASKS}
    assert json.loads((repo / "metrics/sst2/report.json").read_text())["seeds"] == [1, 2, 3]

    # a transfer-set knob reruns augment, label and what follows, never download or teacher
    rerun = _run(["dvc", "exp", "run", "-S", "augment.p_mask=0.2", "evaluate@sst2"], repo)
    assert _ran(rerun) == {"check", "augment@sst2", "label@sst2", "evaluate@sst2"} | {f"student@sst2-{s}" for s in (1, 2, 3)}

    predicted = _run([sys.executable, "-m", "stages", "predict", "--model", "models/student/mrpc/seed-1", "--json",
                      "first sentence number 1 .\tsecond sentence number 1 ?"], repo)
    row = json.loads(predicted.strip().splitlines()[-1])
    assert row["label"] in ("not_equivalent", "equivalent") and abs(sum(row["probabilities"].values()) - 1) < 1e-3
    shipped = _run([sys.executable, "-m", "stages", "predict", "--backend", "onnx", "--model", "models/export/mrpc",
                    "--json", "first sentence number 1 .\tsecond sentence number 1 ?"], repo)
    onnx_row = json.loads(shipped.strip().splitlines()[-1])
    assert onnx_row["probabilities"] == pytest.approx(row["probabilities"], abs=2e-4)  # seed 1 of both, exported
    export = json.loads((repo / "metrics/mrpc/export.json").read_text())
    assert export["seed"] == 1 and export["max_abs_logit_diff_fp32"] <= 1e-4
    assert (repo / "models/export/mrpc/README.md").read_text().startswith("---\nlibrary_name: onnx")


def test_own_datasets_run_through_every_stage_and_rerun_alone(tmp_path):
    """Two datasets declared only in params.yaml (a 3-class single-sentence CSV, a pair JSONL): the whole
    pipeline runs; a changed file reruns its own dataset from download on, and no stage of the other."""
    repo = tmp_path / "repo"
    repo.mkdir()
    _copy_project(repo)
    external = repo / "data/external"
    words = ["good", "bad", "fine", "dull", "movie", "plot", "cast", "long", "short", "songs"]
    reviews = [{"review": " ".join(words[(i * k) % 10] for k in range(1, 5 + i % 3)), "stars": 1 + i % 3} for i in range(45)]
    (external / "reviews").mkdir()
    with open(external / "reviews/train.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, ["review", "stars"])
        writer.writeheader()
        writer.writerows(reviews)
    (external / "pairs").mkdir()
    (external / "pairs/train.jsonl").write_text("".join(
        json.dumps({"a": f"first sentence number {i} .", "b": f"second sentence {i % 7} ?", "same": ["no", "yes"][i % 2]})
        + "\n" for i in range(40)))
    datasets = {"reviews": {"train": "data/external/reviews/train.csv", "text": ["review"], "label": "stars"},
                "pairs": {"train": "data/external/pairs/train.jsonl", "text": ["a", "b"], "label": "same",
                          "dev_fraction": 0.25}}
    # unlabeled pairs for the pair task's transfer set (docs/unlabeled-text.md); one equals a dev pair or not
    (external / "pairs/more.tsv").write_text("x\ty\n" + "".join(f"third sentence {i} .\tfourth sentence {i} ?\n"
                                                                  for i in range(6)))
    unlabeled = {"pairs": {"files": ["data/external/pairs/more.tsv"], "text": ["x", "y"]}}
    write_params(repo / "params.yaml", **{**TINY, "tasks": ["reviews", "pairs"], "seeds": [1], "datasets": datasets,
                                          "unlabeled": unlabeled,
                                          "evaluate": {**TINY["evaluate"], "reference_architectures": []}})
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "own data"], repo)

    stages = ["download", "teacher", "augment", "label", "student", "baseline", "evaluate", "export"]

    def of(task: str) -> set[str]:
        return {f"{s}@{task}-1" if s in SEEDED else f"{s}@{task}" for s in stages}

    assert _ran(_run(["dvc", "repro"], repo)) == {"check", "sources"} | of("reviews") | of("pairs")
    summary = json.loads((repo / "metrics/reviews/summary.json").read_text())
    assert {"accuracy", "macro_f1"} <= {k.split("_", 1)[1] for k in summary["student"]}  # 3 classes: macro-F1
    assert "student.dev_f1" not in json.dumps(summary) and "dev_f1" in json.dumps(
        json.loads((repo / "metrics/pairs/summary.json").read_text()))
    assert _ran(_run(["dvc", "repro"], repo)) == set()
    transfer = json.loads((repo / "metrics/pairs/augment.json").read_text())
    assert transfer["sources"]["unlabeled"] == 6 and transfer["unlabeled_input"]["rows_read"] == 6

    # changing only the unlabeled text reruns the transfer set and what follows, never download or teacher
    with open(external / "pairs/more.tsv", "a") as f:
        f.write("a fifth sentence .\ta sixth sentence ?\n")
    assert _ran(_run(["dvc", "repro"], repo)) == {"sources"} | of("pairs") - {"download@pairs", "teacher@pairs",
                                                                              "baseline@pairs-1"}
    assert json.loads((repo / "metrics/pairs/augment.json").read_text())["sources"]["unlabeled"] == 7

    with open(external / "reviews/train.csv", "a") as f:
        f.write("a brand new good movie,3\n")
    assert _ran(_run(["dvc", "repro"], repo)) == {"sources"} | of("reviews")

    params = yaml.safe_load((repo / "params.yaml").read_text())
    params["datasets"]["pairs"]["dev_fraction"] = 0.3
    (repo / "params.yaml").write_text(yaml.safe_dump(params))
    assert _ran(_run(["dvc", "repro"], repo)) == {"check", "sources"} | of("pairs")
