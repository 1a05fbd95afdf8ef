"""Numeric precision of the teacher's labeling forward pass (`label.precision`): fp32, bf16 or int8.

- fp32: the model as trained (the default, and the reference every other precision is measured against).
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

from typing import Literal

import torch

from stages.errors import StageError

Precision = Literal["fp32", "bf16", "int8"]
PRECISIONS: tuple[str, ...] = ("fp32", "bf16", "int8")


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
