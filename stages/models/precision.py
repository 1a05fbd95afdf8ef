"""Numeric precision of the teacher: its labeling forward pass (`label.precision`: auto, fp32, bf16 or int8) and
its fine-tuning (`teacher.precision`: auto, fp32 or bf16).

- auto (the default of both): bf16 where the device runs bf16 matrix products natively, fp32 elsewhere
  (`resolve_precision`). Natively: a CUDA GPU with bf16 (torch.cuda.is_bf16_supported without emulation), or a
  CPU with AVX512_BF16 or AMX-BF16 (`cpu_bf16_instructions`). Two machines may therefore run the same params at
  different precisions; the stages record the one they ran.
- fp32: the model as trained (the reference every other precision is measured against).
- bf16: the forward pass under torch.autocast(bfloat16): matrix products in bfloat16, the ops autocast keeps in
  float32 (softmax, layer norm) stay there. On a CPU without native bf16 instructions (AVX2 only, no AVX-512-BF16
  or AMX) PyTorch emulates it, which is slower than fp32: docs/label-precision.md has the measurements.
- int8: dynamic quantisation of every nn.Linear (torch.ao.quantization.quantize_dynamic, qint8 weights per output
  channel, activations quantised per batch on the fly); CPU only, since PyTorch's dynamic int8 kernels are CPU
  kernels. Per-channel weights: on 128 rt transfer rows they halved the mean |logit difference| of the default
  per-tensor scheme (0.082 against 0.173) and kept 98.4% of the fp32 argmax against 93.8%, at the same speed.

Library calls only; no hand-written kernels.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch

from stages.errors import StageError

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")
AUTO = "auto"
# the CPU instruction sets that run bf16 matrix products natively, as /proc/cpuinfo names them
CPU_BF16_FLAGS: tuple[str, ...] = ("avx512_bf16", "amx_bf16")
CPUINFO = Path("/proc/cpuinfo")  # Linux; read only where torch lacks its own probe


def cpu_bf16_instructions() -> tuple[str, ...]:
    """The native bf16 instruction sets of this CPU (of CPU_BF16_FLAGS); () when it has none.

    PyTorch's own cpuinfo probe where this torch has it (any OS), else the Linux flags of /proc/cpuinfo."""
    avx512_bf16 = getattr(torch.cpu, "_is_avx512_bf16_supported", None)
    amx = getattr(torch.cpu, "_is_amx_tile_supported", None)  # AMX tiles come with AMX-BF16 on every x86 CPU so far
    if avx512_bf16 is not None and amx is not None:
        return tuple(flag for flag, found in zip(CPU_BF16_FLAGS, (avx512_bf16(), amx())) if found)
    return cpuinfo_bf16_flags()


def cpuinfo_bf16_flags() -> tuple[str, ...]:
    """CPU_BF16_FLAGS found in the first `flags` line of CPUINFO; () where there is no such file."""
    try:
        lines = CPUINFO.read_text().splitlines()
    except OSError:
        return ()
    flags = next((set(line.split(":", 1)[1].split()) for line in lines if line.startswith("flags")), set())
    return tuple(flag for flag in CPU_BF16_FLAGS if flag in flags)


def native_bf16(device: torch.device) -> str | None:
    """What runs bf16 natively on `device` (e.g. "avx512_bf16", "cuda"), or None: bf16 would be emulated."""
    if device.type == "cuda":
        return "cuda" if torch.cuda.is_bf16_supported(including_emulation=False) else None
    if device.type == "cpu":
        return "+".join(cpu_bf16_instructions()) or None
    return None


@dataclass(frozen=True)
class Resolved:
    precision: str  # what runs: fp32 | bf16 | int8
    requested: str  # what the params say: auto | fp32 | bf16 | int8
    native_bf16: str | None  # the device's native bf16 (see native_bf16), None without
    note: str | None = None  # one line to print: bf16 asked for where it is emulated


def resolve_precision(requested: str, device: torch.device, knob: str) -> Resolved:
    """`auto` -> bf16 where `device` runs it natively, else fp32; an explicit value is kept, and an explicit bf16
    without native bf16 gets a note (it runs, emulated, slower than fp32). `knob` names the param in messages."""
    if requested != AUTO and requested not in PRECISIONS:
        raise StageError(f"{knob} must be one of {AUTO}, {', '.join(PRECISIONS)}, got {requested!r}")
    native = native_bf16(torch.device(device))  # a name ("cpu") or a torch.device
    if requested == AUTO:
        return Resolved("bf16" if native else "fp32", requested, native)
    note = None
    if requested == "bf16" and native is None:
        what = "this GPU" if device.type == "cuda" else "this CPU (no AVX512_BF16 or AMX-BF16)"
        note = (f"{knob}=bf16: {what} has no native bf16, so PyTorch emulates it: it runs, slower than fp32 "
                f"(`auto` would take fp32; docs/label-precision.md)")
    return Resolved(requested, requested, native, note)


def say(resolved: Resolved) -> None:
    """Print the resolved precision's note, if any, as one line on stderr."""
    if resolved.note:
        print(resolved.note, file=sys.stderr, flush=True)


class _Autocast(torch.nn.Module):
    """Runs the wrapped classifier under torch.autocast; `.config` is the wrapped model's, as batch_logits reads it."""

    def __init__(self, model: torch.nn.Module, device_type: str, dtype: torch.dtype):
        super().__init__()
        self.model, self.device_type, self.dtype = model, device_type, dtype
        self.config = model.config

    def forward(self, **inputs):
        with torch.autocast(self.device_type, dtype=self.dtype):
            return self.model(**inputs)


def with_precision(model: torch.nn.Module, precision: str, device: torch.device) -> torch.nn.Module:
    """The eval-mode classifier to label with at `precision`; fp32 returns `model` itself."""
    if precision not in PRECISIONS:
        raise StageError(f"label.precision must be one of {', '.join(PRECISIONS)}, got {precision!r}")
    model = model.eval()
    if precision == "fp32":
        return model
    if precision == "bf16":
        return _Autocast(model, device.type, torch.bfloat16).eval()
    if device.type != "cpu":
        raise StageError(f"label.precision=int8 (dynamic quantisation) runs on the CPU only, but the device is "
                         f"{device}; use bf16 on a GPU, or device: cpu")
    from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

    return quantize_dynamic(model, {torch.nn.Linear: per_channel_dynamic_qconfig}, dtype=torch.qint8).eval()
