"""What a practitioner fits before distilling anything: scikit-learn logistic regressions on the gold train split.

- TF-IDF + LR: word n-grams and character n-grams (within word boundaries) weighted by tf-idf, one
  LogisticRegression (L2, lbfgs: deterministic, no seed).
- static + LR: static token embeddings made by Model2Vec's method from the pretrained encoder the teacher
  starts from, not from the fine-tuned teacher (a vocabulary × dimensions matrix, as
  `embeddings.npy` or in Model2Vec's `model.safetensors` under `embeddings`, beside the `tokenizer.json` it was
  made with), mean-pooled over a sentence's tokens, then the same LogisticRegression.

A pair task gets the two sentences' features and their element-wise product side by side (static: [u, v, u⊙v,
|u−v|], as the siamese student does). Fitted models are plain pickles (joblib) of a scikit-learn Pipeline: what
would ship, and what `compare` loads in a fresh process to measure peak memory. No PyTorch here.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from scipy import sparse
from sklearn.base import BaseEstimator, TransformerMixin

from stages.errors import StageError

STATIC_VECTORS = ("embeddings.npy", "model.safetensors")  # the static student's inputs, or Model2Vec's format
STATIC_TOKENIZER = "tokenizer.json"


def _pairs(texts_a: list[str], texts_b: list[str] | None) -> list:
    return list(texts_a) if texts_b is None else list(zip(texts_a, texts_b))


class TfidfFeatures(BaseEstimator, TransformerMixin):
    """Word and character n-gram tf-idf of a sentence; of a pair, [a, b, a⊙b] (the product marks shared n-grams)."""

    def __init__(self, word_ngrams=(1, 2), char_ngrams=(2, 5), min_df: int = 1, pair: bool = False):
        self.word_ngrams, self.char_ngrams, self.min_df, self.pair = word_ngrams, char_ngrams, min_df, pair

    def fit(self, rows, y=None):
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.pipeline import FeatureUnion

        self.union_ = FeatureUnion([
            ("word", TfidfVectorizer(ngram_range=tuple(self.word_ngrams), min_df=self.min_df, sublinear_tf=True,
                                     dtype=np.float32)),
            ("char", TfidfVectorizer(analyzer="char_wb", ngram_range=tuple(self.char_ngrams), min_df=self.min_df,
                                     sublinear_tf=True, dtype=np.float32)),
        ])
        self.union_.fit([t for row in rows for t in row] if self.pair else rows)
        return self

    def transform(self, rows):
        if not self.pair:
            return self.union_.transform(rows)
        a = self.union_.transform([row[0] for row in rows])
        b = self.union_.transform([row[1] for row in rows])
        return sparse.hstack([a, b, a.multiply(b)]).tocsr()


class StaticFeatures(BaseEstimator, TransformerMixin):
    """Mean of a sentence's static token vectors (zeros for a sentence without tokens); pairs [u, v, u⊙v, |u−v|]."""

    def __init__(self, static_dir: str, pair: bool = False):
        self.static_dir, self.pair = static_dir, pair

    def fit(self, rows, y=None):
        self.tokenizer_, self.vectors_ = load_static(Path(self.static_dir))
        return self

    def _mean(self, texts: list[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.vectors_.shape[1]), dtype=np.float32)
        for i, encoding in enumerate(self.tokenizer_.encode_batch(list(texts), add_special_tokens=False)):
            ids = [t for t in encoding.ids if t < len(self.vectors_)]
            if ids:
                out[i] = self.vectors_[ids].mean(axis=0)
        return out

    def transform(self, rows):
        if not self.pair:
            return self._mean(rows)
        u, v = self._mean([row[0] for row in rows]), self._mean([row[1] for row in rows])
        return np.hstack([u, v, u * v, np.abs(u - v)])


def load_static(static_dir: Path):
    """(tokenizers.Tokenizer, float32 matrix) of a static-embeddings directory; what is missing is named."""
    from tokenizers import Tokenizer

    static_dir = Path(static_dir)
    if not static_dir.is_dir():
        raise StageError(f"static embeddings not found at {static_dir} (the inputs stage writes them when archs lists static)")
    vectors = next((static_dir / name for name in STATIC_VECTORS if (static_dir / name).is_file()), None)
    missing = ([] if (static_dir / STATIC_TOKENIZER).is_file() else [f"{STATIC_TOKENIZER} (the teacher vocabulary)"]) + (
        [] if vectors else [f"{' or '.join(STATIC_VECTORS)} (the vectors)"])
    if missing:
        raise StageError(f"static embeddings at {static_dir} lack {' and '.join(missing)}; rerun the stage that "
                         "writes them")
    try:
        if vectors.suffix == ".npy":
            matrix = np.load(vectors)
        else:
            from safetensors.numpy import load_file

            matrix = load_file(str(vectors)).get("embeddings")
        tokenizer = Tokenizer.from_file(str(static_dir / STATIC_TOKENIZER))
    except Exception as e:  # numpy, safetensors and tokenizers raise their own types for corrupt files
        raise StageError(f"static embeddings at {static_dir} are not readable ({str(e).splitlines()[0]})") from None
    if matrix is None or matrix.ndim != 2:
        raise StageError(f"{vectors} holds no 2-d embeddings matrix")
    return tokenizer, matrix.astype(np.float32)


class SklearnClassifier:
    """A fitted Pipeline behind the predictor interface every compared model has: texts in, probabilities out."""

    runtime = "sklearn"

    def __init__(self, pipeline):
        self.pipeline = pipeline

    def predict_proba(self, texts_a: list[str], texts_b: list[str] | None = None, batch_size: int = 512) -> np.ndarray:
        rows = _pairs(texts_a, texts_b)
        return np.concatenate([self.pipeline.predict_proba(rows[i:i + batch_size])
                               for i in range(0, len(rows), batch_size)]) if rows else np.zeros((0, 0))


def fit_logistic(features: TransformerMixin, texts_a: list[str], texts_b: list[str] | None, labels: np.ndarray, *,
                 c: float, max_iter: int) -> SklearnClassifier:
    """features → LogisticRegression(C=c), fitted on the gold labels; deterministic (lbfgs, no random state)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline

    pipeline = Pipeline([("features", features), ("lr", LogisticRegression(C=c, max_iter=max_iter))])
    pipeline.fit(_pairs(texts_a, texts_b), labels)
    return SklearnClassifier(pipeline)


def save_sklearn(model: SklearnClassifier, path: Path) -> None:
    import joblib

    joblib.dump(model.pipeline, path)


def load_sklearn(path: str) -> SklearnClassifier:
    import joblib

    return SklearnClassifier(joblib.load(path))
