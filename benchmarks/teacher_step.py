"""What each choice of the teacher's training loop costs on this machine, side by side in one process.

    python benchmarks/teacher_step.py --task rt [--steps 12] [--rounds 3] [--threads 0] [--eval-rows 0]

Reads data/raw/<task>/ (run `dvc repro download@<task>` first) and the packaged teacher (teacher.model), and
times training steps (forward, backward, AdamW step) of the real model on batches of teacher.batch_size rows
built each way below, interleaved round by round (A B C ... A B C ...), so that a shared machine's load hits
every variant alike. Each round draws the same number of batches at random from each variant's whole epoch
(so a length-grouped epoch's long and short batches are sampled in proportion); variants of one order get the
same batches. Then one pass over the dev
split, in file order against sorted by length.

Training variants (each is the previous one plus one change):
- `max-length fp32`: every batch padded to teacher.max_length, random order (the naive loop);
- `dynamic fp32`: padded to the batch's longest row, random order;
- `grouped fp32`: batches of similar lengths (transformers' LengthGroupedSampler, as the teacher stage batches);
- `grouped fp32 fused`: the same with the fused AdamW kernel: the teacher stage's loop in fp32 (its optim);
- `grouped bf16`, `grouped bf16 fused`: under torch.autocast(bfloat16); the fused one is the teacher stage's loop
  under teacher.precision=bf16, so bf16's gain in the stage is `grouped bf16 fused` over `grouped fp32 fused`.

Prints JSON: rows/s per variant (median over rounds), the ratio to the previous variant and to the naive loop
(median of the per-round ratios), and the epoch time each rate implies.
"""

from __future__ import annotations

import contextlib
import copy
import json
import time
from pathlib import Path

import numpy as np
import torch
import typer

from stages import paths
from stages.data.io import RAW_SCHEMA, read_parquet
from stages.data.tasks import get_task
from stages.models.precision import native_bf16
from stages.models.teacher_model import encode_pairs, load_for_classification, resolve_model
from stages.params import load_params

VARIANTS = {  # name: (padding, order, precision, fused AdamW)
    "max-length fp32": ("max_length", "random", "fp32", False),
    "dynamic fp32": ("longest", "random", "fp32", False),
    "grouped fp32": ("longest", "grouped", "fp32", False),
    "grouped fp32 fused": ("longest", "grouped", "fp32", True),
    "grouped bf16": ("longest", "grouped", "bf16", False),
    "grouped bf16 fused": ("longest", "grouped", "bf16", True),
}


def _pad(tokenizer, rows: list[dict], padding: str, max_length: int) -> dict:
    return tokenizer.pad(rows, padding=padding, max_length=max_length if padding == "max_length" else None,
                         return_tensors="pt")


def _epoch(lengths: np.ndarray, batch_size: int, order: str, seed: int) -> list[np.ndarray]:
    """One epoch's batches of row indices: a random permutation, or transformers' length-grouped order."""
    if order == "grouped":
        from transformers.trainer_pt_utils import LengthGroupedSampler

        indices = np.array(list(LengthGroupedSampler(batch_size, lengths=lengths.tolist(),
                                                     generator=torch.Generator().manual_seed(seed))))
    else:
        indices = np.random.default_rng(seed).permutation(len(lengths))
    return [indices[i: i + batch_size] for i in range(0, len(indices), batch_size)]


def _autocast(precision: str):
    return torch.autocast("cpu", dtype=torch.bfloat16) if precision == "bf16" else contextlib.nullcontext()


