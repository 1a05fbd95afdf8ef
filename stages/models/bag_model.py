"""The bag students in PyTorch, for training only (stages/student.py); inference runs in numpy or onnxruntime
(stages/models/ngram_model.py, static_model.py, bag_onnx.py).

- `SparseLinear` (ngram): logits = x @ W + b over a batch of CSR rows (an EmbeddingBag in sum mode with the
  tf-idf values as per-sample weights), W starting at zero; with `hidden` > 0, fastText's shape instead:
  h = ReLU(x @ W + b) (W: columns x hidden, drawn from N(0, 0.1²)) -> dropout -> logits = h @ W1 + b1; W then
  takes sparse gradients (only the batch's n-gram rows), which student.make_optimizer steps with SparseAdam (lazy
  Adam: a row's moments move only when a batch holds its n-gram), so a step costs the batch's rows, not the whole
  columns x hidden table (`sparse_tables`, `Optimizers`).
- `StaticHead` (static): the sentence vectors (mean-pooled frozen embeddings, or the pair features), computed once
  before training, -> Linear -> ReLU -> dropout -> Linear (or one Linear when hidden is 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SparseLinear(nn.Module):
    def __init__(self, columns: int, num_labels: int, hidden: int = 0, dropout: float = 0.0, sparse: bool = False):
        super().__init__()
        self.bag = nn.EmbeddingBag(columns, hidden or num_labels, mode="sum", sparse=sparse)
        if hidden:
            nn.init.normal_(self.bag.weight, std=0.1)
        else:
            nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(hidden or num_labels))
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden, num_labels) if hidden else None

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        x = self.bag(indices, offsets, per_sample_weights=weights) + self.bias
        if self.out is not None:
            x = self.out(self.dropout(F.relu(x)))
        return x

    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """[(W (columns, hidden or labels), b)] and, with a hidden layer, (W1 (hidden, labels), b1), as
        ngram_model.save stores them."""
        out = [(self.bag.weight.detach().cpu().numpy(), self.bias.detach().cpu().numpy())]
        if self.out is not None:
            out.append((self.out.weight.detach().cpu().numpy().T, self.out.bias.detach().cpu().numpy()))
        return out


class Optimizers:
    """Several optimisers stepped as one (no checkpointing: the bag students train in minutes)."""

    def __init__(self, *optimizers: torch.optim.Optimizer):
        self.optimizers = optimizers

    def zero_grad(self, set_to_none: bool = True) -> None:
        for optimizer in self.optimizers:
            optimizer.zero_grad(set_to_none=set_to_none)

    def step(self) -> None:
        for optimizer in self.optimizers:
            optimizer.step()


def sparse_tables(model: nn.Module) -> list[nn.Parameter]:
    """The model's tables that take sparse gradients (student.make_optimizer gives them SparseAdam)."""
    return [m.weight for m in model.modules() if isinstance(m, nn.EmbeddingBag) and m.sparse]


class StaticHead(nn.Module):
    def __init__(self, width: int, num_labels: int, hidden: int, dropout: float):
        super().__init__()
        self.fc = nn.Linear(width, hidden) if hidden else None
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(hidden or width, num_labels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.fc is not None:
            x = self.dropout(F.relu(self.fc(x)))
        return self.out(x)

    def layers(self) -> list[tuple[np.ndarray, np.ndarray]]:
        """The head as (W (in, out), b) pairs for x @ W + b, as static_model.save stores them."""
        linears = [m for m in (self.fc, self.out) if m is not None]
        return [(m.weight.detach().cpu().numpy().T, m.bias.detach().cpu().numpy()) for m in linears]
