"""Your own data (params.yaml `datasets:`): every file format, the Hub layout, multi-class and pair sets, each
validation error, and the metrics the task table gives them."""

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import yaml

from stages import paths
from stages.data.datasets import DatasetSpec, sort_labels
from stages.download import download
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA
from stages.report.metrics import macro_f1
from stages.params import DataParams, load_params
from stages.sources import write_sources
from stages.data.tasks import get_task
from tests.conftest import REPO, run_cli, write_params

REVIEWS = pd.DataFrame({
    "review": [f"review number {i} was {'great' if i % 3 == 0 else 'bad' if i % 3 == 1 else 'so-so'}" for i in range(30)],
    "rating": [["pos", "neg", "mixed"][i % 3] for i in range(30)],
})


def write_table(df: pd.DataFrame, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".csv":
        df.to_csv(path, index=False)
    elif path.suffix == ".tsv":
        df.to_csv(path, index=False, sep="\t")
    elif path.suffix == ".jsonl":
        df.to_json(path, orient="records", lines=True)
    else:
        pq.write_table(pa.Table.from_pandas(df, preserve_index=False), path)
    return path


def spec(**fields) -> DatasetSpec:
    return DatasetSpec.model_validate({"text": ["review"], "label": "rating", **fields})


def run_download(name: str, declared: dict, out: Path, **kwargs) -> dict:
    """sources, then download, as the two stages do them (paths relative to the current directory)."""
    write_sources([name], declared, paths.sources_dir(), hub_dir=kwargs.get("hub_dir"))
    return download(get_task(name), out, DataParams(**kwargs), source=paths.source_file(name))["splits"]


def read_raw(out: Path, split: str) -> pd.DataFrame:
    table = pq.read_table(out / f"{split}.parquet")
    assert table.schema.equals(RAW_SCHEMA, check_metadata=False)
    return table.to_pandas()


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("fmt", [".csv", ".tsv", ".jsonl", ".parquet"])
def test_every_format_gives_the_same_rows(workdir, fmt):
    write_table(REVIEWS.iloc[:24], workdir / f"data/external/reviews/train{fmt}")
    write_table(REVIEWS.iloc[24:], workdir / f"data/external/reviews/dev{fmt}")
    declared = {"reviews": spec(train=f"data/external/reviews/train{fmt}", dev=f"data/external/reviews/dev{fmt}")}
    summary = run_download("reviews", declared, workdir / "raw")
    task = get_task("reviews")
    # labels not given: the sorted distinct values; three classes: accuracy and macro-F1
    assert task.label_names == ("mixed", "neg", "pos") and task.metrics == ("accuracy", "macro_f1")
    assert (task.n_iter, task.student_batch_size, task.is_pair) == (20, 50, False)
    train = read_raw(workdir / "raw", "train")
    assert train["text_a"].tolist() == REVIEWS["review"].iloc[:24].tolist()
    assert [task.label_names[i] for i in train["label"]] == REVIEWS["rating"].iloc[:24].tolist()
    assert train["idx"].tolist() == list(range(1, 25))  # the row number in the file
    assert summary["dev"] == {"rows": 6, "labels": {"mixed": 2, "neg": 2, "pos": 2}, "dropped_empty_text": 0}
    assert not (workdir / "raw" / "test.parquet").exists()


def test_labels_fix_the_order_and_integers_work(workdir):
    df = pd.DataFrame({"review": [f"text {i}" for i in range(20)], "rating": [1 + i % 2 for i in range(20)]})
    write_table(df, workdir / "data/external/r/train.jsonl")
    run_download("r", {"r": spec(train="data/external/r/train.jsonl", labels=[2, 1])}, workdir / "raw", split_seed=3)
    task = get_task("r")
    assert task.label_names == ("2", "1") and task.metrics == ("accuracy", "f1")
    rows = pd.concat([read_raw(workdir / "raw", s) for s in ("train", "dev")]).sort_values("idx")
    assert rows["label"].tolist() == [1 - i % 2 for i in range(20)]  # rating 1 -> id 1, rating 2 -> id 0


def test_without_dev_a_stratified_share_of_train_is_dev(workdir):
    df = pd.DataFrame({"review": [f"text {i}" for i in range(100)], "rating": ["a"] * 70 + ["b"] * 30})
    write_table(df, workdir / "data/external/r/all.csv")
    declared = {"r": spec(train="data/external/r/all.csv", dev_fraction=0.2)}
    summary = run_download("r", declared, workdir / "raw", split_seed=7)
    assert summary["dev"]["labels"] == {"a": 14, "b": 6} and summary["train"]["rows"] == 80
    dev = read_raw(workdir / "raw", "dev")["idx"].tolist()
    run_download("r", declared, workdir / "again", split_seed=7)
    assert read_raw(workdir / "again", "dev")["idx"].tolist() == dev  # the split depends on data.split_seed only
    run_download("r", declared, workdir / "other", split_seed=8)
    assert read_raw(workdir / "other", "dev")["idx"].tolist() != dev


def test_pair_dataset_is_a_siamese_task_with_test_split(workdir):
    pairs = pd.DataFrame({"q1": [f"how do i {v} it" for v in "abcdefghij"], "q2": [f"can i {v} this" for v in "abcdefghij"],
                          "same": ["yes", "no"] * 5})
    write_table(pairs, workdir / "data/external/p/train.csv")
    other = pairs.assign(q1=pairs["q1"].str.replace("how do i", "why would i"))  # distinct texts: no leakage
    write_table(other.iloc[:4], workdir / "data/external/p/dev.csv")
    write_table(other.iloc[4:7].drop(columns="same"), workdir / "data/external/p/test.csv")  # unlabelled test
    declared = {"p": DatasetSpec(train="data/external/p/train.csv", dev="data/external/p/dev.csv",
                                 test="data/external/p/test.csv", text=["q1", "q2"], label="same", labels=["no", "yes"])}
    summary = run_download("p", declared, workdir / "raw")
    task = get_task("p")
    assert task.is_pair and (task.n_iter, task.student_batch_size) == (10, 256) and task.test_splits == {"test": "test"}
    assert read_raw(workdir / "raw", "train")["text_b"].tolist() == pairs["q2"].tolist()
    assert summary["test"]["labels"] == {"no": 0, "yes": 0, "unlabeled": 3}


def test_hub_dataset_from_a_local_copy_in_the_hub_layout(workdir):
    hub = workdir / "hub"
    for split, rows in (("train", REVIEWS.iloc[:24]), ("validation", REVIEWS.iloc[24:])):
        write_table(rows, hub / "org/tickets/default" / split / "0000.parquet")  # the refs/convert/parquet layout
    declared = {"tickets": spec(hub="org/tickets", splits={"train": "train", "dev": "validation"})}
    summary = run_download("tickets", declared, workdir / "raw", hub_dir=str(hub))
    assert summary["train"]["rows"] == 24 and summary["dev"]["rows"] == 6
    described = json.loads(paths.source_file("tickets").read_text())
    assert [f["path"] for f in described["files"]["dev"]] == [str(hub / "org/tickets/default/validation/0000.parquet")]
    with pytest.raises(StageError, match=r"no Parquet files for split 'train' of the Hub dataset org/tickets.*"
                                         r"mine/train-00000-of-00001\.parquet"):
        write_sources(["tickets"], {"tickets": spec(hub="org/tickets", config="mine",
                                                    splits={"train": "train", "dev": "validation"})},
                      paths.sources_dir(), hub_dir=str(hub))


def test_hub_dataset_through_the_hub_client(workdir, monkeypatch):
    """The default path (no hub_dir): huggingface_hub's snapshot_download, served from a primed offline cache."""
    cache, commit = workdir / "hf", "1" * 40
    repo = cache / "datasets--org--tickets"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(commit)
    for split, rows in (("train", REVIEWS.iloc[:24]), ("validation", REVIEWS.iloc[24:])):
        write_table(rows, repo / "snapshots" / commit / "data" / f"{split}-00000-of-00001.parquet")
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    import huggingface_hub.constants as constants

    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    declared = {"tickets": spec(hub="org/tickets", splits={"train": "train", "dev": "validation"})}
    summary = run_download("tickets", declared, workdir / "raw")
    assert summary["train"]["rows"] == 24 and read_raw(workdir / "raw", "dev")["text_a"].tolist() == \
        REVIEWS["review"].iloc[24:].tolist()


def _declare(workdir: Path, train: pd.DataFrame | bytes, dev: pd.DataFrame | None = None, suffix=".csv", **fields):
    files = {}
    for split, content in (("train", train), ("dev", dev)):
        if content is None:
            continue
        path = workdir / f"data/external/bad/{split}{suffix}"
        if isinstance(content, bytes):
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(content)
        else:
            write_table(content, path)
        files[split] = f"data/external/bad/{split}{suffix}"
    return {"bad": spec(**files, **fields)}


@pytest.mark.parametrize("case, message", [
    ("missing file", r"datasets\.bad\.dev: file data/external/bad/nope\.csv not found"),
    ("missing column", r"train\.csv: no column\(s\) \['rating'\].*columns are \['review', 'stars'\]"),
    ("label outside labels", r"dev\.csv, row 2, column 'rating': label 'meh' is not one of datasets\.bad\.labels"),
    ("empty label", r"train\.csv, row 3, column 'rating': empty label"),
    ("class absent from train", r"train\.csv: class\(es\) \['mixed'\] have no examples in the train split"),
    ("class absent from dev", r"dev\.csv: class\(es\) \['neg'\] have no examples in the dev split"),
    ("one class", r"has the single class \['pos'\]; a classifier needs at least 2"),
    ("bad encoding", r"train\.csv, line 3: bytes b'\\xe9t\\xe9,.*are not valid utf-8.*`encoding` \(e\.g\. latin-1\)"),
    ("bad jsonl", r"train\.jsonl, line 2: not valid JSON"),
    ("outside data/external", r"datasets\.bad\.train: elsewhere/train\.csv is outside data/external/"),
    ("unknown format", r"datasets\.bad\.train: data/external/bad/train\.xlsx is not one of the formats"),
    ("malformed csv", r"train\.csv: not a valid CSV file \(.*Expected 2 fields in line 3, saw 3"),
])
def test_validation_errors_name_file_row_and_column(workdir, case, message):
    good = REVIEWS.iloc[:12]
    labels = ["mixed", "neg", "pos"]
    if case == "missing file":
        declared = _declare(workdir, good)
        declared["bad"] = declared["bad"].model_copy(update={"dev": "data/external/bad/nope.csv"})
    elif case == "missing column":
        declared = _declare(workdir, good.rename(columns={"rating": "stars"}))
    elif case == "label outside labels":
        declared = _declare(workdir, good, good.assign(rating=["pos", "meh"] * 6), labels=labels)
    elif case == "empty label":
        declared = _declare(workdir, good.assign(rating=["pos", "neg", "", "mixed"] * 3))
    elif case == "class absent from train":
        declared = _declare(workdir, good[good["rating"] != "mixed"], good, labels=labels)
    elif case == "class absent from dev":
        declared = _declare(workdir, good, good[good["rating"] != "neg"])
    elif case == "one class":
        declared = _declare(workdir, good.assign(rating="pos"))
    elif case == "bad encoding":
        declared = _declare(workdir, "review,rating\nfine,pos\nl'\u00e9t\u00e9,neg\n".encode("latin-1"))
    elif case == "bad jsonl":
        declared = _declare(workdir, b'{"review": "a", "rating": "pos"}\n{"review": "b", rating: neg}\n', suffix=".jsonl")
    elif case == "outside data/external":
        declared = {"bad": spec(train="elsewhere/train.csv")}
    elif case == "unknown format":
        declared = {"bad": spec(train="data/external/bad/train.xlsx")}
    else:
        declared = _declare(workdir, b"review,rating\nfine,pos\nnot,fine,neg\n")
    with pytest.raises(StageError, match=message):
        write_sources(["bad"], declared, paths.sources_dir())
    assert not paths.sources_dir().exists()  # nothing half-written


def test_a_declared_encoding_reads_the_file(workdir):
    content = "review,rating\nfine,pos\nl'\u00e9t\u00e9,neg\n".encode("latin-1")
    dev = "review,rating\nbien,pos\nd\u00e9j\u00e0 vu,neg\n".encode("latin-1")  # distinct texts: no leakage
    run_download("bad", _declare(workdir, content, dev, encoding="latin-1"), workdir / "raw")
    assert read_raw(workdir / "raw", "train")["text_a"].tolist() == ["fine", "l'\u00e9t\u00e9"]


def test_empty_texts_are_dropped_and_counted(workdir):
    train = REVIEWS.iloc[:12].copy()
    train.loc[[2, 5], "review"] = ["", "   \t"]
    summary = run_download("bad", _declare(workdir, train, REVIEWS.iloc[12:24]), workdir / "raw")
    assert summary["train"]["rows"] == 10 and summary["train"]["dropped_empty_text"] == 2
    assert 3 not in read_raw(workdir / "raw", "train")["idx"].tolist()  # row 3 of the file held the empty text


@pytest.mark.parametrize("declaration, message", [
    ({"rt": {"train": "data/external/rt/train.csv", "text": ["t"], "label": "l"}}, r"'rt' is a built-in task"),
    ({"My Data": {"train": "data/external/x.csv", "text": ["t"], "label": "l"}}, r"use lower-case letters"),
    ({"x": {"train": "a.csv", "text": ["t"], "label": "l", "labels": ["a", "a"]}}, r"duplicate values in labels"),
    ({"x": {"train": "a.csv", "text": ["t", "t"], "label": "l"}}, r"name one column twice"),
    ({"x": {"train": "a.csv", "text": ["t"], "label": "t"}}, r"also a text column"),
    ({"x": {"train": "a.csv", "text": ["t"], "label": "l", "labels": ["a"]}}, r"at least 2 labels"),
    ({"x": {"text": ["t"], "label": "l"}}, r"give either `train`.*or `hub`"),
    ({"x": {"train": "a.csv", "text": ["a", "b", "c"], "label": "l"}}, r"datasets\.x\.text"),
    ({"x": {"train": "a.csv", "text": ["t"], "label": "l", "encoding": "utf-9"}}, r"unknown encoding 'utf-9'"),
])
def test_bad_declarations_name_the_parameter(tmp_path, declaration, message):
    path = write_params(tmp_path / "params.yaml", datasets=declaration)
    with pytest.raises(StageError, match=message):
        load_params(path)


def test_tasks_must_be_built_in_or_declared(tmp_path):
    path = write_params(tmp_path / "params.yaml", tasks=["reviews"])
    with pytest.raises(StageError, match=r"unknown task\(s\) \['reviews'\].*declared datasets: \['tweets'\]"):
        load_params(path)


def test_a_key_given_twice_is_an_error(tmp_path):
    text = (REPO / "params.yaml").read_text() + "\n  tweets:\n    train: data/external/t.csv\n    text: [t]\n    label: l\n"
    (tmp_path / "params.yaml").write_text(text)
    with pytest.raises(StageError, match=r"params\.yaml, line \d+: the key 'tweets' is given twice"):
        load_params(tmp_path / "params.yaml")


def test_default_params_declare_the_worked_example():
    p = load_params(REPO / "params.yaml")
    tweets = p.datasets["tweets"]
    assert (REPO / tweets.train).is_file() and tweets.labels == ["negative", "neutral", "positive"]


def test_cli_sources_and_download_of_a_declared_dataset(workdir):
    write_table(REVIEWS, workdir / "data/external/reviews/train.csv")
    declaration = {"reviews": {"train": "data/external/reviews/train.csv", "text": ["review"], "label": "rating"}}
    params = write_params(workdir / "params.yaml", tasks=["reviews"], datasets=declaration)
    assert run_cli("sources", "--params", str(params), cwd=workdir).returncode == 0
    result = run_cli("download", "--task", "reviews", "--params", str(params), cwd=workdir)
    assert result.returncode == 0, result.stderr
    data = json.loads((workdir / "metrics/reviews/data.json").read_text())
    assert data["splits"]["train"]["rows"] + data["splits"]["dev"]["rows"] == 30
    (workdir / "data/external/reviews/train.csv").write_text("review,rating\nonly,pos\n")
    failed = run_cli("sources", "--params", str(params), cwd=workdir)
    assert failed.returncode == 1 and "Traceback" not in failed.stderr
    assert "has the single class ['pos']" in failed.stderr


def test_sort_labels_is_numeric_then_alphabetic():
    assert sort_labels(["10", "2", "b", "a", "2"]) == ["2", "10", "a", "b"]


def test_macro_f1_exact():
    labels = np.array([0, 0, 1, 1, 2, 2])
    preds = np.array([0, 1, 1, 1, 2, 0])
    # F1 per class: 0: 2*1/(2+1+1) = 0.5; 1: 2*2/(4+1+0) = 0.8; 2: 2*1/(2+0+1) = 2/3
    assert macro_f1(labels, preds) == pytest.approx((0.5 + 0.8 + 2 / 3) / 3)
    assert macro_f1(np.array([0, 0]), np.array([0, 1])) == pytest.approx((2 / 3 + 0.0) / 2)


def test_get_task_of_an_undeclared_name_says_what_to_do(workdir):
    with pytest.raises(StageError, match=r"unknown task 'reviews'.*run the sources stage first"):
        get_task("reviews")


def test_written_descriptions_are_stable(workdir):
    """A second sources run over unchanged files writes the same bytes, so DVC reruns no download."""
    write_table(REVIEWS, workdir / "data/external/reviews/train.csv")
    declared = {"reviews": spec(train="data/external/reviews/train.csv")}
    write_sources(["rt", "reviews"], declared, paths.sources_dir())
    first = {p.name: p.read_bytes() for p in paths.sources_dir().iterdir()}
    write_sources(["rt", "reviews"], declared, paths.sources_dir())
    assert {p.name: p.read_bytes() for p in paths.sources_dir().iterdir()} == first
    assert yaml.safe_load(first["rt.json"])["source"] == "built-in"
