import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

import stages.label as label_module
from stages.errors import StageError
from stages.data.io import LABELED_SCHEMA, TRANSFER_SCHEMA, read_parquet
from stages.label import label
from stages.data.tasks import get_task
from stages.models.teacher_model import encode_pairs, resolve_model
from stages.data.text import MASK

CPU = torch.device("cpu")


@pytest.fixture(scope="module")
def teacher_dirs(tmp_path_factory):
    """Untrained 2- and 3-way heads on the packaged encoder: real teachers as far as labeling goes."""
    source = resolve_model("all-MiniLM-L6-v2").location
    dirs = {}
    for n in (2, 3):
        path = tmp_path_factory.mktemp(f"teacher{n}")
        torch.manual_seed(0)
        AutoModelForSequenceClassification.from_pretrained(source, num_labels=n).save_pretrained(path)
        AutoTokenizer.from_pretrained(source).save_pretrained(path)
        dirs[n] = path
    return dirs


def write_transfer(path, n=40, pair=False):
    words = ["a", "fine", "movie", MASK, "with", "long", "scenes", "and", "songs"]
    rng = np.random.default_rng(1)
    text_a = [" ".join(rng.choice(words, rng.integers(1, 12))) for _ in range(n)]
    text_b = [" ".join(rng.choice(words, rng.integers(1, 6))) for _ in range(n)] if pair else [None] * n
    table = pa.table({"text_a": text_a, "text_b": text_b, "is_original": [i < 10 for i in range(n)],
                      "label": [i % 2 if i < 10 else -1 for i in range(n)], "source_idx": list(range(n)),
                      "source": ["original" if i < 10 else "augmented" if i < 30 else "unlabeled" for i in range(n)]},
                     schema=TRANSFER_SCHEMA)
    pq.write_table(table, path)
    return table


def direct_logits(teacher_dir, table, pair):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    enc = encode_pairs(tokenizer, table["text_a"].to_pylist(), table["text_b"].to_pylist() if pair else None, 128)
    enc = tokenizer.pad(enc, return_tensors="pt")
    with torch.inference_mode():
        return model(**enc).logits.numpy()


@pytest.mark.parametrize("task_name, n_labels", [("sst2", 2), ("mnli", 3)])
def test_logits_match_a_plain_forward_pass(tmp_path, teacher_dirs, task_name, n_labels):
    task = get_task(task_name)
    transfer = write_transfer(tmp_path / "transfer.parquet", pair=task.is_pair)
    summary = label(task, tmp_path / "transfer.parquet", teacher_dirs[n_labels], tmp_path / "labeled.parquet",
                    device=CPU, batch_size=7, shard_rows=16, cache_root=tmp_path / "cache")
    out = read_parquet(tmp_path / "labeled.parquet", LABELED_SCHEMA)
    assert out.select(TRANSFER_SCHEMA.names).equals(transfer)
    logits = np.array(out["logits"].to_pylist(), dtype=np.float32)
    np.testing.assert_allclose(logits, direct_logits(teacher_dirs[n_labels], transfer, task.is_pair), atol=1e-4)
    assert (np.asarray(out["teacher_label"]) == logits.argmax(1)).all()
    assert summary["rows"] == summary["rows_labeled_now"] == 40
    assert not any((tmp_path / "cache").iterdir())  # shards removed once the output is whole


def test_mask_reaches_the_teacher_as_its_mask_token(teacher_dirs):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dirs[2])
    ids = encode_pairs(tokenizer, [f"a {MASK} movie"], None, 16)["input_ids"][0]
    assert tokenizer.mask_token_id in ids and tokenizer.unk_token_id not in ids


def test_killed_run_resumes_without_redoing_finished_shards(tmp_path, teacher_dirs, monkeypatch):
    task = get_task("sst2")
    write_transfer(tmp_path / "transfer.parquet", n=40)
    args = dict(device=CPU, batch_size=8, shard_rows=16, cache_root=tmp_path / "cache")
    reference = label(task, tmp_path / "transfer.parquet", teacher_dirs[2], tmp_path / "ref.parquet", **args)
    assert reference["rows_reused_from_cache"] == 0

    real, calls = label_module.batch_logits, []

    def dies_on_second_shard(*a, **k):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # the run is killed half-way
        return real(*a, **k)

    monkeypatch.setattr(label_module, "batch_logits", dies_on_second_shard)
    with pytest.raises(KeyboardInterrupt):
        label(task, tmp_path / "transfer.parquet", teacher_dirs[2], tmp_path / "out.parquet", **args)
    assert not (tmp_path / "out.parquet").exists()  # nothing half-written
    assert len(list((tmp_path / "cache").rglob("shard-*.parquet"))) == 1
    monkeypatch.setattr(label_module, "batch_logits", real)

    resumed = label(task, tmp_path / "transfer.parquet", teacher_dirs[2], tmp_path / "out.parquet", **args)
    assert (resumed["rows_reused_from_cache"], resumed["rows_labeled_now"]) == (16, 24)
    assert pq.read_table(tmp_path / "out.parquet").equals(pq.read_table(tmp_path / "ref.parquet"))


def test_shards_of_other_inputs_are_not_reused(tmp_path, teacher_dirs):
    task = get_task("sst2")
    cache = tmp_path / "cache"
    stale = cache / "sst2-0123456789abcdef0123"
    stale.mkdir(parents=True)
    (stale / "shard-00000-of-00001.parquet").write_bytes(b"old")
    other_task = cache / "sst2-reviews-0123456789abcdef0123"  # a dataset named sst2-reviews: not sst2's to delete
    other_task.mkdir()
    write_transfer(tmp_path / "transfer.parquet", n=12)
    summary = label(task, tmp_path / "transfer.parquet", teacher_dirs[2], tmp_path / "out.parquet", device=CPU,
                    cache_root=cache)
    assert summary["rows_reused_from_cache"] == 0 and not stale.exists() and other_task.is_dir()


def test_bad_inputs(tmp_path, teacher_dirs):
    task = get_task("sst2")
    with pytest.raises(StageError, match="transfer.parquet: run the augment stage first"):
        label(task, tmp_path / "transfer.parquet", teacher_dirs[2], tmp_path / "o.parquet", device=CPU)
    (tmp_path / "transfer.parquet").write_bytes(b"not parquet")
    with pytest.raises(StageError, match="transfer.parquet is not a readable Parquet file"):
        label(task, tmp_path / "transfer.parquet", teacher_dirs[2], tmp_path / "o.parquet", device=CPU)
    write_transfer(tmp_path / "transfer.parquet")
    with pytest.raises(StageError, match="run the teacher stage first"):
        label(task, tmp_path / "transfer.parquet", tmp_path / "nothing", tmp_path / "o.parquet", device=CPU)
    with pytest.raises(StageError, match="3 labels, task sst2 has 2"):
        label(task, tmp_path / "transfer.parquet", teacher_dirs[3], tmp_path / "o.parquet", device=CPU)
    pq.write_table(pa.table({"text_a": ["x"], "label": [0]}), tmp_path / "cols.parquet")
    with pytest.raises(StageError, match=r"cols.parquet: missing column\(s\) \['text_b', 'is_original', 'source_idx', 'source'\]"):
        label(task, tmp_path / "cols.parquet", teacher_dirs[2], tmp_path / "o.parquet", device=CPU)
    assert not (tmp_path / "o.parquet").exists()
