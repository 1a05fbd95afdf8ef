"""The most bf16 can gain over fp32 on this CPU: the teacher's own matrix products, timed alone.

    python benchmarks/matmul_ceiling.py [--tokens 7168,896] [--rounds 3] [--threads 0]

Every nn.Linear of an encoder layer of teacher.model (params.yaml; its config's hidden_size and
intermediate_size: the query, key, value and output projections, the feed-forward up and down projections)
is timed as torch.nn.functional.linear on random inputs of --tokens rows, in float32 and in bfloat16, interleaved
round by round. The default token counts are a labeling batch (label.batch_size 256 rows of about 28 word
pieces, rt's mean padded length) and a training batch (teacher.batch_size 32 rows of 28).

These products are about 99% of the teacher's floating-point work at rt's lengths (attention's own products
and the element-wise ops are the rest), and bf16 speeds up nothing else as much: so the ratio printed here,
the layer's total fp32 time over its total bf16 time, is a ceiling for what bf16 can gain on the whole
forward pass, and the backward pass of training adds work it does not speed up (the optimizer step, dropout's
random masks, the embedding gradient). Prints JSON: GFLOP/s per shape and precision (median over rounds), and
per token count the layer's bf16 × fp32 ratio (median of the per-round ratios).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import typer
from transformers import AutoConfig

from stages.models.precision import native_bf16
from stages.models.teacher_model import resolve_model
from stages.params import load_params

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16}


def layer_shapes(hidden: int, intermediate: int) -> dict[str, tuple[int, int, int]]:
    """(in features, out features, how many) of each nn.Linear kind in one encoder layer."""
    return {"attention projection": (hidden, hidden, 4), "feed-forward up": (hidden, intermediate, 1),
            "feed-forward down": (intermediate, hidden, 1)}


def _seconds(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor, min_flop: float = 2e10) -> float:
    """Seconds per F.linear(x, w, b), timed over enough calls for about min_flop floating-point operations."""
    calls = max(5, int(min_flop / (2 * x.shape[0] * x.shape[1] * w.shape[0])))
    start = time.perf_counter()
    for _ in range(calls):
        F.linear(x, w, b)
    return (time.perf_counter() - start) / calls


def main(tokens: str = typer.Option("7168,896", help="Comma-separated row counts (batch × padded length)."),
         rounds: int = typer.Option(3, help="Interleaved rounds; medians are reported."),
         threads: int = typer.Option(0, help="torch threads; 0 = torch's default (the physical cores)."),
         params: Path = typer.Option(Path("params.yaml"))) -> None:
    if threads:
        torch.set_num_threads(threads)
    model = load_params(params).teacher.model
    config = AutoConfig.from_pretrained(resolve_model(model).location)
    shapes = layer_shapes(config.hidden_size, config.intermediate_size)
    generator = torch.Generator().manual_seed(0)
    out = {}
    for rows in (int(t) for t in tokens.split(",") if t.strip()):
        tensors = {}  # name -> precision -> (input, weight, bias): one draw, so both precisions multiply the same numbers
        for name, (k, n, _) in shapes.items():
            drawn = (torch.randn(rows, k, generator=generator), torch.randn(n, k, generator=generator),
                     torch.randn(n, generator=generator))
            tensors[name] = {p: tuple(t.to(dtype) for t in drawn) for p, dtype in DTYPES.items()}
        for per_precision in tensors.values():  # warm-up: oneDNN picks and caches its kernels per shape
            for x, w, b in per_precision.values():
                for _ in range(3):
                    F.linear(x, w, b)
        seconds = {(name, p): [] for name in shapes for p in DTYPES}
        for _ in range(rounds):
            for name in shapes:
                for p in DTYPES:
                    seconds[name, p].append(_seconds(*tensors[name][p]))
        layer = {p: [sum(seconds[name, p][r] * shapes[name][2] for name in shapes) for r in range(rounds)]
                 for p in DTYPES}
        out[str(rows)] = {
            "gflop_per_s": {name: {p: round(float(np.median([2 * rows * k * n / s / 1e9 for s in seconds[name, p]])), 1)
                                   for p in DTYPES}
                            for name, (k, n, _) in shapes.items()},
            "layer_bf16_vs_fp32": round(float(np.median([f / b for f, b in zip(layer["fp32"], layer["bf16"])])), 3),
            "layer_bf16_vs_fp32_per_round": [round(f / b, 3) for f, b in zip(layer["fp32"], layer["bf16"])],
        }
    print(json.dumps({"model": model, "hidden_size": config.hidden_size, "intermediate_size": config.intermediate_size,
                      "threads": torch.get_num_threads(), "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "native_bf16": native_bf16(torch.device("cpu")), "rounds": rounds, "tokens": out}, indent=2))


if __name__ == "__main__":
    typer.run(main)
