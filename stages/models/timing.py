"""One way to time any model, text in and scores out, so speeds measured by `export` and `compare` compare.

- `measure_speed`: sentences/s over the given texts at one batch size (after a short warm-up; optionally capped
  in seconds, batch by batch), and the batch-1 latency median and 95th percentile over the first `latency_n` texts.
- `peak_rss_mb`: the peak resident memory of a fresh Python process that loads one model with its runtime and
  classifies the given texts at one batch size: the kernel's high-water mark of the process's memory (VmHWM in
  /proc/self/status; getrusage's ru_maxrss would not do, as Linux carries the forking parent's peak over into
  it). A fresh process, because a process's peak only grows: measured in the timing process, every model would
  carry the peaks of those loaded before it. The figure includes the interpreter and the runtime's libraries (numpy,
  onnxruntime, scikit-learn or PyTorch): what a service running that model alone would hold.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from typing import Callable

import numpy as np

from stages.errors import StageError

Run = Callable[[list[str], "list[str] | None", int], object]


def measure_speed(run: Run, texts_a: list[str], texts_b: list[str] | None, batch_size: int,
                  latency_n: int, max_seconds: float | None = None) -> dict:
    """run(texts_a, texts_b, batch_size) classifies a batch; returns sentences/s and batch-1 latency p50/p95 (ms).

    Throughput: the texts in order, one call per batch of batch_size; with max_seconds, the pass stops after the
    first batch that ends past it (at least one batch), so a slow model is timed on fewer texts, not for longer."""
    run(texts_a[:8], texts_b[:8] if texts_b else None, batch_size)  # warm-up: first-call setup is not speed
    done = 0
    start = time.perf_counter()
    while done < len(texts_a):
        end = min(done + batch_size, len(texts_a))
        run(texts_a[done:end], texts_b[done:end] if texts_b else None, batch_size)
        done = end
        if max_seconds is not None and time.perf_counter() - start >= max_seconds:
            break
    throughput = done / (time.perf_counter() - start)
    latencies = []
    for i in range(min(latency_n, len(texts_a))):
        start = time.perf_counter()
        run(texts_a[i:i + 1], texts_b[i:i + 1] if texts_b else None, 1)
        latencies.append(1000 * (time.perf_counter() - start))
    return {"sentences_per_s": round(throughput, 1), "sentences_timed": done, "latency_ms_p50": round(float(np.percentile(latencies, 50)), 3),
            "latency_ms_p95": round(float(np.percentile(latencies, 95)), 3)}


_CHILD = """
import json, sys, importlib
spec = json.load(sys.stdin)
module, name = spec["loader"].rsplit(".", 1)
model = getattr(importlib.import_module(module), name)(**spec["kwargs"])
model.predict_proba(spec["texts_a"], spec["texts_b"], spec["batch_size"])
with open("/proc/self/status") as status:
    kib = next(int(line.split()[1]) for line in status if line.startswith("VmHWM:"))
print(json.dumps({"peak_rss_mb": kib / 1024}))
"""


def peak_rss_mb(loader: str, kwargs: dict, texts_a: list[str], texts_b: list[str] | None, batch_size: int,
                threads: int) -> float:
    """Peak RSS (MiB) of a fresh process: loader ("package.module.function", called with kwargs) builds a model
    with a predict_proba(texts_a, texts_b, batch_size); it classifies the texts once. Linux only (/proc)."""
    spec = {"loader": loader, "kwargs": kwargs, "texts_a": texts_a, "texts_b": texts_b, "batch_size": batch_size}
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
    result = subprocess.run([sys.executable, "-c", _CHILD], input=json.dumps(spec), capture_output=True, text=True,
                            env=env)
    if result.returncode != 0:
        last = (result.stderr.strip().splitlines() or ["no output"])[-1]
        raise StageError(f"measuring the peak memory of {loader}({kwargs}) failed: {last}")
    return round(json.loads(result.stdout.strip().splitlines()[-1])["peak_rss_mb"], 1)
