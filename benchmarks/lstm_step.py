"""The issue's micro-benchmark: one training step of a BiLSTM of the student's shape alone, packed
mixed-length batches against batches of one length with no packing.

    python benchmarks/lstm_step.py --task rt [--threads 2] [--steps 200]

Random inputs (no embeddings, vocabulary or data loading), the student's shape from params.yaml (input
2 x 50-d for the multichannel GloVe student, hidden, FC), MSE on two logits, Adadelta, the paper's batch.
Each batch's lengths are drawn from the task's real token lengths (data/labeled/<task>.parquet through the
student's tokenizer, capped at student.max_length): the packed step draws a length per row and packs,
the dense step draws one length for the whole batch. The ratio is an upper bound for what exact-length
batching can give a full training step, whose other work (embeddings, optimizer on them) is the same on
both paths; benchmarks/student_throughput.py measures the full step and the LSTM calls alone.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np
import torch
import typer
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from stages import paths
from stages.errors import StageError
from stages.params import load_params
from stages.student import prepare_data
from stages.data.tasks import get_task

WARMUP = 20


class _Shape(nn.Module):
    def __init__(self, inputs: int, hidden: int, fc: int):
        super().__init__()
        self.lstm = nn.LSTM(inputs, hidden, batch_first=True, bidirectional=True)
        self.head = nn.Sequential(nn.Linear(2 * hidden, fc), nn.ReLU(), nn.Linear(fc, 2))

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None) -> torch.Tensor:
        source = x if lengths is None else pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False)
        _, (h_n, _) = self.lstm(source)
        return self.head(torch.cat([h_n[0], h_n[1]], dim=-1))


def _rate(packed: bool, lengths: np.ndarray, inputs: int, hidden: int, fc: int, batch: int, steps: int,
          seed: int) -> float:
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = _Shape(inputs, hidden, fc)
    optimizer = torch.optim.Adadelta(model.parameters(), lr=1.0, rho=0.95, foreach=True)
    target = torch.randn(batch, 2)
    elapsed = 0.0
    for step in range(WARMUP + steps):
        rows = rng.choice(lengths, batch) if packed else np.full(batch, rng.choice(lengths))
        x = torch.randn(batch, int(rows.max()), inputs)
        start = time.perf_counter()
        loss = ((model(x, torch.from_numpy(rows) if packed else None) - target) ** 2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        if step >= WARMUP:
            elapsed += time.perf_counter() - start
    return steps * batch / elapsed


def main(task: str = typer.Option("rt", help="Task whose token lengths the batches draw from."),
         threads: int = typer.Option(2, help="CPU threads."),
         steps: int = typer.Option(200, help="Timed training steps per path (after 20 warm-up steps)."),
         params: Path = typer.Option(Path("params.yaml"), help="Parameter file.")) -> None:
    p, t = load_params(params), get_task(task)
    torch.set_num_threads(threads)
    data = prepare_data(t, paths.labeled_file(t.name), paths.raw_dir(t.name), p.student, seed=p.seed,
                        use_teacher_logits=True)
    lengths = data.train.a.steps
    inputs = data.config["emb_dim"] * (2 if p.student.embedding_mode == "multichannel" else 1)
    batch = p.distill.batch_size or t.student_batch_size
    shape = dict(inputs=inputs, hidden=p.student.hidden, fc=p.student.fc, batch=batch, steps=steps, seed=p.seed)
    packed = _rate(True, lengths, **shape)
    dense = _rate(False, lengths, **shape)
    print(f"task {t.name}, mean length {lengths.mean():.1f}, input {inputs}, hidden {p.student.hidden}, "
          f"batch {batch}, {threads} thread(s): packed {packed:,.0f} rows/s, one length per batch "
          f"{dense:,.0f} rows/s, {dense / packed:.2f}x")


if __name__ == "__main__":
    try:
        typer.run(main)
    except StageError as e:  # missing data or params: one line, not a traceback
        sys.exit(f"error: {e}")