def main(task: str = typer.Option("rt", help="Task whose training and dev splits to use."),
         steps: int = typer.Option(12, help="Training steps per variant per round."),
         rounds: int = typer.Option(3, help="Interleaved rounds; the medians are reported."),
         threads: int = typer.Option(0, help="torch threads; 0 = torch's default (the physical cores)."),
         variants: str = typer.Option(",".join(VARIANTS), help="Comma-separated variants to time."),
         eval_rows: int = typer.Option(0, help="Dev rows for the eval passes (a seeded sample); 0 = all."),
         params: Path = typer.Option(Path("params.yaml"))) -> None:
    if threads:
        torch.set_num_threads(threads)
    p = load_params(params).teacher
    t = get_task(task)
    names = [v.strip() for v in variants.split(",") if v.strip()]
    unknown = [v for v in names if v not in VARIANTS]
    if unknown:
        raise typer.BadParameter(f"unknown variant(s) {unknown}; choose from {list(VARIANTS)}")
    tokenizer, model = load_for_classification(resolve_model(p.model), t.num_labels, t.label_names)
    model.train()

    def encoded(split: str) -> tuple[list[dict], np.ndarray]:
        df = read_parquet(paths.raw_dir(t.name) / f"{split}.parquet", RAW_SCHEMA).to_pandas()
        enc = encode_pairs(tokenizer, df["text_a"].tolist(), df["text_b"].tolist() if t.is_pair else None,
                           p.max_length)
        rows = [{**{k: v[i] for k, v in enc.items()}, "labels": int(df["label"].iloc[i])} for i in range(len(df))]
        return rows, np.array([len(r["input_ids"]) for r in rows])

    train, lengths = encoded("train")
    runners, drawn = {}, {}
    for name in names:
        padding, order, precision, fused = VARIANTS[name]
        if order not in drawn:  # variants of one order train on the same rows, so only their own change differs
            epoch = _epoch(lengths, p.batch_size, order, seed=0)
            drawn[order] = epoch, np.random.default_rng(0).choice(len(epoch), size=(rounds, steps),
                                                                   replace=len(epoch) < rounds * steps)
        epoch, picks = drawn[order]
        batches = [[_pad(tokenizer, [train[i] for i in epoch[j]], padding, p.max_length) for j in row] for row in picks]
        copy_ = copy.deepcopy(model)
        optimizer = torch.optim.AdamW(copy_.parameters(), lr=p.lr, weight_decay=p.weight_decay, fused=fused)
        runners[name] = (copy_, optimizer, precision, batches, [len(epoch[j]) for j in picks[0]])

    def step(model_, optimizer, precision, batch) -> None:
        with _autocast(precision):
            loss = model_(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    for name, (model_, optimizer, precision, batches, _) in runners.items():  # warm-up: kernels, allocator
        step(model_, optimizer, precision, batches[0][0])
    seconds = {name: [] for name in runners}
    rows = {name: [] for name in runners}
    for r in range(rounds):
        for name, (model_, optimizer, precision, batches, _) in runners.items():
            start = time.perf_counter()
            for batch in batches[r]:
                step(model_, optimizer, precision, batch)
            seconds[name].append(time.perf_counter() - start)
            rows[name].append(sum(len(b["input_ids"]) for b in batches[r]))
            print(f"round {r + 1} {name}: {rows[name][-1] / seconds[name][-1]:.1f} rows/s", flush=True)

    rate = {name: [n / s for n, s in zip(rows[name], seconds[name])] for name in runners}
    first, out, previous = names[0], {}, None
    for name in names:
        median = float(np.median(rate[name]))
        out[name] = {
            "rows_per_s": round(median, 1),
            "rows_per_s_per_round": [round(x, 1) for x in rate[name]],
            "vs_previous": None if previous is None else
            round(float(np.median([a / b for a, b in zip(rate[name], rate[previous])])), 3),
            f"vs_{first.replace(' ', '_')}": round(float(np.median([a / b for a, b in zip(rate[name], rate[first])])), 3),
            "epoch_seconds": round(len(train) / median, 1),
            "mean_padded_length": round(float(np.mean([b["input_ids"].shape[1] for r_ in runners[name][3]
                                                       for b in r_])), 1),
        }
        previous = name
    dev = encoded(t.selection_split)[0]
    if eval_rows and eval_rows < len(dev):
        dev = [dev[i] for i in np.sort(np.random.default_rng(0).choice(len(dev), eval_rows, replace=False))]
    evaluation = eval_passes(model, tokenizer, dev, p.max_length, rounds)
    print(json.dumps({"task": t.name, "train_rows": len(train), "batch_size": p.batch_size, "steps": steps,
                      "rounds": rounds, "eval_rows": len(dev), "threads": torch.get_num_threads(),
                      "cpu_capability": torch.backends.cpu.get_cpu_capability(),
                      "native_bf16": native_bf16(torch.device("cpu")),
                      "train": out, "eval": evaluation}, indent=2))


@torch.inference_mode()
def eval_passes(model, tokenizer, rows: list[dict], max_length: int, rounds: int, batch_size: int = 64) -> dict:
    """Seconds of one pass over the dev rows in file order and sorted by length, fp32 and bf16 (interleaved)."""
    model.eval()
    orders = {"file order": list(range(len(rows))),
              "sorted": sorted(range(len(rows)), key=lambda i: len(rows[i]["input_ids"]))}
    variants = {f"{o} {precision}": (o, precision) for precision in ("fp32", "bf16") for o in orders}
    batches = {o: [_pad(tokenizer, [{k: v for k, v in rows[i].items() if k != "labels"} for i in idx[s: s + batch_size]],
                        "longest", max_length) for s in range(0, len(idx), batch_size)]
               for o, idx in orders.items()}
    seconds = {name: [] for name in variants}
    for _ in range(rounds):
        for name, (o, precision) in variants.items():
            start = time.perf_counter()
            with _autocast(precision):
                for batch in batches[o]:
                    model(**batch)
            seconds[name].append(time.perf_counter() - start)
    base = seconds["file order fp32"]
    return {name: {"seconds": round(float(np.median(s)), 2),
                   "vs_file_order_fp32": round(float(np.median([b / x for b, x in zip(base, s)])), 3)}
            for name, s in seconds.items()}


if __name__ == "__main__":
    typer.run(main)
