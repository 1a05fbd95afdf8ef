"""What every trained student offers for inference, whatever its architecture or backend.

A `Predictor` takes raw texts (or the two texts of sentence pairs) and returns logits or class
probabilities. The input checks (single sentences vs pairs, equal lengths) and the softmax live here once;
a subclass only turns checked texts into logits (`compute_logits`). Loading one from a directory is
`stages.models.registry.load_predictor`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from typing import Sequence

import numpy as np

from stages.errors import StageError

EVAL_BATCH = 512  # sentences per model call when the caller names no batch size


def softmax(logits: np.ndarray) -> np.ndarray:
    """Class probabilities from logits (n, num_labels), row by row."""
    exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return exp / exp.sum(axis=-1, keepdims=True)


class Predictor(ABC):
    """Raw texts in, logits (`predict_logits`) or class probabilities (`predict_proba`) out.

    `config` is the model's config.json: at least task, label_names, num_labels, pair and max_length."""

    config: dict

    @property
    def labels(self) -> list[str]:
        return list(self.config["label_names"])

    @property
    def pair(self) -> bool:
        return bool(self.config["pair"])

    def check_inputs(self, texts_a: Sequence[str], texts_b: Sequence[str] | None) -> None:
        """A StageError unless the texts are what this model reads: single sentences, or pairs of equal count."""
        if self.pair != (texts_b is not None):
            raise StageError(f"the {self.config['task']} student expects "
                             + ("sentence pairs" if self.pair else "single sentences"))
        if texts_b is not None and len(texts_b) != len(texts_a):
            raise StageError(f"{len(texts_a)} first sentences but {len(texts_b)} second ones")

    def predict_logits(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
                       batch_size: int = EVAL_BATCH, **options) -> np.ndarray:
        """Logits (len(texts_a), num_labels), float32, in input order; `options` go to the backend."""
        self.check_inputs(texts_a, texts_b)
        return self.compute_logits(list(texts_a), None if texts_b is None else list(texts_b), batch_size, **options)

    def predict_proba(self, texts_a: Sequence[str], texts_b: Sequence[str] | None = None,
                      batch_size: int = EVAL_BATCH) -> np.ndarray:
        return softmax(self.predict_logits(texts_a, texts_b, batch_size))

    @abstractmethod
    def compute_logits(self, texts_a: list[str], texts_b: list[str] | None, batch_size: int) -> np.ndarray:
        """The backend's part: logits for texts already checked by `check_inputs`."""
