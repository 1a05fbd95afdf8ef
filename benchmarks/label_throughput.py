"""Labeling speed against a bare forward pass over the same batches, and the label precisions side by side.

    python benchmarks/label_throughput.py --task rt [--rows 5000] [--batch-size 256] [--precisions fp32,bf16,int8]

Reads data/transfer/<task>.parquet and models/teacher/<task>/ (run `dvc repro` first), takes a
seeded random sample of --rows rows (originals and augmented rows in their real proportions), and reports rows/s of (a) the full `label` stage on them (tokenisation, batching,
sharding, Parquet writing) and (b) the teacher's forward pass alone on pre-built batches of the same
rows. The ratio shows the overhead of everything that is not the model.

With --precisions, (c) the forward pass at each label.precision on the same pre-built batches, one after the
other in this one process: rows/s, the speed-up over fp32, and the max and mean |logit difference| against the
fp32 logits of the same rows (--skip-stage leaves out (a), the slowest part).
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
from stages.label import label
from stages.models.teacher_model import load_teacher
from stages.params import load_params
from stages.runtime import resolve_device
from stages.data.tasks import get_task
from stages.models.precision import with_precision
from stages.models.teacher_model import batch_logits, encode_pairs, length_sorted_batches


def main(task: str = typer.Option("rt", help="Task whose transfer set and teacher to use."),
         rows: int = typer.Option(5000, help="How many transfer-set rows to label."),
         batch_size: int = typer.Option(0, help="Batch size; 0 = label.batch_size from params.yaml."),
         precisions: str = typer.Option("", help="Comma-separated label precisions to compare, e.g. fp32,bf16,int8."),
         skip_stage: bool = typer.Option(False, help="Leave out the timing of the whole label stage."),
         repeats: int = typer.Option(1, help="Time the precisions this many rounds, interleaved (fp32, int8, fp32, "
                                              "int8, ...), and report the median: fairer on a shared machine."),
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
    stage_seconds = None
    if not skip_stage:
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
        "label_rows_per_s": round(sample.num_rows / stage_seconds, 1) if stage_seconds else None,
        "forward_rows_per_s": round(sample.num_rows / forward_seconds, 1),
        "label_vs_forward": round(forward_seconds / stage_seconds, 3) if stage_seconds else None,
    }
    if precisions:
        result["precisions"] = compare_precisions(model, batches, sample.num_rows, device,
                                                  [s.strip() for s in precisions.split(",") if s.strip()], repeats)
    print(json.dumps(result, indent=2))


def compare_precisions(model, batches, n_rows: int, device, precisions: list[str], repeats: int = 1) -> dict:
    """Forward rows/s of each precision on the same batches (median over interleaved rounds), and |logit
    difference| against fp32."""
    import copy

    order = ["fp32", *[p for p in precisions if p != "fp32"]]
    runners = {p: with_precision(copy.deepcopy(model), p, device) for p in order}
    for runner in runners.values():
        batch_logits(runner, batches[:1], n_rows, device)  # warm-up
    seconds, logits = {p: [] for p in order}, {}
    for _ in range(repeats):
        for precision in order:
            start = time.perf_counter()
            logits[precision] = batch_logits(runners[precision], batches, n_rows, device)
            seconds[precision].append(time.perf_counter() - start)
    out, reference = {}, logits["fp32"]
    fp32_seconds = float(np.median(seconds["fp32"]))
    for precision in order:
        diff = np.abs(logits[precision] - reference)
        median = float(np.median(seconds[precision]))
        out[precision] = {"rows_per_s": round(n_rows / median, 1), "seconds_per_round": [round(x, 2) for x in seconds[precision]],
                          "speedup_vs_fp32": round(fp32_seconds / median, 3),
                          "speedup_per_round": [round(f / x, 3) for f, x in zip(seconds["fp32"], seconds[precision])],
                          "max_abs_logit_diff": float(diff.max()), "mean_abs_logit_diff": float(diff.mean()),
                          "argmax_agreement": float((logits[precision].argmax(1) == reference.argmax(1)).mean())}
    return out

if __name__ == "__main__":
    typer.run(main)
