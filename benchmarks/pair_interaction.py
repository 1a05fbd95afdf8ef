"""Does a pair student that reads both sentences together take the teacher's knowledge? (MRPC, issue 28's lever.)

Every pair student of the pipeline encodes each sentence alone and compares the two vectors (the siamese BiLSTM,
the static head, the n-gram model's [x_a, x_b, x_a * x_b]); benchmarks/pair_alignment.py showed that on MRPC the
teacher's logits never beat the gold labels for such a student. This trains the student that is left: an ESIM-style
interaction model (Chen et al. 2017, "Enhanced LSTM for Natural Language Inference"), end to end, with its word
pieces' embeddings initialised from a static table (Model2Vec's method, `inputs@<task>-static`) and trained:

    pieces -> embeddings -> BiLSTM (each sentence) -> soft alignment: each piece attends over the other sentence
    -> [h, aligned, h - aligned, h * aligned] -> Linear + ReLU -> BiLSTM (composition) -> mean and max over pieces
    -> [v_a, v_b] -> dropout -> Linear + tanh -> dropout -> Linear -> logits

two ways over `--seeds`, from the same initial weights per seed:

- hard-label: cross-entropy on the gold labels of the training split alone (what the `baseline` stage does);
- distilled: the labelled transfer set (data/labeled/<task>.parquet, the teacher's logits; MSE, with the gold labels
  of the originals mixed in at `--alpha`);

and prints, as JSON, each one's dev accuracy (the best epoch, as the pipeline's students keep it, and the best of
the first `--distilled-epochs` epochs, so hard-label and distilled are also compared on the same number of dev
checks; mean, sd, seeds), the paired t of distilled against hard-label, against static + LR (compare's logistic
regression on the same table) the one-sample t of the seeds and the exact McNemar test of their majority vote (as
`compare` tests a student against a deterministic alternative), the McNemar test of the distilled vote against the
hard-label vote, and the last model's pairs/s at batch 512 on `--threads` (PyTorch, dev pairs; a rough figure, not
compare's timer).

    python benchmarks/pair_interaction.py --task mrpc --table models/inputs/mrpc/static/base --seeds 1,2,3

Run it in a workspace whose pipeline has run label@<task> and inputs@<task>-static (the table: the pretrained
encoder's, base/, or the teacher's, models/inputs/<task>/static/).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import typer
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from pair_alignment import pair_workspace  # this folder's sibling (the script's own folder is on sys.path)
from stages.models.static_model import Pieces, load_embeddings
from stages.models.student_model import distill_loss
from stages.report.statistics import describe, majority_vote, mcnemar_test, one_sample_t_test, paired_t_test


class Interaction(nn.Module):
    """The ESIM-style model of the module docstring; id `rows` (one past the table) is padding."""

    def __init__(self, table: np.ndarray, hidden: int, dropout: float, num_labels: int):
        super().__init__()
        rows, dim = table.shape
        weights = torch.cat([torch.from_numpy(table), torch.zeros(1, dim)])
        self.embedding = nn.Embedding.from_pretrained(weights, freeze=False, padding_idx=rows)
        self.encoder = nn.LSTM(dim, hidden, batch_first=True, bidirectional=True)
        self.project = nn.Sequential(nn.Linear(8 * hidden, hidden), nn.ReLU())
        self.composer = nn.LSTM(hidden, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Dropout(dropout), nn.Linear(8 * hidden, hidden), nn.Tanh(), nn.Dropout(dropout),
                                  nn.Linear(hidden, num_labels))

    @staticmethod
    def _run(lstm: nn.LSTM, x: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        packed = pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        return pad_packed_sequence(lstm(packed)[0], batch_first=True, total_length=x.shape[1])[0]

    def forward(self, a: torch.Tensor, len_a: torch.Tensor, b: torch.Tensor, len_b: torch.Tensor) -> torch.Tensor:
        mask_a = torch.arange(a.shape[1])[None] < len_a[:, None]
        mask_b = torch.arange(b.shape[1])[None] < len_b[:, None]
        h_a, h_b = self._run(self.encoder, self.embedding(a), len_a), self._run(self.encoder, self.embedding(b), len_b)
        scores = h_a @ h_b.transpose(1, 2)  # (batch, La, Lb)
        aligned_a = scores.masked_fill(~mask_b[:, None, :], -1e9).softmax(2) @ h_b
        aligned_b = scores.masked_fill(~mask_a[:, :, None], -1e9).softmax(1).transpose(1, 2) @ h_a
        pooled = []
        for h, aligned, mask, lengths in ((h_a, aligned_a, mask_a, len_a), (h_b, aligned_b, mask_b, len_b)):
            m = self.project(torch.cat([h, aligned, h - aligned, h * aligned], -1))
            v = self._run(self.composer, m, lengths)
            keep = mask[..., None]
            pooled += [(v * keep).sum(1) / lengths[:, None], v.masked_fill(~keep, -1e9).max(1).values]
        return self.head(torch.cat(pooled, -1))


class Encoded:
    """A split's pairs as padded piece ids (pad = `rows`), at least one piece a sentence."""

    def __init__(self, pieces: Pieces, texts_a: list[str], texts_b: list[str]):
        self.a, self.len_a = self._pad(pieces, texts_a)
        self.b, self.len_b = self._pad(pieces, texts_b)

    @staticmethod
    def _pad(pieces: Pieces, texts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        indptr, indices, _ = pieces.bags(texts)
        counts = np.diff(indptr)
        lengths = np.maximum(counts, 1)
        ids = np.full((len(lengths), int(lengths.max())), pieces.rows, np.int64)
        ids[np.arange(ids.shape[1])[None, :] < counts[:, None]] = indices  # row-major: each row's pieces in order
        return torch.from_numpy(ids), torch.from_numpy(lengths)

    def batch(self, rows: torch.Tensor) -> tuple[torch.Tensor, ...]:
        len_a, len_b = self.len_a[rows], self.len_b[rows]
        return self.a[rows, :int(len_a.max())], len_a, self.b[rows, :int(len_b.max())], len_b

    def __len__(self) -> int:
        return len(self.len_a)


def predict(model: Interaction, data: Encoded, batch_size: int = 512) -> np.ndarray:
    model.eval()
    with torch.no_grad():
        return torch.cat([model(*data.batch(rows)) for rows in torch.arange(len(data)).split(batch_size)]).numpy()


def train(table: np.ndarray, data: Encoded, logits: np.ndarray | None, gold: np.ndarray, dev: Encoded,
          y_dev: np.ndarray, *, alpha: float, seed: int, epochs: int, batch_size: int, hidden: int, lr: float,
          dropout: float) -> tuple[list[float], np.ndarray, Interaction]:
    """(dev accuracy per epoch, the best epoch's dev probabilities, the model at the last epoch). logits: the
    teacher's (distilled: MSE, plus alpha times the cross-entropy of the rows with a gold label) or None
    (hard-label)."""
    torch.manual_seed(seed)
    model = Interaction(table, hidden, dropout, int(gold.max()) + 1)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    targets, gold_t = (torch.from_numpy(logits) if logits is not None else None), torch.from_numpy(gold)
    curve, best = [], None
    for _ in range(epochs):
        model.train()
        for rows in torch.randperm(len(data)).split(batch_size):
            out = model(*data.batch(rows))
            loss = (distill_loss(out, None, gold_t[rows], 1.0) if targets is None  # hard-label: cross-entropy alone
                    else distill_loss(out, targets[rows], gold_t[rows], alpha))
            optimizer.zero_grad()
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            optimizer.step()
        probabilities = torch.from_numpy(predict(model, dev)).softmax(-1).numpy()
        curve.append(round(100 * float((probabilities.argmax(1) == y_dev).mean()), 2))
        if curve[-1] == max(curve):
            best = probabilities
    return curve, best, model


def main(task: str = typer.Option("mrpc", help="A pair task whose label and inputs@<task>-static stages ran."),
         table: Path = typer.Option(Path("models/inputs/mrpc/static/base"), help="The static table's directory."),
         seeds: str = typer.Option("1,2,3", help="Comma-separated seeds."),
         hard_epochs: int = typer.Option(12, help="Hard-label epochs over the gold pairs (the best dev epoch is kept)."),
         distilled_epochs: int = typer.Option(3, help="Distilled epochs over the transfer set."),
         alpha: float = typer.Option(0.5, help="Distilled: weight of the originals' gold cross-entropy."),
         batch_size: int = typer.Option(64, help="Pairs per step."),
         hidden: int = typer.Option(128, help="LSTM and projection width."),
         lr: float = typer.Option(1e-3, help="Adam learning rate."),
         dropout: float = typer.Option(0.2, help="Dropout in the head."),
         max_length: int = typer.Option(64, help="Word pieces read per sentence."),
         kinds: str = typer.Option("hard-label,distilled", help="Which of hard-label, distilled to train."),
         threads: int = typer.Option(2, help="torch threads."),
         params: Path = typer.Option(Path("params.yaml"), help="Its compare: section (static + LR).")) -> None:
    torch.set_num_threads(threads)
    start = time.perf_counter()
    _, dev, gold_split, labelled, reference_votes = pair_workspace(task, table, params)
    vectors = load_embeddings(table)
    pieces = Pieces(table / "tokenizer.json", max_length, len(vectors))
    data = {"hard-label": (Encoded(pieces, gold_split.texts_a, gold_split.texts_b), None,
                           gold_split.labels.astype(np.int64)),
            "distilled": (Encoded(pieces, labelled["text_a"].tolist(), labelled["text_b"].tolist()),
                          np.stack(labelled["logits"].to_numpy()).astype(np.float32),
                          np.where(labelled["is_original"], labelled["label"], -1).astype(np.int64))}
    dev_data = Encoded(pieces, dev.texts_a, dev.texts_b)
    reference = 100 * float((reference_votes == dev.labels).mean())
    result = {"task": task, "table": str(table), "transfer_rows": len(labelled), "gold_rows": len(gold_split.labels),
              "static_lr_dev": round(reference, 2),
              "settings": {"alpha": alpha, "batch_size": batch_size, "hidden": hidden, "lr": lr, "dropout": dropout,
                           "hard_epochs": hard_epochs, "distilled_epochs": distilled_epochs, "max_length": max_length}}
    seed_list, scores, votes, last = [int(s) for s in seeds.split(",")], {}, {}, None
    for kind in kinds.split(","):
        encoded, targets, gold = data[kind]
        epochs = hard_epochs if kind == "hard-label" else distilled_epochs
        curves, best_probabilities, began = {}, [], time.perf_counter()
        for seed in seed_list:
            curve, probabilities, last = train(vectors, encoded, targets, gold, dev_data, dev.labels, alpha=alpha,
                                               seed=seed, epochs=epochs, batch_size=batch_size, hidden=hidden, lr=lr,
                                               dropout=dropout)
            curves[str(seed)] = curve
            best_probabilities.append(probabilities)
            print(f"{kind} seed {seed}: best {max(curve):.2f}, per epoch {curve}", flush=True)
        scores[kind] = [max(curve) for curve in curves.values()]
        early = [max(curve[:distilled_epochs]) for curve in curves.values()]
        votes[kind] = majority_vote(best_probabilities)
        result[kind] = {**{k: v for k, v in describe(scores[kind]).items() if k != "ci95"},
                        "seeds": dict(zip(map(str, seed_list), scores[kind])), "per_epoch": curves,
                        f"best_of_first_{distilled_epochs}_epochs": describe(early)["mean"],
                        "versus_static_lr": one_sample_t_test(scores[kind], reference),
                        "vote_mcnemar_versus_static_lr": mcnemar_test(dev.labels, votes[kind], reference_votes),
                        "train_seconds_per_seed": round((time.perf_counter() - began) / len(seed_list), 1)}
    if len(scores) == 2 and len(seed_list) > 1:
        result["distilled versus hard-label"] = {
            "paired_t": paired_t_test(scores["distilled"], scores["hard-label"]),
            "vote_mcnemar": mcnemar_test(dev.labels, votes["distilled"], votes["hard-label"])}
    if last is not None:
        began = time.perf_counter()
        for _ in range(3):
            predict(last, dev_data, 512)
        result["pairs_per_s_batch_512_pytorch"] = round(3 * len(dev_data) / (time.perf_counter() - began), 1)
    result["seconds"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    typer.run(main)
