"""Unlabeled text in the transfer set: the streaming reader (every format, pairs, errors), deduplication and the
dev/test guard with exact counts, the share of max_examples, and the `source` column."""

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.augment import _cap, augment as run_augment
from stages.data.dedup import first_occurrences, row_keys
from stages.data.io import RAW_SCHEMA, TRANSFER_SCHEMA, read_parquet
from stages.data.tasks import get_task
from stages.data.unlabeled import UnlabeledSpec, describe, read_unlabeled, recorded_spec
from stages.errors import StageError
from stages.params import AugmentParams, load_params
from tests.conftest import write_params

SST2, MRPC = get_task("sst2"), get_task("mrpc")


@pytest.fixture
def external(tmp_path, monkeypatch):
    """A working directory with data/external/, where unlabeled files must live."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "data/external").mkdir(parents=True)
    return tmp_path / "data/external"


def augment(task, raw_dir, out_path, seed=42, unlabeled=None, **knobs) -> dict:
    """The stage's function with AugmentParams built from `knobs` (the others as params.yaml has them)."""
    return run_augment(task, raw_dir, out_path, AugmentParams(**knobs), seed=seed, unlabeled=unlabeled)


def _read(spec: dict, n_texts: int = 1, hub_dir=None):
    table, empty = read_unlabeled("t", UnlabeledSpec.model_validate(spec), n_texts, hub_dir)
    return table.to_pydict(), empty


def test_every_format_reads_the_same_rows_and_skips_empty_ones(external):
    texts = ["a fine movie", "", "dull, \"long\" and slow", "   ", "songs\tand dances"]
    (external / "a.txt").write_text("".join(t + "\n" for t in texts))
    expected = {"text_a": [texts[0], texts[2], texts[4]], "row": [1, 3, 5]}
    assert _read({"files": ["data/external/a.txt"]}) == (expected, 2)

    import csv
    for name, delimiter in (("a.csv", ","), ("a.tsv", "\t")):
        with open(external / name, "w", newline="") as f:
            writer = csv.writer(f, delimiter=delimiter)
            writer.writerow(["id", "review"])
            writer.writerows([[i, t] for i, t in enumerate(texts)])
        assert _read({"files": [f"data/external/{name}"], "text": ["review"]}) == (expected, 2), name
    (external / "a.jsonl").write_text("".join(json.dumps({"review": t, "n": i}) + "\n" for i, t in enumerate(texts)))
    assert _read({"files": ["data/external/a.jsonl"], "text": ["review"]}) == (expected, 2)
    pq.write_table(pa.table({"review": texts, "n": list(range(5))}), external / "a.parquet")
    assert _read({"files": ["data/external/a.parquet"], "text": ["review"]}) == (expected, 2)

    # several files: one row numbering across them; `format` overrides the extension
    (external / "b.lines").write_text("x one\ny two\n")
    table, empty = _read({"files": ["data/external/a.txt", "data/external/b.lines"], "format": "txt"})
    assert table["text_a"][-2:] == ["x one", "y two"] and table["row"][-2:] == [6, 7] and empty == 2


def test_pairs_read_two_columns_and_a_hub_split_from_the_local_mirror(external, tmp_path):
    rows = {"q1": ["how old", "why", "", "who"], "q2": ["how young", "why not", "x", None]}
    pq.write_table(pa.table(rows), external / "p.parquet")
    (external / "p.jsonl").write_text("".join(json.dumps({"q1": a, "q2": b}) + "\n" for a, b in zip(*rows.values())))
    expected = {"text_a": ["how old", "why"], "text_b": ["how young", "why not"], "row": [1, 2]}
    for name in ("p.parquet", "p.jsonl"):
        assert _read({"files": [f"data/external/{name}"], "text": ["q1", "q2"]}, 2) == (expected, 2), name

    mirror = tmp_path / "hub"
    (mirror / "someone/questions/data").mkdir(parents=True)
    pq.write_table(pa.table(rows), mirror / "someone/questions/data/train-00000-of-00001.parquet")
    spec = {"hub": "someone/questions", "text": ["q1", "q2"]}
    assert _read(spec, 2, hub_dir=str(mirror)) == (expected, 2)
    recorded = describe("t", UnlabeledSpec.model_validate(spec), str(mirror))
    assert [f["path"] for f in recorded["files"]] == [str(mirror / "someone/questions/data/train-00000-of-00001.parquet")]
    assert len(recorded["files"][0]["sha256"]) == 64


