"""params.yaml is validated whole, cross-field rules included, before any stage does work; a bad
`dvc exp run -S` value stops at the first stage (`check`) and removes no other stage's outputs."""

import shutil
import subprocess
from pathlib import Path

import pytest

from stages.errors import StageError
from stages.params import load_params
from typer.testing import CliRunner

from stages.cli import app
from tests.conftest import REPO, write_params


@pytest.mark.parametrize("override, message", [
    ({"seeds": [-3]}, r"seeds\.0: .*greater than or equal to 0"),
    ({"seeds": [4294967296]}, r"seeds\.0: .*less than or equal to 4294967295"),
    ({"seeds": [True]}, r"seeds\.0: Input should be a valid integer \(got True\)"),
    ({"seeds": ["2"]}, r"seeds\.0: Input should be a valid integer \(got '2'\)"),
    ({"seed": 2.5}, r"seed: Input should be a valid integer"),
    ({"seed": -1}, r"seed: .*greater than or equal to 0"),
    ({"data": {"split_seed": True}}, r"data\.split_seed: Input should be a valid integer"),
    ({"tasks": []}, r"tasks: List should have at least 1 item"),
    ({"augment": {"ngram_min": 4, "ngram_max": 2}}, r"augment: ngram_min \(4\) is larger than ngram_max \(2\)"),
    ({"augment": {"p_mask": 0.6, "p_pos": 0.5}}, r"augment: p_mask \+ p_pos = 1\.1 is over 1"),
    ({"student": {"embeddings": "glove-42"}}, r"student\.embeddings: unknown embeddings 'glove-42'; choose one of "
                                                r"glove-6b-50d, word2vec-google-news-300, random"),
    ({"student": {"cnn_widths": [0]}}, r"student\.cnn_widths\.0: .*greater than or equal to 1"),
    ({"student": {"cnn_widths": [3, 99]}, }, r"student: a cnn_widths value \(99\) is longer than max_length \(64\)"),
    ({"student": {"hidden": "abc"}}, r"student\.hidden: Input should be a valid integer"),
    ({"student": {"hidden": True}}, r"student\.hidden: Input should be a valid integer"),
    ({"distill": {"lr": True}}, r"distill\.lr: a number, not a boolean"),
    ({"teacher": {"lr_grid": [2e-5, -1]}}, r"teacher\.lr_grid\.1: .*greater than 0"),
    ({"data": {"rt_dev_fraction": 0.45, "rt_test_fraction": 0.45}}, None),  # allowed: 0.9 < 1
])
def test_bad_values_fail_when_params_are_loaded(tmp_path, override, message):
    params = write_params(tmp_path / "params.yaml", **override)
    if message is None:
        load_params(params)
        return
    with pytest.raises(StageError, match=message):
        load_params(params)


def test_floats_written_by_yaml_1_1_as_strings_still_load(tmp_path):
    """PyYAML reads 1e-3 (no dot) as a string; DVC's -S writes it so: it must still be a float."""
    params = write_params(tmp_path / "params.yaml")
    params.write_text(params.read_text().replace("lr: 1.0\n", "lr: 1e-3\n", 1))
    assert load_params(params).distill.lr == 0.001


def test_check_params_command_writes_a_constant_file_and_refuses_bad_values(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    good = write_params(tmp_path / "params.yaml")
    result = CliRunner().invoke(app, ["check-params", "--params", str(good)])
    assert result.exit_code == 0, result.output
    assert (tmp_path / "data/params-checked.txt").read_text() == "params.yaml is valid\n"
    bad = write_params(tmp_path / "bad.yaml", augment={"ngram_min": 6})
    result = CliRunner().invoke(app, ["check-params", "--params", str(bad)])
    assert isinstance(result.exception, StageError) and "ngram_min (6) is larger than ngram_max (5)" in str(result.exception)
    assert (tmp_path / "data/params-checked.txt").read_text() == "params.yaml is valid\n"


def test_every_stage_runs_after_the_check_stage():
    """dvc.yaml: `check` validates params.yaml first; `sources` depends on its output, and every other stage on
    sources' (through the data), so DVC runs the check before any stage removes its outputs."""
    import yaml

    stages = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]
    assert list(stages)[0] == "check" and stages["check"]["cmd"] == "python -m stages check-params"
    assert {"params.yaml": None} in stages["check"]["params"]  # every value of the file
    assert "data/params-checked.txt" in stages["sources"]["deps"]


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("dvc") is None and not (REPO / ".venv/bin/dvc").exists(), reason="needs dvc")
def test_a_bad_exp_run_override_keeps_the_outputs_of_other_stages(tmp_path):
    """A real DVC repo with the pattern of dvc.yaml: check -> first -> student. `dvc exp run -S student.hidden=abc`
    fails in `check`, and the student's output survives; the fix (a good value) reruns only `check`."""
    dvc = shutil.which("dvc") or str(REPO / ".venv/bin/dvc")
    run = lambda *cmd: subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True)
    (tmp_path / "params.yaml").write_text("student:\n  hidden: 3\n")
    check = "import sys, yaml; h = yaml.safe_load(open('params.yaml'))['student']['hidden']; " \
            "isinstance(h, int) or sys.exit('error: student.hidden'); open('ok.txt', 'w').write('valid')"
    (tmp_path / "check.py").write_text(check)
    (tmp_path / "dvc.yaml").write_text(
        "stages:\n"
        "  check:\n    cmd: python check.py\n    params:\n      - params.yaml:\n    outs:\n      - ok.txt:\n          cache: false\n"
        "  first:\n    cmd: echo first > first.txt\n    deps: [ok.txt]\n    outs: [first.txt]\n"
        "  student:\n    cmd: python -c \"open('model.txt', 'w').write('trained')\"\n    deps: [first.txt]\n"
        "    params: [student]\n    outs: [model.txt]\n")
    for cmd in (["git", "init", "-q"], [dvc, "init", "-q"], [dvc, "repro", "-q"], ["git", "add", "-A"],
                ["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "run"]):
        assert run(*cmd).returncode == 0, cmd
    bad = run(dvc, "exp", "run", "-S", "student.hidden=abc")
    assert "failed to reproduce 'check'" in bad.stderr + bad.stdout
    assert (tmp_path / "model.txt").read_text() == "trained"  # the student's output is still there
    fixed = run(dvc, "exp", "run", "-S", "student.hidden=3")
    assert fixed.returncode == 0 and "Stage 'student' didn't change, skipping" in fixed.stdout
    assert (tmp_path / "model.txt").read_text() == "trained"
