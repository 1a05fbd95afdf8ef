"""static + LR for a task whose pipeline leaves the static arch out (the default `archs: [bilstm, ngram]`): builds
Model2Vec embeddings of the pretrained `teacher.model` with the `static:` knobs, as `inputs@<task>-static` writes
models/inputs/<task>/static/base/, fits `compare`'s logistic regression on the gold training split, and prints its
score, and TF-IDF + LR's, on every scored split (dev, and test where its labels are known), as JSON.

    python benchmarks/static_lr.py --task rt

Reads data/raw/<task>/ (the download stage) and params.yaml; writes the table under --out (reused when present).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import typer

from stages import paths
from stages.compare import fit_on_gold, gold_train, scored_splits, tfidf_features
from stages.data.tasks import get_task
from stages.inputs import pretrained_table
from stages.models import alternatives
from stages.models.static_model import EMBEDDINGS_FILE
from stages.params import arch_knobs, load_params


def main(task: str = typer.Option("rt", help="Task whose splits to use (run its download stage first)."),
         out: Path = typer.Option(Path("data/cache/static-lr"), help="Where the pretrained table is written."),
         threads: int = typer.Option(2, help="torch threads while building the table."),
         params: Path = typer.Option(Path("params.yaml"))) -> None:
    p, spec = load_params(params), get_task(task)
    torch.set_num_threads(threads)
    table = out / p.teacher.model.replace("/", "--")
    result = {"task": task, "teacher_model": p.teacher.model}
    if not (table / EMBEDDINGS_FILE).is_file():
        start = time.perf_counter()
        result["table"] = pretrained_table(p.teacher.model, table, knobs=arch_knobs(p, "static"),
                                           device=torch.device("cpu"))
        result["build_seconds"] = round(time.perf_counter() - start, 1)
    raw = paths.raw_dir(task)
    splits, train = scored_splits(spec, raw), gold_train(spec, raw)
    features = {"static-lr": alternatives.StaticFeatures(str(table), spec.is_pair),
                "tfidf-lr": tfidf_features(spec, p.compare)}
    for name, made in features.items():
        start = time.perf_counter()
        fitted = fit_on_gold(made, train, p.compare)
        result[name] = {"fit_seconds": round(time.perf_counter() - start, 1), **{
            s: round(100 * float((fitted.predict_proba(split.texts_a, split.texts_b, 512).argmax(-1)
                                  == split.labels).mean()), 2) for s, split in splits.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