@pytest.mark.parametrize("spec, n_texts, message", [
    ({"files": ["data/external/r.csv"], "text": ["body"]}, 1,
     r"^unlabeled file data/external/r.csv: no column\(s\) \['body'\]; the file's columns are \['id', 'review'\]$"),
    ({"files": ["data/external/r.parquet"], "text": ["review", "other"]}, 2,
     r"^unlabeled file data/external/r.parquet: no column\(s\) \['other'\]"),
    ({"files": ["data/external/r.jsonl"], "text": ["body"]}, 1,
     r"^unlabeled file data/external/r.jsonl, line 1: no field 'body'"),
    ({"files": ["data/external/r.parquet"], "text": ["id"]}, 1,
     r"^unlabeled file data/external/r.parquet: column 'id' holds int64, not text$"),
    ({"files": ["data/external/r.csv"], "text": ["review"]}, 2,
     r"^unlabeled file data/external/r.csv: `text` must name 2 column\(s\) for this task"),
    ({"files": ["data/external/r.txt"]}, 2, r"^unlabeled file data/external/r.txt: a txt file holds one text a line"),
    ({"files": ["data/external/nothing.txt"]}, 1, r"^unlabeled.t: file data/external/nothing.txt not found$"),
    ({"files": ["elsewhere.txt"]}, 1, r"^unlabeled.t: elsewhere.txt is outside data/external/"),
    ({"files": ["data/external/r.xlsx"]}, 1, r"^unlabeled file data/external/r.xlsx: format 'xlsx' is not one of"),
    ({"files": ["data/external/bad.jsonl"], "text": ["review"]}, 1,
     r"^unlabeled file data/external/bad.jsonl, line 2: not valid JSON"),
])
def test_bad_files_and_columns_are_one_line_errors_naming_them(external, spec, n_texts, message):
    (external / "r.csv").write_text("id,review\n1,good\n")
    (external / "r.txt").write_text("good\n")
    (external / "r.xlsx").write_text("good\n")
    (external / "r.jsonl").write_text('{"review": "good"}\n')
    (external / "bad.jsonl").write_text('{"review": "good"}\n{"review": \n')
    pq.write_table(pa.table({"id": [1], "review": ["good"]}), external / "r.parquet")
    with pytest.raises(StageError, match=message) as error:
        _read(spec, n_texts)
    assert "\n" not in str(error.value)


def test_params_check_the_unlabeled_section_and_the_precision(tmp_path):
    base = {"unlabeled": {"rt": {"files": ["data/external/x.txt"]}}}
    assert load_params(write_params(tmp_path / "ok.yaml", **base)).unlabeled["rt"].files == ["data/external/x.txt"]
    for sections, fragment in [({"unlabeled": {"nope": {"files": ["data/external/x.txt"]}}}, "unknown task(s) ['nope']"),
                               ({"unlabeled": {"rt": {}}}, "give either `files`"),
                               ({"unlabeled": {"rt": {"files": ["a.txt"], "colum": ["x"]}}}, "unlabeled.rt.colum"),
                               ({"augment": {"unlabeled_share": 1.5}}, "augment.unlabeled_share"),
                               ({"label": {"precision": "fp16"}}, "label.precision")]:
        with pytest.raises(StageError, match=fragment.replace("(", r"\(").replace(")", r"\)").replace("[", r"\[")):
            load_params(write_params(tmp_path / "bad.yaml", **sections))


