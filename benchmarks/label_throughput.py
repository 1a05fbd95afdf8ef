"""Labeling speed against a bare forward pass over the same batches.

    python benchmarks/label_throughput.py --task rt [--rows 5000] [--batch-size 256]

Reads data/transfer/<task>.parquet and models/teacher/<task>/ (run `dvc repro` first), takes a
seeded random sample of --rows rows (originals and augmented rows in their real proportions), and reports rows/s of (a) the full `label` stage on them (tokenisation, batching,
sharding, Parquet writing) and (b) the teacher's forward pass alone on pre-built batches of the same
rows. The ratio shows the overhead of everything that is not the model.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import typer

from stages import paths
from stages.label import label, load_teacher
from stages.params import load_params
from stages.runtime import resolve_device
from stages.data.tasks import get_task
from stages.models.teacher_model import batch_logits, encode_pairs, length_sorted_batches


def main(task: str = typer.Option("rt", help="Task whose transfer set and teacher to use."),
         rows: int = typer.Option(5000, help="How many transfer-set rows to label."),
         batch_size: int = typer.Option(0, help="Batch size; 0 = label.batch_size from params.yaml."),
         params: Path = typer.Option(Path("params.yaml"))) -> None:
    p = load_params(params)
    t = get_task(task)
    device = resolve_device(p.device)
    batch_size = batch_size or p.label.batch_size
    transfer = pq.read_table(paths.transfer_file(t.name))
    picked = np.sort(np.random.default_rng(0).choice(transfer.num_rows, min(rows, transfer.num_rows), replace=False))
    sample = transfer.take(picked)
    tokenizer, model = load_teacher(paths.model_dir("teacher", t.name), device)
    texts_b = sample["text_b"].to_pylist() if t.is_pair else None
    encodings = encode_pairs(tokenizer, sample["text_a"].to_pylist(), texts_b, p.teacher.max_length)
    batches = length_sorted_batches(encodings, batch_size, tokenizer.pad_token_id)
    batch_logits(model, batches[:1], len(picked), device)  # warm-up, so neither timing pays for it
    with tempfile.TemporaryDirectory() as tmp:
        subset = Path(tmp) / "transfer.parquet"
        pq.write_table(sample, subset)

        start = time.perf_counter()
        label(t, subset, paths.model_dir("teacher", t.name), Path(tmp) / "labeled.parquet", device=device,
              batch_size=batch_size, shard_rows=p.label.shard_rows, max_length=p.teacher.max_length,
              cache_root=Path(tmp) / "cache")
        stage_seconds = time.perf_counter() - start

    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    batch_logits(model, batches, sample.num_rows, device)
    if device.type == "cuda":
        torch.cuda.synchronize()
    forward_seconds = time.perf_counter() - start

    result = {
        "task": t.name, "rows": sample.num_rows, "batch_size": batch_size, "device": str(device),
        "threads": torch.get_num_threads(),
        "label_rows_per_s": round(sample.num_rows / stage_seconds, 1),
        "forward_rows_per_s": round(sample.num_rows / forward_seconds, 1),
        "label_vs_forward": round(forward_seconds / stage_seconds, 3),
    }
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
