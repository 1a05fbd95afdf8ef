from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_GLUE = REPO.parent / "shared" / "glue"


def write_glue_split(root: Path, config: str, split: str, columns: dict[str, list]) -> Path:
    """One split file in the Hub layout of nyu-mll/glue: <config>/<split>-00000-of-00001.parquet."""
    path = Path(root) / config / f"{split}-00000-of-00001.parquet"
    path.parent.mkdir(parents=True, exist_ok=True)
    pq.write_table(pa.table(columns), path)
    return path


def pair_rows(col_a: str, col_b: str, n: int, num_labels: int, label: int | None = None) -> dict[str, list]:
    return {
        col_a: [f"first sentence number {i} ." for i in range(n)],
        col_b: [f"second sentence number {i} ?" for i in range(n)],
        "label": [(i % num_labels) if label is None else label for i in range(n)],
        "idx": pa.array(range(n), pa.int32()),
    }


@pytest.fixture(scope="module")
def one_torch_thread():
    """Tiny models: one intra-op thread is several times faster than two on a busy 2-core box."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture
def glue_mirror(tmp_path: Path) -> Path:
    """A small GLUE mirror with qqp and mnli (the configs not in ../shared/glue), Hub layout."""
    root = tmp_path / "glue"
    for split, n in [("train", 12), ("validation", 6), ("test", 5)]:
        write_glue_split(root, "qqp", split, pair_rows("question1", "question2", n, 2, -1 if split == "test" else None))
    for split, n in [("train", 12), ("validation_matched", 6), ("validation_mismatched", 7),
                     ("test_matched", 4), ("test_mismatched", 3)]:
        write_glue_split(root, "mnli", split, pair_rows("premise", "hypothesis", n, 3, -1 if split.startswith("test") else None))
    return root


def run_cli(*args: str, cwd: Path | None = None, env: dict | None = None) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    return subprocess.run([sys.executable, "-m", "stages", *args], cwd=cwd, env=full_env,
                          capture_output=True, text=True)


def write_params(path: Path, **sections) -> Path:
    """A params.yaml holding the defaults with some sections overridden."""
    import yaml

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    for key, value in sections.items():
        if isinstance(value, dict):
            params[key] = {**params[key], **value}
        else:
            params[key] = value
    path.write_text(yaml.safe_dump(params))
    return path


SINGLE_WORDS = {1: ["good", "great", "fine", "lovely"], 0: ["bad", "awful", "dull", "poor"]}


def synthetic_raw(raw_dir: Path, task, n_train: int = 48, n_dev: int = 16, seed: int = 0) -> Path:
    """A raw split directory (RAW_SCHEMA) whose label is given by a sentiment word in text_a."""
    import numpy as np

    from stages.data.io import RAW_SCHEMA

    rng = np.random.default_rng(seed)
    raw_dir = Path(raw_dir)
    raw_dir.mkdir(parents=True, exist_ok=True)
    splits = {"train": n_train, **{name: n_dev for name in task.eval_splits}}
    for split, n in splits.items():
        labels = rng.integers(0, task.num_labels, n)
        text_a = [f"the movie was {rng.choice(SINGLE_WORDS[int(l) % 2])} and the cast {rng.choice(['sang', 'ran', 'ate'])}"
                  for l in labels]
        text_b = [f"a {rng.choice(['short', 'long'])} story number {i}" for i in range(n)] if task.is_pair else [None] * n
        table = pa.table({"text_a": text_a, "text_b": text_b, "label": labels.astype("int64"),
                          "idx": np.arange(n, dtype="int64")}, schema=RAW_SCHEMA)
        pq.write_table(table, raw_dir / f"{split}.parquet")
    return raw_dir


@pytest.fixture(scope="session")
def tiny_project(tmp_path_factory) -> Path:
    """The tiny two-task project of tests/tiny_project.py after its first `dvc repro`, built once per session.
    Tests copy it (tiny_project.copy_built) rather than change it."""
    from tests.tiny_project import build

    return build(tmp_path_factory.mktemp("tiny-project"))
