"""One tiny project that the end-to-end tests share: built and `dvc repro`-ed once per test session
(tests/conftest.py: `tiny_project`), then copied by each test that changes it. Every stage process costs
seconds of imports, so one pipeline run serves the rerun, experiment, own-data and S3/queue tests.

The project has two tasks:
- `sst2`, GLUE through the Hub layout (a tiny mirror written here);
- `nli`, declared only in params.yaml: a 3-class sentence-pair JSONL file under data/external/, with unlabeled
  pairs (a TSV) added to its transfer set.
Its glue_dir is relative (`../glue`, as `../shared/glue` is in the README), so a copy, a clone and the queue's
copies of it all resolve it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from tests.conftest import REPO, write_glue_split, write_params

TINY = dict(
    tasks=["sst2", "nli"],
    seeds=[1, 2],
    archs=["bilstm", "ngram", "static"],  # every bag arch too, whatever the default's list
    teacher={"epochs": 1, "batch_size": 8, "max_length": 32, "max_train_examples": 24, "evals_per_epoch": 1},
    augment={"n_iter": 2, "max_examples": 80},
    label={"batch_size": 16, "shard_rows": 32},
    student={"hidden": 8, "fc": 8, "vocab_size": 200},
    ngram={"min_df": 1},
    static={"vocab_size": 2000, "dims": 16, "hidden": 8},  # the first 2,000 word pieces: two teacher passes
    distill={"epochs": 2, "batch_size": 16},
    evaluate={"throughput_sentences": 16, "batch_size": 8, "reference_architectures": ["bert-base"]},
    # peak RSS (a fresh process per model, ~9 s a task) is measured by the one test that turns it on
    compare={"throughput_sentences": 16, "batch_size": 8, "latency_sentences": 4, "timing_rounds": 1, "peak_rss": False},
)
TASKS, SEEDED, ARCHS = ("sst2", "nli"), ("student", "baseline"), ("bilstm", "ngram", "static")
PER_TASK = ("download", "teacher", "augment", "label", "compare", "evaluate", "export")
NLI_LABELS = ["contradiction", "neutral", "entailment"]
UNLABELED_PAIRS = 6


def tiny_glue(root: Path) -> None:
    words = ["good", "bad", "fine", "dull", "movie", "plot", "cast", "long", "short", "songs"]
    for split, n in [("train", 40), ("validation", 12), ("test", 6)]:
        sentences = [" ".join(words[(i * k) % len(words)] for k in range(1, 6 + i % 4)) for i in range(n)]
        write_glue_split(root, "sst2", split, {"sentence": sentences, "label": [i % 2 if split != "test" else -1
                                                                                  for i in range(n)],
                                               "idx": list(range(n))})


def copy_project(repo: Path) -> None:
    """The project's code and pipeline, without its data, models or git history."""
    for name in ("dvc.yaml", ".gitignore"):
        shutil.copy(REPO / name, repo / name)
    shutil.copytree(REPO / "stages", repo / "stages", ignore=shutil.ignore_patterns("__pycache__"))
    (repo / "data/external").mkdir(parents=True)
    shutil.copy(REPO / "data/external/README.md", repo / "data/external/README.md")


def run(cmd: list[str], cwd: Path) -> str:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}", "GIT_AUTHOR_NAME": "t",
           "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@t", "DVC_NO_ANALYTICS": "1"}
    result = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout[-3000:]}\n{result.stderr[-3000:]}"
    return result.stdout + result.stderr


def ran(output: str) -> set[str]:
    """The stages a `dvc repro` / `dvc exp run` output says it ran."""
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage '")}


def stages_of(task: str, seeds=(1, 2), archs=ARCHS) -> set[str]:
    return ({f"{s}@{task}" for s in PER_TASK} | {f"inputs@{task}-{arch}" for arch in archs}
            | {f"{s}@{task}-{arch}-{seed}" for s in SEEDED for arch in archs for seed in seeds})


def _declared_nli(repo: Path) -> tuple[dict, dict]:
    """A 3-class pair dataset in JSONL (labels as strings) and 6 unlabeled pairs in a TSV."""
    external = repo / "data/external/nli"
    external.mkdir()
    (external / "train.jsonl").write_text("".join(
        json.dumps({"premise": f"first sentence number {i} .", "hypothesis": f"second sentence {i % 7} ?",
                    "relation": NLI_LABELS[i % 3]}) + "\n" for i in range(48)))
    (external / "more.tsv").write_text("x\ty\n" + "".join(f"third sentence {i} .\tfourth sentence {i} ?\n"
                                                          for i in range(UNLABELED_PAIRS)))
    datasets = {"nli": {"train": "data/external/nli/train.jsonl", "text": ["premise", "hypothesis"],
                        "label": "relation", "dev_fraction": 0.25}}
    unlabeled = {"nli": {"files": ["data/external/nli/more.tsv"], "text": ["x", "y"]}}
    return datasets, unlabeled


def build(root: Path) -> Path:
    """root/repo: the tiny project, run once with `dvc repro` and committed; root/glue: its GLUE mirror.
    Returns the repo; the output of that first `dvc repro` is in root/first-repro.log."""
    repo = root / "repo"
    repo.mkdir()
    copy_project(repo)
    tiny_glue(root / "glue")
    datasets, unlabeled = _declared_nli(repo)
    write_params(repo / "params.yaml", **TINY, datasets=datasets, unlabeled=unlabeled, data={"glue_dir": "../glue"})
    run(["git", "init", "-q"], repo)
    run(["dvc", "init", "-q"], repo)
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "tiny"], repo)
    (root / "first-repro.log").write_text(run(["dvc", "repro"], repo))
    run(["git", "add", "-A"], repo)
    run(["git", "commit", "-qm", "results"], repo)
    return repo


def copy_built(built: Path, dest: Path) -> Path:
    """A copy of the built project at dest/repo, with dest/glue pointing at its GLUE mirror."""
    shutil.copytree(built, dest / "repo", symlinks=True)
    (dest / "glue").symlink_to(built.parent / "glue")
    return dest / "repo"