def test_keys_ignore_case_spacing_and_punctuation_but_not_words():
    keys = row_keys(["It's  GOOD.", "it 's good", "it is good", "Café!", "cafe"])
    assert keys[0] == keys[1] and len(set(keys.tolist())) == 4
    assert row_keys(["a"], ["b c"])[0] != row_keys(["a b"], ["c"])[0]  # pairs: column by column
    keep = first_occurrences(np.array([5, 3, 5, 7, 3, 9], np.uint64), [np.array([9], np.uint64)])
    assert keep.tolist() == [True, True, False, True, False, False]


def test_share_of_max_examples():
    sizes = lambda kept: tuple(len(k) for k in kept)
    assert sizes(_cap(10, 30, 40, 0, 20, 0.5)) == (10, 15, 15)  # room 30: half each
    assert sizes(_cap(10, 5, 40, 0, 50, 0.5)) == (10, 5, 25)  # augmented leave room: unlabeled take it
    assert sizes(_cap(10, 50, 40, 0, 4, 0.5)) == (10, 26, 4)  # and the reverse
    assert sizes(_cap(10, 50, 40, 0, 50, 0.0)) == (10, 30, 0)
    assert sizes(_cap(10, 50, 40, 0, 50, 1.0)) == (10, 0, 30)
    assert sizes(_cap(10, 50, 6, 0, 50, 0.5)) == (6, 0, 0)
    assert sizes(_cap(10, 5, 100, 0, 5, 0.5)) == (10, 5, 5)
    kept = _cap(10, 30, 40, 7, 20, 0.5)
    assert all((np.diff(k) > 0).all() for k in kept) and kept[1].max() < 30 and kept[2].max() < 20
    # without unlabeled text the augmented subset is the one the stage always drew
    assert _cap(10, 30, 25, 7)[1].tolist() == _cap(10, 30, 25, 7, 0, 0.5)[1].tolist()


def _raw(raw_dir, train, dev, test):
    raw_dir.mkdir(parents=True)
    for split, texts in (("train", train), ("dev", dev), ("test", test)):
        pq.write_table(pa.table({"text_a": texts, "text_b": [None] * len(texts), "label": [i % 2 for i in range(len(texts))],
                                 "idx": [100 + i for i in range(len(texts))]}, schema=RAW_SCHEMA),
                       raw_dir / f"{split}.parquet")


