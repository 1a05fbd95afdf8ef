"""How much `compare`'s McNemar verdict depends on which seeds: a bag student (ngram or static) trained over many
seeds against TF-IDF + LR (or static + LR), and the McNemar p-value of every k-seed majority vote.

    python benchmarks/seed_votes.py --task rt --seeds 1-10 --k 5
    python benchmarks/seed_votes.py --task rt --seeds 1-10 --k 5 --set '{"hidden": 64, "dropout": 0.3, "lr": 0.005}'
    python benchmarks/seed_votes.py --task mrpc --arch static --seeds 1-5 --against static-lr --table pretrained
    python benchmarks/seed_votes.py --task rt --seeds 1-10 --k 5 --augmented-share 0   # the originals alone
    python benchmarks/seed_votes.py --task rt --seeds 1-10 --k 5 --saved models/student/rt/bilstm   # trained already

Reads what `dvc repro compare@<task>` leaves (data/raw/<task>/, the labelled transfer set, models/inputs/<task>/<arch>/)
and params.yaml. Trains the distilled student once per seed in this process with the student stage's own code
(stages/student.py's train_bag_student; `--set` overrides the arch's knobs, `--distill-set` the `distill:` ones;
`--table pretrained` trains a static student on the pretrained encoder's table, inputs/<task>/static/base/, in
place of the fine-tuned teacher's; `--augmented-share` keeps the originals and that share of the augmented rows,
drawn with a fixed seed, to ask what the augmentation adds; `--saved DIR` trains nothing and scores the students
already in DIR/seed-<n>/, of any arch, e.g. the BiLSTM students of several experiments copied into one folder),
fits TF-IDF + LR (or, `--against static-lr`, static + LR on the pretrained table) on the gold training split as
`compare` does (the `compare:` knobs), and prints JSON: per scored split (dev, and test where its labels are
known) each seed's score, their mean ± sd, the one-sample t against TF-IDF + LR, the McNemar test of the vote
of all the seeds, and over every k-seed subset the number whose vote passes p < 0.05, with the median, min and
max p-value (stages/report/statistics.py: majority_vote, mcnemar_test, as `compare` uses them).

This answers "is the win of a five-seed vote a property of the model or of the five seeds" (docs/students.md).
"""

from __future__ import annotations

import itertools
import json
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch
import typer

from stages import paths
from stages.compare import fit_on_gold, gold_train, scored_splits, tfidf_features
from stages.data.tasks import get_task
from stages.models import alternatives
from stages.models.registry import load_predictor, student_arch
from stages.models.static_model import embeddings_dir
from stages.params import load_params
from stages.report.statistics import majority_vote, mcnemar_test, one_sample_t_test
from stages.student import train_bag_student

SIGNIFICANCE = 0.05


def _seeds(text: str) -> list[int]:
    out = []
    for part in text.split(","):
        low, _, high = part.partition("-")
        out += list(range(int(low), int(high or low) + 1))
    return out


def _transfer_set(labeled: Path, share: float, folder: Path) -> tuple[Path, dict]:
    """The labelled transfer set with every original and `share` of the augmented rows (all of them: the file
    itself); its path and row counts."""
    originals = pq.read_table(labeled, columns=["is_original"])["is_original"].to_numpy(zero_copy_only=False)
    augmented = np.flatnonzero(~originals)
    kept = np.random.default_rng(0).choice(augmented, int(round(share * len(augmented))), replace=False)
    counts = {"originals": int(originals.sum()), "augmented": len(kept)}
    if len(kept) == len(augmented):
        return labeled, counts
    path = folder / "transfer.parquet"
    pq.write_table(pq.read_table(labeled).take(np.sort(np.concatenate([np.flatnonzero(originals), kept]))), path)
    return path, counts


