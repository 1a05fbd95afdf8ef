"""label.precision: int8 and bf16 logits stay close to fp32, the cache key holds the precision, bad values are refused.

The teacher is the packaged MiniLM with a seeded, untrained 2-way head (its logits are small, about 0.03, so the
bounds are absolute and loose against them; docs/label-precision.md has the differences of the trained rt
teacher)."""

import numpy as np
import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from stages.data.io import LABELED_SCHEMA, read_parquet
from stages.data.tasks import get_task
from stages.errors import StageError
from stages.label import label, labeling_key
from stages.models.precision import with_precision
from stages.models.teacher_model import encode_pairs, resolve_model
from tests.test_label import write_transfer

CPU = torch.device("cpu")
INT8_MAX_DIFF = 0.05  # measured: 0.018 max, 0.006 mean on these rows
BF16_MAX_DIFF = 0.005  # measured: 0.0005 max


@pytest.fixture(scope="module")
def teacher_dir(tmp_path_factory):
    source = resolve_model("all-MiniLM-L6-v2").location
    path = tmp_path_factory.mktemp("teacher")
    torch.manual_seed(0)
    AutoModelForSequenceClassification.from_pretrained(source, num_labels=2).save_pretrained(path)
    AutoTokenizer.from_pretrained(source).save_pretrained(path)
    return path


def _logits(path):
    return np.array(read_parquet(path, LABELED_SCHEMA)["logits"].to_pylist(), dtype=np.float32)


def test_int8_labels_are_close_to_fp32_and_cached_apart(tmp_path, teacher_dir):
    task = get_task("sst2")
    write_transfer(tmp_path / "transfer.parquet", n=16)
    runs = {}
    for precision in ("fp32", "int8"):
        summary = label(task, tmp_path / "transfer.parquet", teacher_dir, tmp_path / f"{precision}.parquet", device=CPU,
                        batch_size=16, cache_root=tmp_path / "cache", precision=precision)
        assert summary["precision"] == precision and summary["rows_labeled_now"] == 16  # nothing reused across
        runs[precision] = _logits(tmp_path / f"{precision}.parquet")
    diff = np.abs(runs["int8"] - runs["fp32"])
    assert 0 < diff.max() <= INT8_MAX_DIFF  # quantised: not the fp32 numbers, but close to them
    keys = {p: labeling_key(tmp_path / "transfer.parquet", teacher_dir, 128, p) for p in ("fp32", "bf16", "int8")}
    assert len(set(keys.values())) == 3


def test_bf16_autocast_is_close_to_fp32(teacher_dir):
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).eval()
    enc = tokenizer.pad(encode_pairs(tokenizer, ["a fine movie", "long [MASK] scenes and songs", "dull"], None, 32),
                        return_tensors="pt")
    with torch.inference_mode():
        reference = model(**enc).logits.numpy()
        bf16 = with_precision(model, "bf16", CPU)
        out = bf16(**enc).logits.float().numpy()
    assert bf16.config is model.config
    assert 0 < np.abs(out - reference).max() <= BF16_MAX_DIFF


def test_bad_precision_and_int8_off_the_cpu_are_refused(teacher_dir):
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir)
    with pytest.raises(StageError, match=r"^label.precision must be one of fp32, bf16, int8, got 'fp16'$"):
        with_precision(model, "fp16", CPU)
    with pytest.raises(StageError, match="label.precision=int8 .* runs on the CPU only, but the device is cuda"):
        with_precision(model, "int8", torch.device("cuda"))
    assert with_precision(model, "fp32", CPU) is model
