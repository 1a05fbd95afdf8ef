"""The CNN student the paper leaves for future work: Kim (2014)'s sentence CNN in place of the BiLSTM.

Embeddings (the same four modes) -> one 1-d convolution per filter width (3, 4, 5; 100 maps each) -> ReLU ->
max over time -> the BiLSTM student's head (Linear -> ReLU -> dropout -> Linear). Pairs: the same CNN encodes
both sentences (siamese) and the head sees [h1, h2, h1*h2, |h1-h2|], exactly as for the BiLSTM. Pure PyTorch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from stages.models.student_model import StudentClassifier


class CNNClassifier(StudentClassifier):
    def __init__(self, vocab_size: int, num_labels: int, *, emb_dim: int, fc: int = 200, dropout: float = 0.1,
                 pair: bool = False, embedding_mode: str = "multichannel", pretrained: torch.Tensor | None = None,
                 widths: tuple[int, ...] = (3, 4, 5), maps: int = 100):
        super().__init__()
        channels = self._embeddings(vocab_size, emb_dim, pair, embedding_mode, pretrained)
        self.widths = tuple(widths)
        self.convs = nn.ModuleList(nn.Conv1d(channels, maps, width) for width in self.widths)
        self._head(maps * len(self.widths), fc, dropout, num_labels)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        """(batch, time) right-padded ids -> (batch, maps * widths): each map's maximum over the windows that
        start inside the text (at least one: a text shorter than a filter fills its first window with zero
        vectors), so a row gives the same features in any batch. lengths None: every row fills the width."""
        if lengths is None:
            lengths = torch.ones_like(ids[:, 0]) * ids.shape[1]
        lengths = lengths.to(ids.device).clamp(min=1)
        x = F.pad(self.embed(ids).transpose(1, 2), (0, max(self.widths) - 1))  # (batch, channels, time + pad)
        pooled = []
        for conv, width in zip(self.convs, self.widths):
            h = F.relu(conv(x))  # (batch, maps, windows), all >= 0
            inside = torch.arange(h.shape[2], device=h.device)[None, :] < (lengths - width + 1).clamp(min=1)[:, None]
            pooled.append((h * inside[:, None, :]).amax(dim=2))  # outside windows read 0: never above the max
        return torch.cat(pooled, dim=-1)

    def encode_dense(self, ids: torch.Tensor) -> torch.Tensor:
        return self.encode(ids)
