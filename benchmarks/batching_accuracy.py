"""Does the batching change accuracy? Student and baseline dev accuracy over seeds, `buckets` vs `sorted-windows`.

    python benchmarks/batching_accuracy.py --task rt --seeds 1,2,3

Trains the `student` and `baseline` stages' models exactly as the pipeline does (params.yaml, the
task's labelled transfer set and raw splits; run `dvc repro` first) once per seed and batching, into a
temporary directory, and prints every dev score, then mean and standard deviation per model and
batching, and the student's and baseline's training time.
"""

from __future__ import annotations

import json
import sys
import statistics
import tempfile
from pathlib import Path

import typer

from stages import paths
from stages.errors import StageError
from stages.models.batching import BATCHINGS
from stages.params import load_params
from stages.runtime import resolve_device
from stages.student import train_student
from stages.data.tasks import get_task


def main(task: str = typer.Option("rt", help="Task to train on."),
         seeds: str = typer.Option("1,2,3", help="Comma-separated training seeds."),
         params: Path = typer.Option(Path("params.yaml"), help="Parameter file.")) -> None:
    p = load_params(params)
    t = get_task(task)
    metric = t.metrics[0]
    scores: dict[tuple[str, str], list[float]] = {}
    seconds: dict[tuple[str, str], list[float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        for seed in [int(s) for s in seeds.split(",")]:
            for batching in BATCHINGS:
                for kind in ("student", "baseline"):
                    distilled = kind == "student"
                    m = train_student(
                        t, paths.labeled_file(t.name) if distilled else paths.raw_dir(t.name) / "train.parquet",
                        paths.raw_dir(t.name), Path(tmp) / f"{kind}-{batching}-{seed}", student=p.student,
                        distill=p.distill.model_copy(update={"batching": batching}), device=resolve_device(p.device),
                        seed=seed, use_teacher_logits=distilled)
                    score = m[t.selection_split][metric]
                    scores.setdefault((kind, batching), []).append(score)
                    seconds.setdefault((kind, batching), []).append(m["train_seconds"])
                    print(json.dumps({"seed": seed, "batching": batching, "model": kind, metric: score,
                                      "best_epoch": m["best_epoch"], "train_seconds": m["train_seconds"]}), flush=True)
    for (kind, batching), values in scores.items():
        print(f"{kind:8s} {batching:14s} {t.selection_split} {metric}: "
              f"{100 * statistics.mean(values):.2f} ± {100 * (statistics.stdev(values) if len(values) > 1 else 0):.2f} "
              f"(n={len(values)}; "
              + ", ".join(f"{100 * v:.2f}" for v in values)
              + f"); train {statistics.mean(seconds[kind, batching]):.1f} s per run")


if __name__ == "__main__":
    try:
        typer.run(main)
    except StageError as e:  # missing data or params: one line, not a traceback
        sys.exit(f"error: {e}")
