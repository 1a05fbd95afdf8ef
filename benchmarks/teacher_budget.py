"""The teacher's dev score against its training budget and precision, over seeds, on one device.

    python benchmarks/teacher_budget.py --task rt --epochs 0.5,1,2 --precisions fp32,bf16 --seeds 1,2,3 [--device cuda]
    python benchmarks/teacher_budget.py --task rt --epochs 1 --precisions bf16 --lrs 5e-5,1e-4,2e-4 --seeds 1,2,3

Reads data/raw/<task>/ (run `dvc repro download@<task>` first) and fine-tunes teacher.model (params.yaml's
`teacher:` section, with `epochs`, `precision`, `lr` and the seed replaced) once per combination, in this process,
with the teacher stage's own code (stages/teacher.py's train_teacher). Prints JSON: per combination the dev
score (the selection split's first metric), the training seconds and the precision that ran; per (epochs,
precision, lr) the mean ± sd over seeds; and per (epochs, lr) the bf16 − fp32 gap of the means with its Welch t-test
p-value, and bf16's speed over fp32 (the ratio of the median training seconds).

This answers "how long must the teacher train", "at which lr" and "is bf16 within noise" for the default (docs/label-precision.md).
Runs on a CPU as well, slowly: a 0.5-epoch rt teacher is minutes on 2 cores.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
import typer
from scipy import stats

from stages import paths
from stages.data.tasks import get_task
from stages.params import load_params
from stages.runtime import resolve_device
from stages.teacher import train_teacher


def _floats(text: str) -> list[float]:
    return [float(x) for x in text.split(",") if x.strip()]


def main(task: str = typer.Option("rt", help="Task whose train and dev splits to use."),
         epochs: str = typer.Option("0.5,1", help="Comma-separated teacher.epochs values."),
         precisions: str = typer.Option("fp32,bf16", help="Comma-separated teacher.precision values."),
         seeds: str = typer.Option("1,2,3", help="Comma-separated training seeds."),
         lrs: str = typer.Option("", help="Comma-separated teacher.lr values; empty = params.yaml's teacher.lr."),
         device: str = typer.Option("auto", help="auto | cpu | cuda | cuda:N."),
         max_train_examples: int = typer.Option(0, help="Cap on training rows (a smoke test); 0 = all."),
         params: Path = typer.Option(Path("params.yaml"))) -> None:
    t = get_task(task)
    base = load_params(params).teacher
    run_device = resolve_device(device)
    split, metric = t.selection_split, t.metrics[0]
    learning_rates = _floats(lrs) or [base.lr]
    runs = []
    # precision innermost: interleaved, so a shared machine's load hits both alike
    combinations = itertools.product(_floats(epochs), learning_rates, [int(s) for s in _floats(seeds)],
                                     precisions.split(","))
    with tempfile.TemporaryDirectory(prefix="teacher-budget-") as tmp:
        for budget, lr, seed, precision in combinations:
            knobs = base.model_copy(update={"epochs": budget, "precision": precision, "lr": lr, "lr_grid": [],
                                            "max_train_examples": max_train_examples or None})
            start = time.perf_counter()
            with contextlib.redirect_stdout(sys.stderr):  # the Trainer's log lines: stdout is the JSON
                found = train_teacher(t, paths.raw_dir(t.name), Path(tmp) / f"{budget}-{lr}-{precision}-{seed}",
                                      params=knobs, device=run_device, seed=seed)
            runs.append({"epochs": budget, "lr": lr, "precision_asked": precision, "precision": found.get("precision"),
                         "seed": seed, "dev": found[split][metric], "seconds": round(time.perf_counter() - start, 1)})
            print(json.dumps(runs[-1]), file=sys.stderr, flush=True)
    groups: dict[tuple, list[dict]] = {}
    for r in runs:
        groups.setdefault((r["epochs"], r["lr"], r["precision_asked"]), []).append(r)
    summary = [{"epochs": e, "lr": lr, "precision": p, "n": len(rs), "dev_mean": statistics.fmean(r["dev"] for r in rs),
                "dev_sd": statistics.stdev(r["dev"] for r in rs) if len(rs) > 1 else None,
                "seconds_median": statistics.median(r["seconds"] for r in rs)} for (e, lr, p), rs in groups.items()]
    gaps = []
    for budget, lr in itertools.product(_floats(epochs), learning_rates):
        fp32, bf16 = groups.get((budget, lr, "fp32")), groups.get((budget, lr, "bf16"))
        if fp32 and bf16 and len(fp32) > 1 and len(bf16) > 1:
            test = stats.ttest_ind([r["dev"] for r in bf16], [r["dev"] for r in fp32], equal_var=False)
            gaps.append({"epochs": budget, "lr": lr, "bf16_minus_fp32_points": 100 * (statistics.fmean(r["dev"] for r in bf16)
                                                                           - statistics.fmean(r["dev"] for r in fp32)),
                         "welch_p": float(test.pvalue),
                         "bf16_speedup": statistics.median(r["seconds"] for r in fp32)
                         / statistics.median(r["seconds"] for r in bf16)})
    print(json.dumps({"task": t.name, "device": str(run_device),
                      "device_name": torch.cuda.get_device_name(run_device) if run_device.type == "cuda" else "cpu",
                      "selection": f"{split} {metric}", "runs": runs, "summary": summary, "bf16_vs_fp32": gaps},
                     indent=2))


if __name__ == "__main__":
    typer.run(main)
