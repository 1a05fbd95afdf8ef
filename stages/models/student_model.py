"""The student of Tang et al. 2019: a one-layer BiLSTM (siamese for pairs) and the distillation loss.

Pure PyTorch, no file I/O: the `student` and `baseline` stages train it, `evaluate` times it.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.nn.utils.rnn import pack_padded_sequence

from stages.models.vocab import PAD_ID
EMBEDDING_MODES = ("rand", "static", "non-static", "multichannel")  # Kim 2014's names


class StudentClassifier(nn.Module):
    """What every student shares: the embeddings (Kim 2014's four modes), the pair features and the head
    features -> Linear -> ReLU -> dropout -> Linear -> logits. A subclass adds the sentence encoder
    (`encode`), between `_embeddings` and `_head`, so parameters are created (and seeded) in that order.

    `pretrained` (vocab_size, emb_dim) initialises the embeddings; without it they start at U(-0.25, 0.25)
    (Kim 2014), which is also how a saved model is rebuilt before load_state_dict.
    """

    def _embeddings(self, vocab_size: int, emb_dim: int, pair: bool, embedding_mode: str,
                    pretrained: torch.Tensor | None) -> int:
        if embedding_mode not in EMBEDDING_MODES:
            raise ValueError(f"embedding_mode must be one of {EMBEDDING_MODES}, got {embedding_mode!r}")
        if pretrained is not None and tuple(pretrained.shape) != (vocab_size, emb_dim):
            raise ValueError(f"pretrained matrix has shape {tuple(pretrained.shape)}, expected {(vocab_size, emb_dim)}")
        self.pair, self.embedding_mode = pair, embedding_mode
        if pretrained is None:
            pretrained = torch.empty(vocab_size, emb_dim).uniform_(-0.25, 0.25)
            pretrained[PAD_ID] = 0
        pretrained = pretrained.float()
        # The trained channel (every mode but static); static and multichannel also keep a frozen copy.
        self.embedding = nn.Embedding.from_pretrained(pretrained.clone(), freeze=embedding_mode == "static",
                                                      padding_idx=PAD_ID)
        self.static_embedding = (
            nn.Embedding.from_pretrained(pretrained.clone(), freeze=True, padding_idx=PAD_ID)
            if embedding_mode == "multichannel" else None
        )
        return emb_dim * (2 if embedding_mode == "multichannel" else 1)  # the encoder's input size

    def _head(self, encoded: int, fc: int, dropout: float, num_labels: int) -> None:
        self.fc = nn.Linear(encoded * (4 if self.pair else 1), fc)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(fc, num_labels)

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        x = self.embedding(ids)
        if self.static_embedding is not None:
            x = torch.cat([self.static_embedding(ids), x], dim=-1)
        return x

    @staticmethod
    def pair_features(h1: torch.Tensor, h2: torch.Tensor) -> torch.Tensor:
        return torch.cat([h1, h2, h1 * h2, (h1 - h2).abs()], dim=-1)

    def features(self, ids_a: torch.Tensor, len_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                 len_b: torch.Tensor | None = None) -> torch.Tensor:
        """What the classifier head sees: h for single sentences, [h1, h2, h1*h2, |h1-h2|] for pairs."""
        if not self.pair:
            return self.encode(ids_a, len_a)
        if ids_b is None or len_b is None:
            raise ValueError("a pair model needs both sentences")
        return self.pair_features(self.encode(ids_a, len_a), self.encode(ids_b, len_b))

    def forward(self, ids_a: torch.Tensor, len_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                len_b: torch.Tensor | None = None) -> torch.Tensor:
        hidden = F.relu(self.fc(self.features(ids_a, len_a, ids_b, len_b)))
        return self.out(self.dropout(hidden))

    def dense_logits(self, ids_a: torch.Tensor, ids_b: torch.Tensor | None = None) -> torch.Tensor:
        """Logits for rows that all fill the width (no padding): the graph the export stage writes as ONNX."""
        features = self.encode_dense(ids_a)
        if ids_b is not None:
            features = self.pair_features(features, self.encode_dense(ids_b))
        return self.out(F.relu(self.fc(features)))

    def embedding_modules(self) -> list[nn.Embedding]:
        return [m for m in (self.embedding, self.static_embedding) if m is not None]


class BiLSTMClassifier(StudentClassifier):
    """embeddings -> BiLSTM -> [h_fwd, h_bwd] -> the head (Tang et al. 2019); siamese for pairs."""

    def __init__(self, vocab_size: int, num_labels: int, *, emb_dim: int, hidden: int = 150, fc: int = 200,
                 dropout: float = 0.1, pair: bool = False, embedding_mode: str = "multichannel",
                 pretrained: torch.Tensor | None = None):
        super().__init__()
        lstm_in = self._embeddings(vocab_size, emb_dim, pair, embedding_mode, pretrained)
        self.lstm = nn.LSTM(lstm_in, hidden, num_layers=1, batch_first=True, bidirectional=True)
        self._head(2 * hidden, fc, dropout, num_labels)

    def encode(self, ids: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """(batch, time) right-padded ids and their true lengths -> (batch, 2*hidden) final [forward, backward]
        states. Rows that all fill the width (the batches of stages/models/batching.py) take one dense LSTM call;
        rows of mixed lengths are packed, so no final state ever reads a padded step."""
        # An empty text is read as one <pad> step (a zero vector), not rejected by pack_padded_sequence.
        lengths = lengths.detach().to("cpu", torch.int64).clamp(min=1)
        x = self.embed(ids)
        if self.fills_width(ids, lengths):
            _, (h_n, _) = self.lstm(x)
        else:
            _, (h_n, _) = self.lstm(pack_padded_sequence(x, lengths, batch_first=True, enforce_sorted=False))
        return torch.cat([h_n[0], h_n[1]], dim=-1)  # h_n: (2, batch, hidden), in the input order

    @staticmethod
    def fills_width(ids: torch.Tensor, lengths: torch.Tensor) -> bool:
        """Every row is as long as the tensor is wide (lengths on the CPU: no device sync)."""
        return len(lengths) > 0 and int(lengths.clamp(min=1).min()) == ids.shape[1]

    def encode_dense(self, ids: torch.Tensor) -> torch.Tensor:
        _, (h_n, _) = self.lstm(self.embed(ids))
        return torch.cat([h_n[0], h_n[1]], dim=-1)

    def features(self, ids_a: torch.Tensor, len_a: torch.Tensor, ids_b: torch.Tensor | None = None,
                 len_b: torch.Tensor | None = None) -> torch.Tensor:
        if (not self.pair or ids_b is None or len_b is None or self.fills_width(ids_a, len_a)
                or self.fills_width(ids_b, len_b)):
            return super().features(ids_a, len_a, ids_b, len_b)
        # Both sides of mixed lengths: one packed call over both (same weights): half the sequential steps.
        width = max(ids_a.shape[1], ids_b.shape[1])
        ids = torch.cat([F.pad(ids_a, (0, width - ids_a.shape[1]), value=PAD_ID),
                         F.pad(ids_b, (0, width - ids_b.shape[1]), value=PAD_ID)])
        h1, h2 = self.encode(ids, torch.cat([len_a, len_b])).split(ids_a.shape[0])
        return self.pair_features(h1, h2)


def count_parameters(model: StudentClassifier) -> dict[str, int]:
    """All parameters, and those outside the embeddings (the paper's 0.96M counts only the latter)."""
    total = sum(p.numel() for p in model.parameters())
    embeddings = sum(p.numel() for m in model.embedding_modules() for p in m.parameters())
    return {"all": int(total), "without_embeddings": int(total - embeddings)}


def distill_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor | None, labels: torch.Tensor | None,
                 alpha: float, kind: str = "mse", temperature: float = 1.0) -> torch.Tensor:
    """alpha * CE(hard labels) + (1 - alpha) * logit loss, averaged over the batch.

    kind "mse" (the paper): squared L2 distance between teacher and student logit vectors;
    kind "kl": T^2 * KL(softmax(z_t / T) || softmax(z_s / T)) (Hinton et al. 2015).
    Rows labelled -1 (augmented examples, which have only the teacher's logits) are left out of
    the CE term; a batch without any labelled row contributes 0 there.
    """
    zero = student_logits.new_zeros(())
    ce = zero
    if alpha > 0:
        if labels is None:
            raise ValueError("alpha > 0 needs hard labels")
        # Summed then divided by the labelled count (at least 1): no NaN and no host sync when all are -1.
        labelled = (labels >= 0).sum().clamp(min=1)
        ce = F.cross_entropy(student_logits, labels, ignore_index=-1, reduction="sum") / labelled
    soft = zero
    if alpha < 1:
        if teacher_logits is None:
            raise ValueError("alpha < 1 needs teacher logits")
        teacher_logits = teacher_logits.to(student_logits.dtype)
        if kind == "mse":
            soft = (teacher_logits - student_logits).pow(2).sum(-1).mean()
        elif kind == "kl":
            t = temperature
            soft = F.kl_div(F.log_softmax(student_logits / t, -1), F.log_softmax(teacher_logits / t, -1),
                            reduction="batchmean", log_target=True) * t * t
        else:
            raise ValueError(f"loss kind must be 'mse' or 'kl', got {kind!r}")
    return alpha * ce + (1 - alpha) * soft
