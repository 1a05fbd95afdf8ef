"""The leakage rule (stages/data/leakage.py) on declared datasets and built-in tasks, and the dataset messages
that used to mislead (docs/reliability.md)."""

import json
from pathlib import Path

import pandas as pd
import pyarrow.parquet as pq
import pytest

from stages import paths
from stages.data.datasets import DatasetSpec
from stages.params import DataParams
from stages.download import clean_rt_counted, download
from stages.errors import StageError
from stages.sources import write_sources
from stages.data.tasks import get_task
from typer.testing import CliRunner

from stages.cli import app
from tests.conftest import SHARED_GLUE, write_params


@pytest.fixture
def workdir(tmp_path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/external/d").mkdir(parents=True)
    return tmp_path


def declare(workdir: Path, files: dict[str, pd.DataFrame | str], **fields) -> dict:
    out = {}
    for split, content in files.items():
        path = workdir / f"data/external/d/{split}.csv"
        path.write_text(content) if isinstance(content, str) else content.to_csv(path, index=False)
        out[split] = f"data/external/d/{split}.csv"
    return {"d": DatasetSpec.model_validate({"text": ["review"], "label": "rating", **out, **fields})}


def run(declared: dict, out: Path, **kwargs) -> dict:
    write_sources(["d"], declared, paths.sources_dir())
    return download(get_task("d"), out, DataParams(**kwargs), source=paths.source_file("d"))


def texts(out: Path, split: str) -> list[str]:
    return pq.read_table(out / f"{split}.parquet")["text_a"].to_pylist()


def reviews(words: list[str], ratings: list[str]) -> pd.DataFrame:
    return pd.DataFrame({"review": words, "rating": ratings})


def test_duplicates_with_an_automatic_dev_split_never_reach_both_splits(workdir):
    """The issue's case: a file with duplicate rows and `dev: null` put dev texts into train as well."""
    unique = [f"tweet number {i}" for i in range(40)]
    rows = reviews(unique * 3, (["pos", "neg"] * 20) * 3)  # every text three times, one label each
    result = run(declare(workdir, {"train": rows}, dev_fraction=0.25), workdir / "raw", split_seed=5)
    train, dev = texts(workdir / "raw", "train"), texts(workdir / "raw", "dev")
    assert not set(train) & set(dev)
    assert sorted(train + dev) == sorted(unique)  # each text exactly once
    leakage = result["leakage"]
    assert leakage["applied"] and leakage["duplicates_within_split"] == {"train": 80}
    assert leakage["overlap_after_rule"] == {"train&dev": 0}


def test_explicit_splits_keep_dev_and_test_whole_and_train_loses_their_texts(workdir):
    train = reviews(["a b", "c d", "e f", "g h", "x y", "i j", "k l"], ["pos", "neg", "pos", "neg", "pos", "neg", "pos"])
    dev = reviews(["c  d", "m n", "o p", "q r"], ["neg", "pos", "neg", "pos"])  # "c  d" = "c d" up to whitespace
    test = reviews(["e f", "m n", "s t"], ["pos", "pos", "neg"])
    result = run(declare(workdir, {"train": train, "dev": dev, "test": test}), workdir / "raw")
    assert texts(workdir / "raw", "test") == ["e f", "m n", "s t"]
    assert texts(workdir / "raw", "dev") == ["c  d", "o p", "q r"]  # "m n" is a test text
    assert texts(workdir / "raw", "train") == ["a b", "g h", "x y", "i j", "k l"]
    assert result["leakage"]["duplicates_across_splits"] == {"dev": {"test": 1}, "train": {"test": 1, "dev": 1}}
    assert result["leakage"]["overlap_after_rule"] == {"dev&test": 0, "train&test": 0, "train&dev": 0}


def test_conflicting_labels_drop_every_copy_and_are_reported(workdir):
    train = reviews(["same text", "ok one", "same text", "ok two", "fine", "other"], ["pos", "neg", "neg", "pos", "neg", "pos"])
    dev = reviews(["dev a", "dev b", "ok one"], ["pos", "neg", "pos"])  # "ok one" is neg in train: a conflict
    result = run(declare(workdir, {"train": train, "dev": dev}), workdir / "raw")
    assert texts(workdir / "raw", "train") == ["ok two", "fine", "other"]
    assert texts(workdir / "raw", "dev") == ["dev a", "dev b"]
    leakage = result["leakage"]
    assert leakage["conflicting_label_texts"] == 2
    assert leakage["conflicting_label_rows"] == {"dev": 1, "train": 3}
    assert [(e["text"], e["labels"]) for e in leakage["conflicting_label_examples"]] == [
        ("ok one", ["neg", "pos"]), ("same text", ["neg", "pos"])]


def test_the_cli_writes_the_counts_and_names_the_conflicts(workdir):
    train = reviews(["x", "x", "y", "z", "w", "y"], ["pos", "neg", "neg", "pos", "neg", "neg"])
    dev = reviews(["u", "v"], ["pos", "neg"])
    declared = declare(workdir, {"train": train, "dev": dev})
    params = write_params(workdir / "params.yaml", tasks=["d"],
                          datasets={"d": declared["d"].model_dump(exclude_defaults=True)})
    assert CliRunner().invoke(app, ["sources", "--params", str(params)]).exit_code == 0
    result = CliRunner().invoke(app, ["download", "--task", "d", "--params", str(params)])
    assert result.exit_code == 0, result.output
    assert "d: 1 text(s) carry conflicting labels (2 row(s), dropped), e.g. 'x' ['neg', 'pos']" in result.stderr
    data = json.loads((workdir / "metrics/d/data.json").read_text())
    assert data["splits"]["train"]["rows"] == 3 and data["leakage"]["duplicates_within_split"]["train"] == 1


def test_rt_rule_is_the_shared_rule():
    csv = pd.DataFrame({"category": ["fresh", "rotten", "fresh", "fresh", "rotten"],
                        "text": ["good", "good", "fine  film", "fine film", "bad"],
                        "movie_name": ["m"] * 5, "has_plot_and_reviews": [True] * 5})
    df, report = clean_rt_counted(csv, ("rotten", "fresh"))
    assert df["text_a"].tolist() == ["fine  film", "bad"]
    assert report["conflicting_label_texts"] == 1 and report["duplicates_within_split"] == {"train": 1}


@pytest.mark.skipif(not SHARED_GLUE.exists(), reason="needs ../shared/glue")
def test_glue_splits_stay_as_published_and_their_overlaps_are_counted(tmp_path):
    result = download(get_task("sst2"), tmp_path / "sst2", DataParams(glue_dir=str(SHARED_GLUE)))
    assert {s: v["rows"] for s, v in result["splits"].items()} == {"train": 67349, "dev": 872, "test": 1821}
    leakage = result["leakage"]
    assert not leakage["applied"]
    assert leakage["duplicates_within_split"] == {"test": 0, "dev": 0, "train": 366}  # after the 5 conflicting texts (10 rows)
    assert leakage["overlap_after_rule"] == {"dev&test": 0, "train&test": 2, "train&dev": 0}
    assert leakage["conflicting_label_texts"] == 5 and leakage["conflicting_label_rows"] == {"test": 0, "dev": 0, "train": 10}


# --- messages that misled (defect 7) ---

def test_a_header_only_csv_says_it_has_no_rows(workdir):
    declared = declare(workdir, {"train": "review,rating\n"})
    with pytest.raises(StageError, match=r"data/external/d/train\.csv: no rows \(a header and no data\)"):
        write_sources(["d"], declared, paths.sources_dir())


def test_a_text_column_empty_in_every_row_says_all_rows_were_dropped(workdir):
    pairs = pd.DataFrame({"q1": [f"question {i}" for i in range(6)], "q2": [""] * 6, "same": ["yes", "no"] * 3})
    declared = declare(workdir, {"train": pairs})
    declared["d"] = declared["d"].model_copy(update={"text": ["q1", "q2"], "label": "same"})
    with pytest.raises(StageError, match=r"train\.csv: all 6 row\(s\) were dropped for an empty text \(column\(s\) \['q2'\] empty in every row\)"):
        write_sources(["d"], declared, paths.sources_dir())


def test_csv_labels_written_as_floats_are_integer_classes(workdir):
    train = "review,rating\n" + "".join(f"text {i},{i % 2}.0\n" for i in range(10))
    dev = "review,rating\n" + "".join(f"dev {i},{i % 2}\n" for i in range(4))  # 0/1 here, 0.0/1.0 in train
    run(declare(workdir, {"train": train, "dev": dev}), workdir / "raw")
    assert get_task("d").label_names == ("0", "1")
    assert pq.read_table(workdir / "raw/train.parquet")["label"].to_pylist() == [0, 1] * 5
