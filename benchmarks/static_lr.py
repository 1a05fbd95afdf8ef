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
from stages.compare import gold_train, scored_splits
from stages.data.tasks import get_task
from stages.models import alternatives
from stages.models.static_model import EMBEDDINGS_FILE, build_embeddings
from stages.models.teacher_model import resolve_model
from stages.params import load_params


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
        base = resolve_model(p.teacher.model)
        result["table"] = build_embeddings(base.location, table, dims=p.static.dims, weighting=p.static.weighting,
                                           batch_size=p.static.batch_size, device=torch.device("cpu"),
                                           vocab_size=p.static.vocab_size, source=f"teacher.model {p.teacher.model!r}")
        result["build_seconds"] = round(time.perf_counter() - start, 1)
    raw = paths.raw_dir(task)
    splits, train = scored_splits(spec, raw), gold_train(spec, raw)
    features = {"static-lr": alternatives.StaticFeatures(str(table), spec.is_pair),
                "tfidf-lr": alternatives.TfidfFeatures(p.compare.tfidf_word_ngrams, p.compare.tfidf_char_ngrams,
                                                       p.compare.tfidf_min_df, spec.is_pair)}
    for name, made in features.items():
        start = time.perf_counter()
        fitted = alternatives.fit_logistic(made, train.texts_a, train.texts_b, train.labels, c=p.compare.lr_c,
                                           max_iter=p.compare.lr_max_iter)
        result[name] = {"fit_seconds": round(time.perf_counter() - start, 1), **{
            s: round(100 * float((fitted.predict_proba(split.texts_a, split.texts_b, 512).argmax(-1)
                                  == split.labels).mean()), 2) for s, split in splits.items()}}
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
