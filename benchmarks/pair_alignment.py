"""Would cross-pair alignment features give a pair task's distilled static head a win? (MRPC, issue 28's lever.)

The static student pools each sentence of a pair on its own ([u, v, |u - v|, u * v]), so it never sees which words
of one sentence match which of the other, the evidence a paraphrase turns on. This adds 10 alignment features
computed from the same static table: for each sentence, the mean and the minimum over its word pieces of the best
cosine to any piece of the other sentence, the share of pieces whose best cosine is above 0.9, the Jaccard overlap
of the two sentences' pieces and of their piece bigrams, and the length difference. It trains the static arch's
head (Linear 256 -> ReLU -> dropout 0.1 -> Linear, Adam 1e-3, batch 256, the best dev epoch of `--epochs`) four
ways, over `--seeds`:

- hard-label: gold labels of the training split alone (what the `baseline` stage does), without and with alignment;
- distilled: the labelled transfer set (data/labeled/<task>.parquet, the teacher's logits; MSE, with the gold
  labels of the originals mixed in at `--alpha`), without and with alignment;

and prints, as JSON, each one's dev accuracy (mean, sd, seeds), the paired t of distilled against hard-label on the
same features, and the one-sample t of each against static + LR (compare's logistic regression on the same table).

    python benchmarks/pair_alignment.py --task mrpc --table models/inputs/mrpc/static/base [--originals-only]

Run it in a workspace whose pipeline has run label@<task> and inputs@<task>-static (the table: the pretrained
encoder's, base/, or the teacher's, models/inputs/<task>/static/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch
import torch.nn.functional as F
import typer
from torch import nn

from stages import paths
from stages.compare import fit_on_gold, gold_train, scored_splits
from stages.data.tasks import get_task
from stages.models import alternatives
from stages.models.static_model import Pieces, load_embeddings, pair_features, pool
from stages.params import load_params
from stages.report.statistics import describe, one_sample_t_test, paired_t_test

ALIGNMENT = ["a_best_mean", "b_best_mean", "a_best_min", "b_best_min", "a_share_above_0.9", "b_share_above_0.9",
             "piece_jaccard", "bigram_jaccard", "length_difference", "best_mean_min"]


def alignment(unit: np.ndarray, bag_a: tuple[np.ndarray, ...], bag_b: tuple[np.ndarray, ...]) -> np.ndarray:
    """The 10 ALIGNMENT features of each pair, from the rows of `unit` (the table, each row of length 1) that
    Pieces.bags lists per sentence (zeros where a sentence has no pieces in the table)."""
    (starts_a, pieces_a, _), (starts_b, pieces_b, _) = bag_a, bag_b
    out = np.zeros((len(starts_a) - 1, len(ALIGNMENT)), np.float32)
    for row in range(len(out)):
        a = pieces_a[starts_a[row]:starts_a[row + 1]].tolist()
        b = pieces_b[starts_b[row]:starts_b[row + 1]].tolist()
        if not a or not b:
            continue
        cosine = unit[a] @ unit[b].T
        best_a, best_b = cosine.max(1), cosine.max(0)
        bigrams_a, bigrams_b = set(zip(a, a[1:])), set(zip(b, b[1:]))
        out[row] = [best_a.mean(), best_b.mean(), best_a.min(), best_b.min(), (best_a > 0.9).mean(),
                    (best_b > 0.9).mean(), len(set(a) & set(b)) / len(set(a) | set(b)),
                    len(bigrams_a & bigrams_b) / max(len(bigrams_a | bigrams_b), 1),
                    abs(len(a) - len(b)) / max(len(a), len(b)), min(best_a.mean(), best_b.mean())]
    return out


class Featurizer:
    def __init__(self, table_dir: Path, max_length: int):
        self.table = load_embeddings(table_dir)
        self.unit = self.table / np.maximum(np.linalg.norm(self.table, axis=1, keepdims=True), 1e-6)
        self.pieces = Pieces(table_dir / "tokenizer.json", max_length, len(self.table))
        self.mean = self.scale = None

    def __call__(self, texts_a: list[str], texts_b: list[str]) -> tuple[np.ndarray, np.ndarray]:
        """(pooled pair features, alignment features standardised on the first call's rows); each text is
        tokenized once, its bag feeding both."""
        bag_a, bag_b = self.pieces.bags(texts_a), self.pieces.bags(texts_b)
        pooled = pair_features(pool(self.table, bag_a), pool(self.table, bag_b))
        aligned = alignment(self.unit, bag_a, bag_b)
        if self.mean is None:
            self.mean, self.scale = aligned.mean(0), aligned.std(0) + 1e-6
        return pooled, (aligned - self.mean) / self.scale


def pair_workspace(task: str, table: Path, params: Path) -> tuple:
    """What the pair benchmarks (this one, pair_interaction.py) read from a workspace, checked: (params, the dev
    split, the gold training split, the labelled transfer set, static + LR's dev predictions on `table`)."""
    p, spec = load_params(params), get_task(task)
    if not spec.is_pair:
        raise typer.BadParameter(f"{task} is not a pair task", param_hint="--task")
    raw = paths.raw_dir(task)
    dev, train = scored_splits(spec, raw)[spec.selection_split], gold_train(spec, raw)
    for needed, stage in ((paths.labeled_file(task), f"label@{task}"), (table / "tokenizer.json", f"inputs@{task}-static")):
        if not needed.is_file():
            raise typer.BadParameter(f"{needed} is missing: run {stage} first", param_hint="--task/--table")
    labelled = pd.read_parquet(paths.labeled_file(task), columns=["text_a", "text_b", "is_original", "label", "logits"])
    static_lr = fit_on_gold(alternatives.StaticFeatures(str(table), True), train, p.compare)
    return p, dev, train, labelled, static_lr.predict_proba(dev.texts_a, dev.texts_b, 512).argmax(-1)


def train_head(x: np.ndarray, logits: np.ndarray | None, gold: np.ndarray, x_dev: np.ndarray, y_dev: np.ndarray, *,
               alpha: float, seed: int, epochs: int) -> float:
    """Best dev accuracy over the epochs. logits: the teacher's (distilled: MSE, plus alpha times the cross-entropy
    of the rows with a gold label) or None (hard-label: cross-entropy on gold); gold: labels, -1 = none."""
    distilled = logits is not None
    torch.manual_seed(seed)
    head = nn.Sequential(nn.Linear(x.shape[1], 256), nn.ReLU(), nn.Dropout(0.1), nn.Linear(256, 2))
    optimizer = torch.optim.Adam(head.parameters(), lr=1e-3)
    x, targets, gold = torch.from_numpy(x), torch.from_numpy(logits) if distilled else None, torch.from_numpy(gold)
    x_dev, best = torch.from_numpy(x_dev), 0.0
    for _ in range(epochs):
        head.train()
        for batch in torch.randperm(len(x)).split(256):
            out, labelled = head(x[batch]), gold[batch] >= 0
            if distilled:
                loss = (1 - alpha) * F.mse_loss(out, targets[batch])
                if alpha and labelled.any():
                    loss = loss + alpha * F.cross_entropy(out[labelled], gold[batch][labelled])
            else:
                loss = F.cross_entropy(out, gold[batch])
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        head.eval()
        with torch.no_grad():
            best = max(best, float((head(x_dev).argmax(1).numpy() == y_dev).mean()))
    return best


def main(task: str = typer.Option("mrpc", help="A pair task whose label and inputs@<task>-static stages ran."),
         table: Path = typer.Option(Path("models/inputs/mrpc/static/base"), help="The static table's directory."),
         seeds: str = typer.Option("1,2,3,4,5", help="Comma-separated seeds."),
         epochs: int = typer.Option(20, help="Epochs per head (the best dev epoch is kept)."),
         alpha: float = typer.Option(0.5, help="Distilled: weight of the originals' gold cross-entropy."),
         originals_only: bool = typer.Option(False, help="Distil on the teacher's logits of the training pairs alone "
                                                         "(no augmented pairs): is it the teacher or the transfer set?"),
         threads: int = typer.Option(2, help="torch threads."),
         params: Path = typer.Option(Path("params.yaml"), help="Its compare: (static + LR) and static.max_length.")) -> None:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    p, dev, train, labelled, static_lr_votes = pair_workspace(task, table, params)
    if originals_only:
        labelled = labelled[labelled["is_original"]].reset_index(drop=True)
    featurize = Featurizer(table, p.static.max_length)
    train_pooled, train_aligned = featurize(train.texts_a, train.texts_b)  # fixes the standardisation
    dev_pooled, dev_aligned = featurize(dev.texts_a, dev.texts_b)
    set_pooled, set_aligned = featurize(labelled["text_a"].tolist(), labelled["text_b"].tolist())
    logits = np.stack(labelled["logits"].to_numpy()).astype(np.float32)
    set_gold = np.where(labelled["is_original"], labelled["label"], -1).astype(np.int64)
    reference = 100 * float((static_lr_votes == dev.labels).mean())
    result = {"task": task, "table": str(table), "originals_only": originals_only, "transfer_rows": len(labelled),
              "gold_rows": len(train.labels),
              "static_lr_dev": round(reference, 2), "features_seconds": round(time.perf_counter() - start, 1)}
    seed_list = [int(s) for s in seeds.split(",")]
    # (hard-label rows, distilled rows, dev rows) per feature set
    inputs = {"pooled": (train_pooled, set_pooled, dev_pooled),
              "pooled+alignment": tuple(np.hstack(both) for both in ((train_pooled, train_aligned),
                                                                       (set_pooled, set_aligned), (dev_pooled, dev_aligned)))}
    scores = {}
    for features, (x_train, x_set, x_dev) in inputs.items():
        for kind, x, targets, gold in (("hard-label", x_train, None, train.labels.astype(np.int64)),
                                       ("distilled", x_set, logits, set_gold)):
            scores[f"{kind} {features}"] = [
                100 * train_head(x.astype(np.float32), targets, gold, x_dev.astype(np.float32), dev.labels,
                                 alpha=alpha, seed=seed, epochs=epochs) for seed in seed_list]
    for name, values in scores.items():
        result[name] = {**{k: v for k, v in describe(values).items() if k != "ci95"},
                        "seeds": dict(zip(map(str, seed_list), (round(v, 2) for v in values))),
                        "versus_static_lr": one_sample_t_test(values, reference)}
    for features in inputs:
        result[f"distilled versus hard-label, {features}"] = paired_t_test(scores[f"distilled {features}"],
                                                                          scores[f"hard-label {features}"])
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
