"""Property tests (hypothesis) over what reads raw input: the dataset readers, the student tokenizer and predict's
line reader. The property: a clear StageError or a correct result, never another exception."""

from pathlib import Path

import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stages.data import datasets
from stages.data.leakage import deduplicate
from stages.errors import StageError
from stages.models.vocab import PAD_ID, Vocab
from stages.predict import read_arguments, read_lines

FAST = settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
TEXT = st.text(alphabet=st.characters(codec="utf-8"), max_size=60)  # any code point: controls, NUL, emoji, RTL
CELL = st.one_of(TEXT, st.sampled_from(["", " ", "\t", "\n", "\r\n", '"', '""', ",", "\x00", "1.0", "nan", "NA"]))


@FAST
@given(data=st.binary(max_size=400), suffix=st.sampled_from([".csv", ".tsv", ".jsonl", ".parquet"]))
def test_dataset_reader_on_random_bytes(tmp_path, monkeypatch, data, suffix):
    monkeypatch.chdir(tmp_path)
    path = Path(f"data/external/x/train{suffix}")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    spec = datasets.DatasetSpec(train=str(path), text=["review"], label="rating")
    try:
        splits = datasets.read_splits("x", spec)
    except StageError as e:
        assert str(e) and "\n" not in str(e).strip()
        return
    df, dropped = splits["train"]
    assert set(df.columns) == {"text_a", "text_b", "label", "idx"} and (df["text_a"].str.strip() != "").all()


@FAST
@given(rows=st.lists(st.tuples(CELL, CELL), max_size=12), encoding=st.sampled_from(["utf-8", "latin-1"]))
def test_dataset_reader_on_arbitrary_csv_cells(tmp_path, monkeypatch, rows, encoding):
    monkeypatch.chdir(tmp_path)
    path = Path("data/external/x/train.csv")
    path.parent.mkdir(parents=True, exist_ok=True)
    frame = pd.DataFrame(rows, columns=["review", "rating"]) if rows else pd.DataFrame(columns=["review", "rating"])
    try:
        path.write_bytes(frame.to_csv(index=False).encode(encoding))
    except UnicodeEncodeError:
        return  # not representable in latin-1: not a file anyone can have
    spec = datasets.DatasetSpec(train=str(path), text=["review"], label="rating", encoding=encoding)
    try:
        described = datasets.describe("x", spec)
    except StageError as e:
        assert str(e)
        return
    names = described["task"]["label_names"]
    assert len(names) >= 2 and len(set(names)) == len(names)


@FAST
@given(texts=st.lists(st.text(max_size=30), max_size=8), labels=st.lists(st.integers(-1, 2), max_size=8))
def test_leakage_rule_leaves_disjoint_splits_of_unique_unambiguous_texts(texts, labels):
    n = min(len(texts), len(labels))
    df = pd.DataFrame({"text_a": texts[:n], "text_b": None, "label": labels[:n], "idx": range(n)})
    frames = {"train": df, "dev": df.iloc[: n // 2], "test": df.iloc[n // 3:].assign(label=-1)}
    out, report = deduplicate(frames, ["test", "dev", "train"])
    seen = set()
    for split in ("test", "dev", "train"):
        keys = [" ".join(t.split()) for t in out[split]["text_a"]]
        assert len(keys) == len(set(keys)) and not seen & set(keys)
        seen |= set(keys)
    assert report["conflicting_label_texts"] >= 0


@pytest.fixture(scope="module")
def vocab() -> Vocab:
    return Vocab.build(["a good film", "a bad film", "n't stop [MASK] ok", "émigré naïve 東京"], 50)


@FAST
@given(text=st.one_of(TEXT, st.text(max_size=5000)), max_length=st.integers(1, 70))
def test_student_tokenizer_on_any_text(vocab, text, max_length):
    ids = vocab.encode(text, max_length)
    assert len(ids) <= max_length and all(0 <= i < len(vocab) for i in ids)
    assert PAD_ID not in ids  # padding is never a word
    assert vocab.encode_batch([text, text], max_length) == [ids, ids]


@FAST
@given(data=st.binary(max_size=300))
def test_predict_reads_any_bytes_line_by_line(data):
    items = read_lines(data)
    for item in items:
        assert (item.text is None) != (item.error is None)
        assert item.error is None or (item.error.startswith(item.where) and "UTF-8" in item.error)
        assert item.text is None or item.text.strip()
    good = [i.text for i in items if i.text is not None]
    decodable = [line.removesuffix(b"\r") for line in data.removeprefix(b"\xef\xbb\xbf").split(b"\n")]
    expected = []
    for line in decodable:
        try:
            text = line.decode("utf-8")
        except UnicodeDecodeError:
            continue
        if text.strip():
            expected.append(text)
    assert good == expected


@FAST
@given(raw=st.lists(st.binary(max_size=20), max_size=5))
def test_predict_reads_any_argument(raw):
    texts = [r.decode("utf-8", "surrogateescape") for r in raw]  # what Python makes of argv bytes
    items = read_arguments(texts)
    assert len(items) == len(texts)
    for r, item in zip(raw, items):
        try:
            answered = bool(r.decode("utf-8").strip())
        except UnicodeDecodeError:
            answered = False
        assert (item.text is not None) == answered and (item.error is None) == answered