def test_transfer_set_counts_each_source_after_dedup_and_the_dev_test_guard(external, tmp_path):
    train = ["fine movie", "the plot is dull", "songs and dances galore", "a bad cast", "long and slow film"]
    dev = ["A BAD CAST!", "mask mask mask", "nothing alike here"]  # an original, and the 3-word all-mask variant
    test = ["Brand new words.", "totally unseen"]
    _raw(tmp_path / "raw", train, dev, test)
    unlabeled = ["great acting", "Great acting!", "Fine movie.", "brand new words", "", "a sad ending",
                 "nothing alike here .", "a sad ending", "the score soars", "[MASK] [MASK] [MASK] [MASK]"]
    (external / "u.txt").write_text("".join(t + "\n" for t in unlabeled))
    spec = UnlabeledSpec(files=["data/external/u.txt"])
    out = tmp_path / "transfer.parquet"
    # every word masked, no n-gram cut: each original gives exactly its all-mask variant, one per length (2..4 words)
    summary = augment(SST2, tmp_path / "raw", out, p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=1, seed=3,
                      unlabeled=spec)
    table = read_parquet(out, TRANSFER_SCHEMA)
    assert table.schema.equals(TRANSFER_SCHEMA, check_metadata=False)
    rows = table.to_pydict()
    assert summary["sources"] == {"original": 4, "augmented": 2, "unlabeled": 3} and summary["rows"] == 9
    assert summary["dev_test_removed"] == {"original": 1, "augmented": 1, "unlabeled": 2}
    # read 10, 1 empty; "Great acting!", "Fine movie.", "a sad ending" again and the 4-word all-mask row: 4 dups
    assert summary["unlabeled_input"] == {"rows_read": 10, "empty_skipped": 1, "duplicates_dropped": 4,
                                          "augmented": False, "share": 0.5}
    assert rows["source"] == ["original"] * 4 + ["augmented"] * 2 + ["unlabeled"] * 3
    assert rows["is_original"] == [True] * 4 + [False] * 5 and rows["label"][4:] == [-1] * 5
    assert rows["text_a"][6:] == ["great acting", "a sad ending", "the score soars"]
    assert rows["source_idx"][6:] == [1, 6, 9] and "a bad cast" not in rows["text_a"]
    assert sorted(rows["text_a"][4:6]) == ["[MASK] [MASK]", "[MASK] [MASK] [MASK] [MASK]"]

    # capped: after the 4 originals, 3 rows of room; the unlabeled share 1/3 rounds to 1, the augmented get 2
    capped = augment(SST2, tmp_path / "raw", out, p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=1, seed=3,
                     unlabeled=spec, max_examples=7, unlabeled_share=1 / 3)
    assert capped["sources"] == {"original": 4, "augmented": 2, "unlabeled": 1}
    assert capped["dropped_by_max_examples"] == 2

    # augment_unlabeled: the unlabeled rows get variants too, marked by a negative source_idx; the all-mask
    # 4-word row is now a base text, so the originals' variant equal to it is the dropped duplicate, not it
    both = augment(SST2, tmp_path / "raw", out, p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=1, seed=3,
                   unlabeled=spec, augment_unlabeled=True)
    augmented = read_parquet(out, TRANSFER_SCHEMA).filter(pa.compute.equal(pa.compute.field("source"), "augmented"))
    assert both["sources"]["unlabeled"] == 4 and min(augmented["source_idx"].to_pylist()) < 0


def test_pair_task_guard_compares_both_texts(external, tmp_path):
    raw = tmp_path / "raw"
    raw.mkdir()
    for split, pairs in (("train", [("q one", "q two"), ("q three", "q four")]), ("dev", [("new a", "new b")]),
                         ("test", [("Q ONE?", "q two")])):
        pq.write_table(pa.table({"text_a": [a for a, _ in pairs], "text_b": [b for _, b in pairs],
                                 "label": [0] * len(pairs), "idx": list(range(len(pairs)))}, schema=RAW_SCHEMA),
                       raw / f"{split}.parquet")
    (external / "u.tsv").write_text("a\tb\nnew a\tnew b\nnew a\tother b\nq three\tq four\n")
    summary = augment(MRPC, raw, tmp_path / "t.parquet", n_iter=0, seed=1,
                      unlabeled=UnlabeledSpec(files=["data/external/u.tsv"], text=["a", "b"]))
    assert summary["sources"] == {"original": 1, "augmented": 0, "unlabeled": 1}
    assert summary["dev_test_removed"] == {"original": 1, "augmented": 0, "unlabeled": 1}
    assert summary["unlabeled_input"]["duplicates_dropped"] == 1
    assert read_parquet(tmp_path / "t.parquet", TRANSFER_SCHEMA)["text_b"].to_pylist() == ["q four", "other b"]


def test_recorded_spec_round_trip_and_missing_record(external, tmp_path):
    (external / "u.txt").write_text("x\n")
    spec = UnlabeledSpec(files=["data/external/u.txt"])
    path = tmp_path / "rt.unlabeled.json"
    path.write_text(json.dumps(describe("rt", spec)))
    assert recorded_spec(path) == spec
    path.write_text(json.dumps(describe("rt", None)))
    assert recorded_spec(path) is None
    with pytest.raises(StageError, match="run the sources stage first"):
        recorded_spec(tmp_path / "none.json")
