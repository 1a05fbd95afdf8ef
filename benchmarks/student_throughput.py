"""Student speed: exact-length batches (dense LSTM calls) against the earlier packed batches, side by side.

    python benchmarks/student_throughput.py --task rt [--threads 1,2] [--rows 20000] [--infer-rows 5000]

Reads data/labeled/<task>.parquet and data/raw/<task>/ (run `dvc repro` first) and builds the student
exactly as the `student` stage does (params.yaml's student section, GloVe vectors, the paper's batch for
the task unless --batch-size). For each thread count it measures, in one process:

- training rows/s over one epoch of --rows transfer rows (a seeded sample; all of them by default):
  `buckets` (rows of one length per batch) against `sorted-windows` (the earlier mixed-length batches,
  packed), each from the same initial weights, after a warm-up;
- inference sentences/s, text in and logits out (tokenisation included), batch 512, over the first
  --infer-rows original sentences: exact-length batches against length-sorted packed batches, and the
  largest difference between the two paths' logits.

The last line prints the ratios (new / old) at the fastest thread count.
"""

from __future__ import annotations

import copy
import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import typer

from stages import paths
from stages.errors import StageError
from stages.params import load_params
from stages.runtime import resolve_device
from stages.models.predictor import EVAL_BATCH
from stages.models.torch_student import OnDevice, Student, build_model
from stages.student import make_optimizer, prepare_data, train_epoch
from stages.data.tasks import get_task

WARMUP_BATCHES = 20


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _train_rate(model0, data: OnDevice, distill, batching: str, batch_size: int, device, seed: int) -> float:
    model = copy.deepcopy(model0)
    optimizer = make_optimizer(model, distill)
    generator = torch.Generator().manual_seed(seed)
    batches = data.examples.batches(batching, batch_size, generator)
    kwargs = dict(alpha=distill.alpha, kind=distill.loss, temperature=distill.temperature, desc=batching)
    train_epoch(model, optimizer, data, batches[:WARMUP_BATCHES], **kwargs)
    _sync(device)
    start = time.perf_counter()
    train_epoch(model, optimizer, data, batches, **kwargs)
    _sync(device)
    return len(data.examples) / (time.perf_counter() - start)


def _lstm_ceiling(model0, data: OnDevice, batch_size: int, device, seed: int) -> float:
    lstm = copy.deepcopy(model0.lstm).train()
    batches = data.examples.batches("buckets", batch_size, torch.Generator().manual_seed(seed))
    elapsed = 0.0
    for i, (_, inputs) in enumerate(data.batches(batches)):
        with torch.no_grad():
            x = model0.embed(inputs["ids_a"])
        x.requires_grad_()  # the non-static embeddings are trained, so the input's gradient is computed
        _sync(device)
        start = time.perf_counter()
        _, (h_n, _) = lstm(x)
        h_n.sum().backward()
        _sync(device)
        if i >= WARMUP_BATCHES:
            elapsed += time.perf_counter() - start
    return sum(len(rows) for rows in batches[WARMUP_BATCHES:]) / elapsed


def _infer_rate(student: Student, texts_a, texts_b, exact: bool, device) -> tuple[float, np.ndarray]:
    student.predict_logits(texts_a[:64], texts_b[:64] if texts_b else None, exact=exact)  # warm-up
    _sync(device)
    start = time.perf_counter()
    logits = student.predict_logits(texts_a, texts_b, EVAL_BATCH, exact=exact)
    _sync(device)
    return len(texts_a) / (time.perf_counter() - start), logits


def main(task: str = typer.Option("rt", help="Task whose labelled transfer set to train on."),
         threads: str = typer.Option("1,2", help="CPU thread counts to measure, comma-separated."),
         rows: int = typer.Option(0, help="Transfer rows per training epoch (seeded sample); 0 = all."),
         infer_rows: int = typer.Option(5000, help="Original sentences classified in the inference test."),
         batch_size: int = typer.Option(0, help="Training batch; 0 = distill.batch_size or the paper's."),
         params: Path = typer.Option(Path("params.yaml"), help="Parameter file.")) -> None:
    p = load_params(params)
    t = get_task(task)
    device = resolve_device(p.device)
    batch_size = batch_size or p.distill.batch_size or t.student_batch_size
    data = prepare_data(t, paths.labeled_file(t.name), paths.raw_dir(t.name), p.student, seed=p.seed,
                        use_teacher_logits=True)
    train = data.train
    if rows and rows < len(train):
        train = train.take(np.sort(np.random.default_rng(0).choice(len(train), rows, replace=False)))
    labeled = pq.read_table(paths.labeled_file(t.name), columns=["text_a", "text_b", "is_original"])
    originals = labeled.filter(labeled["is_original"]).slice(0, infer_rows)
    texts_a = originals["text_a"].to_pylist()
    texts_b = originals["text_b"].to_pylist() if t.is_pair else None

    torch.manual_seed(p.seed)
    model0 = build_model(data.config, pretrained=data.embeddings).to(device)
    on_device = OnDevice(train, device)
    results = []
    for n in [int(x) for x in threads.split(",")] if device.type == "cpu" else [torch.get_num_threads()]:
        torch.set_num_threads(n)
        row = {"threads": n}
        for batching in ("sorted-windows", "buckets"):
            row[f"train_{batching}"] = round(_train_rate(model0, on_device, p.distill, batching, batch_size,
                                                         device, p.seed), 1)
        if not t.is_pair and hasattr(model0, "lstm"):
            row["train_lstm_ceiling"] = round(_lstm_ceiling(model0, on_device, batch_size, device, p.seed), 1)
            row["ceiling_ratio"] = round(row["train_lstm_ceiling"] / row["train_sorted-windows"], 2)
        student = Student(copy.deepcopy(model0).eval(), data.vocab, data.config, device)
        row["infer_packed"], packed = _infer_rate(student, texts_a, texts_b, False, device)
        row["infer_exact"], exact = _infer_rate(student, texts_a, texts_b, True, device)
        row["infer_packed"], row["infer_exact"] = round(row["infer_packed"], 1), round(row["infer_exact"], 1)
        row["max_logit_difference"] = float(np.abs(packed - exact).max())
        row["train_ratio"] = round(row["train_buckets"] / row["train_sorted-windows"], 2)
        row["infer_ratio"] = round(row["infer_exact"] / row["infer_packed"], 2)
        print(json.dumps(row), flush=True)
        results.append(row)
    best = max(results, key=lambda r: r["train_buckets"])
    print(f"task {t.name}, {len(train)} training rows, batch {batch_size}, device {device}: "
          f"fastest at {best['threads']} thread(s); training {best['train_ratio']}x "
          f"({best['train_buckets']:,.0f} vs {best['train_sorted-windows']:,.0f} rows/s), "
          f"inference {best['infer_ratio']}x ({best['infer_exact']:,.0f} vs {best['infer_packed']:,.0f} sentences/s)"
          + (f"; the LSTM calls alone bound training at {best['ceiling_ratio']}x "
             f"({best['train_lstm_ceiling']:,.0f} rows/s)" if "ceiling_ratio" in best else ""))


if __name__ == "__main__":
    try:
        typer.run(main)
    except StageError as e:  # missing data or params: one line, not a traceback
        sys.exit(f"error: {e}")