def main(task: str = typer.Option("rt", help="Task whose splits, transfer set and inputs to use."),
         arch: str = typer.Option("ngram", help="ngram | static."),
         seeds: str = typer.Option("1-10", help="Seeds, e.g. 1-10 or 1,2,3."),
         k: int = typer.Option(5, help="Seeds per vote (params.yaml's default is 5)."),
         set_: str = typer.Option("{}", "--set", help="JSON overrides of the arch's knobs (params.yaml `ngram:`/`static:`)."),
         distill_set: str = typer.Option("{}", "--distill-set", help="JSON overrides of params.yaml `distill:`."),
         table: str = typer.Option("teacher", help="static only: teacher (the fine-tuned teacher's table, as the "
                                                   "student stage) | pretrained (inputs/<task>/static/base/)."),
         against: str = typer.Option("tfidf-lr", help="tfidf-lr | static-lr (the pretrained table, as compare)."),
         augmented_share: float = typer.Option(1.0, help="Share of the transfer set's augmented rows kept (drawn "
                                                         "with seed 0); the originals are always kept."),
         saved: Path = typer.Option(None, help="Score the trained students in SAVED/seed-<n>/ (any arch) instead of "
                                               "training bag students."),
         params: Path = typer.Option(Path("params.yaml"))) -> None:
    p, spec = load_params(params), get_task(task)
    seed_list = _seeds(seeds)
    if not 1 <= k <= len(seed_list):
        raise typer.BadParameter(f"--k {k}: must be between 1 and the {len(seed_list)} seeds given")
    if table not in ("teacher", "pretrained") or (table == "pretrained" and arch != "static"):
        raise typer.BadParameter(f"--table {table}: teacher, or pretrained with --arch static")
    if against not in ("tfidf-lr", "static-lr"):
        raise typer.BadParameter(f"--against {against}: tfidf-lr or static-lr")
    if not 0 <= augmented_share <= 1:
        raise typer.BadParameter(f"--augmented-share {augmented_share}: must be between 0 and 1")
    knobs = getattr(p, arch).model_copy(update=json.loads(set_))
    distill = p.distill.model_copy(update=json.loads(distill_set))
    raw = paths.raw_dir(task)
    splits = scored_splits(spec, raw)
    train = gold_train(spec, raw)
    static_inputs = paths.inputs_dir(task, "static")
    features = (alternatives.StaticFeatures(str(embeddings_dir(static_inputs, teacher=False)), spec.is_pair)
                if against == "static-lr" else tfidf_features(spec, p.compare))
    fitted = fit_on_gold(features, train, p.compare)
    reference = {s: fitted.predict_proba(split.texts_a, split.texts_b, 512).argmax(-1) for s, split in splits.items()}
    inputs = embeddings_dir(static_inputs, teacher=False) if table == "pretrained" else paths.inputs_dir(task, arch)
    proba = {s: [] for s in splits}
    start = time.perf_counter()

    def score(student) -> None:
        for s, split in splits.items():
            proba[s].append(student.predict_proba(split.texts_a, split.texts_b, 512))

    rows, archs = None, [arch]
    if saved is not None:
        missing = [str(saved / f"seed-{seed}") for seed in seed_list if not (saved / f"seed-{seed}").is_dir()]
        if missing:
            raise typer.BadParameter(f"--saved {saved}: no student folder {', '.join(missing)}")
        archs = sorted({student_arch(saved / f"seed-{seed}") for seed in seed_list})
        for seed in seed_list:
            score(load_predictor(saved / f"seed-{seed}"))
    else:
        with tempfile.TemporaryDirectory() as kept:
            transfer, rows = _transfer_set(paths.labeled_file(task), augmented_share, Path(kept))
            for seed in seed_list:
                with tempfile.TemporaryDirectory() as tmp:
                    train_bag_student(spec, arch, transfer, raw, inputs, Path(tmp) / "m",
                                      knobs=knobs, distill=distill, device=torch.device("cpu"), seed=seed,
                                      use_teacher_logits=True,
                                      features_cache=(paths.cache_dir("ngram-features") / task
                                                      if arch == "ngram" else None))
                    score(load_predictor(Path(tmp) / "m"))

    out = {"task": task, "arch": ", ".join(archs), "knobs": json.loads(set_), "distill": json.loads(distill_set),
           "table": table,
           "against": against, "saved": str(saved) if saved else None, "augmented_share": augmented_share,
           "transfer_rows": rows, "seeds": seed_list, "k": k,
           "train_seconds": round(time.perf_counter() - start, 1), "splits": {}}
    for s, split in splits.items():
        gold = split.labels
        scores = [100 * float((pr.argmax(-1) == gold).mean()) for pr in proba[s]]
        base = 100 * float((reference[s] == gold).mean())
        votes = [mcnemar_test(gold, majority_vote([proba[s][i] for i in subset]), reference[s])["p_value"]
                 for subset in itertools.combinations(range(len(seed_list)), k)]
        out["splits"][s] = {
            "scores": [round(x, 2) for x in scores], "mean": round(statistics.fmean(scores), 2),
            "sd": round(statistics.stdev(scores), 2) if len(scores) > 1 else 0.0, against.replace("-", "_"): round(base, 2),
            "one_sample_t_p": one_sample_t_test([x / 100 for x in scores], base / 100)["p_value"],
            "vote_of_all": mcnemar_test(gold, majority_vote(proba[s]), reference[s]),
            f"votes_of_{k}": {"count": len(votes), "passing": sum(v < SIGNIFICANCE for v in votes),
                              "median_p": statistics.median(votes), "min_p": min(votes), "max_p": max(votes)}}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    typer.run(main)
