"""A real, tiny `dvc repro` of the whole pipeline in a temporary git repository, then the
experiment workflow users rely on: `dvc exp run -S student.hidden=...` reruns only what depends on
the student, and `dvc metrics diff` shows the change."""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, pair_rows, write_glue_split, write_params

pytestmark = pytest.mark.slow

TINY = dict(
    tasks=["sst2", "mrpc"],
    teacher={"epochs": 1, "batch_size": 8, "max_length": 32, "max_train_examples": 24, "evals_per_epoch": 1},
    augment={"n_iter": 2, "max_examples": 80},
    label={"batch_size": 16, "shard_rows": 32},
    student={"hidden": 8, "fc": 8, "vocab_size": 200},
    distill={"epochs": 2, "batch_size": 16},
    evaluate={"throughput_sentences": 16, "batch_size": 8, "reference_architectures": ["bert-base"]},
)


def _tiny_glue(root: Path) -> None:
    words = ["good", "bad", "fine", "dull", "movie", "plot", "cast", "long", "short", "songs"]
    for split, n in [("train", 40), ("validation", 12), ("test", 6)]:
        sentences = [" ".join(words[(i * k) % len(words)] for k in range(1, 6 + i % 4)) for i in range(n)]
        write_glue_split(root, "sst2", split, {"sentence": sentences, "label": [i % 2 if split != "test" else -1 for i in range(n)],
                                               "idx": list(range(n))})
        write_glue_split(root, "mrpc", split, pair_rows("sentence1", "sentence2", n, 2))


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
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    _tiny_glue(tmp_path / "glue")
    write_params(repo / "params.yaml", **TINY, data={"glue_dir": str(tmp_path / "glue")})
    _run(["git", "init", "-q"], repo)
    _run(["dvc", "init", "-q"], repo)
    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "tiny"], repo)

    first = _run(["dvc", "repro"], repo)
    stages = ["download", "teacher", "augment", "label", "student", "baseline", "evaluate"]
    assert _ran(first) == {f"{s}@{t}" for s in stages for t in ("sst2", "mrpc")}
    for task in ("sst2", "mrpc"):
        summary = json.loads((repo / f"metrics/{task}/summary.json").read_text())
        assert set(summary["models"]) == {"teacher", "baseline", "student"}
        assert summary["student_vs_teacher"]["speedup"] > 1
        # the timing-only yardstick has BERT-base's published size (109,482,240 + a 2-way head)
        bert_base = summary["references"]["bert-base"]
        assert bert_base["params_all"] == 109_483_778 and bert_base["weights"] == "random (timing only)"
        assert bert_base["student_speedup"] > summary["student_vs_teacher"]["speedup"]
        assert (repo / f"metrics/{task}/summary.md").read_text().startswith(f"# {task}")
    labeled_rows = json.loads((repo / "metrics/mrpc/label.json").read_text())["rows"]
    assert labeled_rows == json.loads((repo / "metrics/mrpc/augment.json").read_text())["rows"] <= 80

    second = _run(["dvc", "repro"], repo)
    assert _ran(second) == set() and "Data and pipelines are up to date" in second

    _run(["git", "add", "-A"], repo)
    _run(["git", "commit", "-qm", "baseline results"], repo)
    experiment = _run(["dvc", "exp", "run", "-S", "student.hidden=12"], repo)
    # the student's size changes the student and the plain BiLSTM (the same network), and the summary;
    # never the teacher or the transfer set
    assert _ran(experiment) == {f"{s}@{t}" for s in ("student", "baseline", "evaluate") for t in ("sst2", "mrpc")}
    diff = _run(["dvc", "metrics", "diff", "--json"], repo)
    changed = json.loads(diff)
    assert "metrics/sst2/student.json" in changed and "hidden" in json.dumps(changed["metrics/sst2/student.json"])
    assert "metrics/sst2/teacher.json" not in changed

    # a transfer-set knob reruns augment, label and what follows, never download or teacher
    rerun = _run(["dvc", "exp", "run", "-S", "augment.p_mask=0.2", "evaluate@sst2"], repo)
    assert _ran(rerun) == {"augment@sst2", "label@sst2", "student@sst2", "evaluate@sst2"}

    predicted = _run([sys.executable, "-m", "stages", "predict", "--model", "models/student/mrpc", "--json",
                      "first sentence number 1 .\tsecond sentence number 1 ?"], repo)
    row = json.loads(predicted.strip().splitlines()[-1])
    assert row["label"] in ("not_equivalent", "equivalent") and abs(sum(row["probabilities"].values()) - 1) < 1e-3
