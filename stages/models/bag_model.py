"""The bag students in PyTorch, for training only (stages/student.py); inference runs in numpy or onnxruntime
(stages/models/ngram_model.py, static_model.py, bag_onnx.py).

- `SparseLinear` (ngram): logits = x @ W + b over a batch of CSR rows (an EmbeddingBag in sum mode with the
  tf-idf values as per-sample weights), W starting at zero.
- `StaticHead` (static): the sentence vectors (mean-pooled frozen embeddings, or the pair features), computed once
  before training, -> Linear -> ReLU -> dropout -> Linear (or one Linear when hidden is 0).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn


class SparseLinear(nn.Module):
    def __init__(self, columns: int, num_labels: int):
        super().__init__()
        self.bag = nn.EmbeddingBag(columns, num_labels, mode="sum")
        nn.init.zeros_(self.bag.weight)
        self.bias = nn.Parameter(torch.zeros(num_labels))

    def forward(self, indices: torch.Tensor, offsets: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
        return self.bag(indices, offsets, per_sample_weights=weights) + self.bias

    def layers(self) -> tuple[np.ndarray, np.ndarray]:
        """(W (columns, labels), b), as ngram_model.save stores them."""
        return self.bag.weight.detach().cpu().numpy(), self.bias.detach().cpu().numpy()


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
