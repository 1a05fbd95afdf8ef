"""label.precision: `auto` resolves from the hardware (the probe mocked both ways), int8 and bf16 logits stay close to
fp32, the cache key holds the precision, an emulated bf16 runs and says so, bad values are refused.

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
from stages.models import precision as precision_module
from stages.models.precision import cpuinfo_bf16_flags, cpu_bf16_instructions, resolve_precision, with_precision
from stages.models.teacher_model import encode_pairs, resolve_model
from tests.test_label import write_transfer

CPU, CUDA = torch.device("cpu"), torch.device("cuda")
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


@pytest.mark.parametrize("instructions, expected", [(("avx512_bf16",), "bf16"), (("amx_bf16",), "bf16"), ((), "fp32")])
def test_auto_is_bf16_only_on_a_cpu_with_native_bf16(monkeypatch, instructions, expected):
    monkeypatch.setattr(precision_module, "cpu_bf16_instructions", lambda: instructions)
    resolved = resolve_precision("auto", CPU, "label.precision")
    assert (resolved.precision, resolved.requested, resolved.note) == (expected, "auto", None)
    assert resolved.native_bf16 == (instructions[0] if instructions else None)
    for explicit in ("fp32", "int8"):  # explicit values are kept whatever the hardware
        assert resolve_precision(explicit, CPU, "label.precision").precision == explicit


@pytest.mark.parametrize("supported, expected", [(True, "bf16"), (False, "fp32")])
def test_auto_on_cuda_follows_native_bf16_without_emulation(monkeypatch, supported, expected):
    asked = {}

    def is_bf16_supported(including_emulation=True):
        asked["emulation"] = including_emulation
        return supported

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    monkeypatch.setattr(precision_module, "cpu_bf16_instructions", lambda: ("avx512_bf16",))  # the host CPU: irrelevant
    assert resolve_precision("auto", CUDA, "teacher.precision").precision == expected
    assert asked == {"emulation": False}  # a GPU that only emulates bf16 (pre-Ampere) labels in fp32


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_auto_on_this_gpu_and_its_bf16_logits(teacher_dir):
    resolved = resolve_precision("auto", CUDA, "label.precision")
    assert resolved.precision == ("bf16" if torch.cuda.is_bf16_supported(including_emulation=False) else "fp32")
    model = AutoModelForSequenceClassification.from_pretrained(teacher_dir).to(CUDA).eval()
    tokenizer = AutoTokenizer.from_pretrained(teacher_dir)
    enc = tokenizer(["a fine movie", "long scenes and songs"], padding=True, return_tensors="pt").to(CUDA)
    with torch.inference_mode():
        reference = model(**enc).logits.float()
        out = with_precision(model, resolved.precision, CUDA)(**enc).logits.float()
    assert (out - reference).abs().max().item() <= BF16_MAX_DIFF * 4


def test_the_cpuinfo_fallback_reads_the_flags_line(monkeypatch, tmp_path):
    cpuinfo = tmp_path / "cpuinfo"
    monkeypatch.setattr(precision_module, "CPUINFO", cpuinfo)
    assert cpuinfo_bf16_flags() == ()  # no such file: no native bf16
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 fma avx512f avx512_vnni\n")
    assert cpuinfo_bf16_flags() == ()  # AVX-512 without its bf16 extension
    cpuinfo.write_text("processor\t: 0\nflags\t\t: fpu avx2 avx512f avx512_bf16 amx_tile amx_bf16\n")
    assert cpuinfo_bf16_flags() == ("avx512_bf16", "amx_bf16")
    monkeypatch.delattr(torch.cpu, "_is_avx512_bf16_supported")  # a torch without its own probe reads the file
    assert cpu_bf16_instructions() == ("avx512_bf16", "amx_bf16")


@pytest.mark.skipif(not precision_module.CPUINFO.exists(), reason="no /proc/cpuinfo to compare with")
def test_torchs_probe_agrees_with_the_kernels_flags_on_this_cpu():
    assert cpu_bf16_instructions() == cpuinfo_bf16_flags()


def test_emulated_bf16_runs_and_says_so_on_one_line_and_auto_falls_back(monkeypatch, capsys, tmp_path, teacher_dir):
    monkeypatch.setattr(precision_module, "cpu_bf16_instructions", lambda: ())
    task = get_task("sst2")
    write_transfer(tmp_path / "transfer.parquet", n=8)
    summaries = {}
    for asked in ("bf16", "auto"):
        summaries[asked] = label(task, tmp_path / "transfer.parquet", teacher_dir, tmp_path / f"{asked}.parquet",
                                 device=CPU, batch_size=8, cache_root=tmp_path / "cache", precision=asked)
        notes = [line for line in capsys.readouterr().err.splitlines() if "precision" in line]
        if asked == "bf16":
            assert notes == ["label.precision=bf16: this CPU (no AVX512_BF16 or AMX-BF16) has no native bf16, so "
                             "PyTorch emulates it: it runs, slower than fp32 (`auto` would take fp32; "
                             "docs/label-precision.md)"]
        else:
            assert notes == []
    assert {k: (s["precision"], s["precision_requested"], s["native_bf16"], s["rows_labeled_now"])
            for k, s in summaries.items()} == {"bf16": ("bf16", "bf16", None, 8), "auto": ("fp32", "auto", None, 8)}
    bf16, fp32 = _logits(tmp_path / "bf16.parquet"), _logits(tmp_path / "auto.parquet")
    assert 0 < np.abs(bf16 - fp32).max() <= BF16_MAX_DIFF
