"""`augment` stage: build the transfer set, the training examples plus rule-based perturbations of them.

POS tags come from spaCy: the fine-grained `tag_` of a pipeline with a tagger (English), else the coarse `pos_`
of one with a morphologizer (spaCy's French, Spanish, ... pipelines); the rules themselves live in augment_rules.
Each example's randomness comes from its own stream, derived from (seed, position), so the
output does not depend on batching or on how many examples come before it.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import numpy as np
import pyarrow as pa
from tqdm import tqdm

from stages import paths
from stages.data.augment_rules import Rules, TagUnigrams, augment_example
from stages.errors import StageError
from stages.data.dedup import first_occurrences, row_keys
from stages.data.io import RAW_SCHEMA, TRANSFER_SCHEMA, read_parquet, write_json, write_parquet
from stages.data.tasks import Task
from stages.data.unlabeled import UnlabeledSpec, read_unlabeled, recorded_spec
from stages.params import AugmentParams, Params


# `tag_` needs only tok2vec and tagger. attribute_ruler maps tags to coarse POS and tags whitespace
# (which is dropped anyway), yet costs as much as the tagger; parser, ner and lemmatizer are unused.
_UNUSED_COMPONENTS = ["parser", "ner", "lemmatizer", "senter", "attribute_ruler"]

# Stream ids under the user's seed: one stream per example, one for each max_examples subset.
_EXAMPLE_STREAM, _CAP_STREAM, _UNLABELED_CAP_STREAM = 0, 1, 2

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


@dataclass
class _Train:
    """The training split as the rules read it: one list per text column, labels, idx and row keys."""

    columns: list[str]
    texts: list[list[str]]
    labels: list[int]
    idx: list[int]
    keys: np.ndarray


@dataclass
class _Unlabeled:
    """The task's unlabeled rows left after deduplication: the Arrow table, their positions in it, their keys."""

    table: pa.Table | None
    at_table: np.ndarray
    keys: np.ndarray
    stats: dict


@dataclass
class _Generated:
    a: list[str]
    b: list[str | None]
    sources: list[int]
    duplicates: int
    word_tag_pairs: int
    tagging_done: float  # perf_counter() when POS tagging ended


def _read_train(task: Task, raw_dir: Path) -> _Train:
    raw_path = Path(raw_dir) / "train.parquet"
    raw = read_parquet(raw_path, RAW_SCHEMA, hint="run the download stage first")
    if task.is_pair and raw["text_b"].null_count:
        raise StageError(f"{raw_path}: {raw['text_b'].null_count} null text_b value(s), but {task.name} is a pair task")
    columns = ["text_a", "text_b"] if task.is_pair else ["text_a"]
    return _Train(columns, [raw[c].to_pylist() for c in columns], raw["label"].to_pylist(), raw["idx"].to_pylist(),
                  row_keys(*(raw[c] for c in columns)))


def _read_unlabeled(task: Task, spec: UnlabeledSpec | None, train: _Train, hub_dir: str | None) -> _Unlabeled:
    """Unlabeled rows: read streaming, deduplicated among themselves and against the originals."""
    stats = {"rows_read": 0, "empty_skipped": 0, "duplicates_dropped": 0}
    if spec is None:
        return _Unlabeled(None, np.empty(0, np.int64), np.empty(0, np.uint64), stats)
    table, empty = read_unlabeled(task.name, spec, len(train.columns), hub_dir)
    keys = row_keys(*(table[c] for c in train.columns))
    first = first_occurrences(keys, [train.keys])
    stats.update(rows_read=table.num_rows + empty, empty_skipped=empty, duplicates_dropped=int((~first).sum()))
    # the texts stay one Arrow column (never Python strings, never copied); rows are picked by position
    return _Unlabeled(table, np.flatnonzero(first), keys[first], stats)


def _bases(train: _Train, unlabeled: _Unlabeled, augment_unlabeled: bool) -> tuple[list[list[str]], list[int]]:
    """The examples perturbed, per column, and their source ids: the originals, then (augment_unlabeled) the
    unlabeled rows, whose ids are minus their positions."""
    if not (augment_unlabeled and len(unlabeled.keys)):
        return train.texts, train.idx
    chosen = unlabeled.table.take(pa.array(unlabeled.at_table))
    bases = [col + chosen[c].to_pylist() for col, c in zip(train.texts, train.columns)]
    return bases, train.idx + [-r for r in chosen["row"].to_pylist()]


def _generate(task: Task, bases: list[list[str]], base_ids: list[int], n_orig: int, params: AugmentParams,
              seed: int, n_iter: int) -> _Generated:
    """n_iter rounds of the rules per base example, duplicates dropped (paper §3.2)."""
    need_tags = params.p_pos > 0
    pos_model = task.pos_model or params.pos_model
    load_tagger(pos_model, need_tags)  # fail on a bad model before the progress bar starts
    tagged = pos_tag([t for col in bases for t in col], pos_model, params.pos_batch_size,
                     f"{task.name}: POS tagging", need_tags)
    tagging_done = time.perf_counter()
    per_example = [[tagged[t] for t in col] for col in bases]  # column -> example -> (words, tags)
    unigrams = TagUnigrams.from_corpus(wt for col in per_example for wt in col[:n_orig])  # the training words
    rules = Rules(params.p_mask, params.p_pos, params.p_ng, params.ngram_min, params.ngram_max)

    def normal(words: list[str]) -> str:
        return " ".join(words)

    # Duplicates are judged on the stored strings and on the word-joined form, so an augmented
    # row whose words equal an original's counts as that original even where spacing differs.
    seen = {tuple(normal(col[i][0]) for col in per_example) for i in range(len(base_ids))}
    literal_originals = set(zip(*bases))
    out = _Generated([], [], [], 0, len(unigrams.words), tagging_done)
    for i in tqdm(range(len(base_ids)), desc=f"{task.name}: augmenting", unit="example"):
        encoded = [unigrams.encode(*col[i]) for col in per_example]
        for round_ in augment_example(encoded, unigrams, rules, example_rng(seed, i), n_iter):
            stored = tuple(t if t is not None else col[i] for t, col in zip(round_, bases))
            key = tuple(t if t is not None else normal(col[i][0]) for t, col in zip(round_, per_example))
            if key in seen or stored in literal_originals:
                out.duplicates += 1
                continue
            seen.add(key)
            out.a.append(stored[0])
            out.b.append(stored[1] if task.is_pair else None)
            out.sources.append(base_ids[i])
    return out


def _guard(task: Task, raw_dir: Path, train: _Train, generated: _Generated,
           unlabeled: _Unlabeled) -> tuple[dict[str, np.ndarray], dict[str, int]]:
    """Positions of the rows that may stay: an unlabeled row equal to an augmented one is a duplicate too; then
    no row may equal a dev or test text. Also how many each source lost to dev/test."""
    aug_keys = row_keys(generated.a, generated.b if task.is_pair else None)
    not_augmented = first_occurrences(unlabeled.keys, [aug_keys]) if len(unlabeled.keys) else np.ones(0, bool)
    unlabeled.stats["duplicates_dropped"] += int((~not_augmented).sum())
    eval_keys = _eval_keys(raw_dir, task.is_pair)
    clean = {name: ~np.isin(keys, eval_keys) for name, keys in
             (("original", train.keys), ("augmented", aug_keys), ("unlabeled", unlabeled.keys))}
    removed = {name: int((~mask).sum()) for name, mask in clean.items()}
    removed["unlabeled"] = int((not_augmented & ~clean["unlabeled"]).sum())
    return {"original": np.flatnonzero(clean["original"]), "augmented": np.flatnonzero(clean["augmented"]),
            "unlabeled": np.flatnonzero(clean["unlabeled"] & not_augmented)}, removed


def _transfer_table(task: Task, train: _Train, generated: _Generated, unlabeled: _Unlabeled,
                    keep: dict[str, np.ndarray]) -> pa.Table:
    keep_orig, keep_aug, keep_unl = keep["original"], keep["augmented"], keep["unlabeled"]
    texts = train.texts
    text_b_orig = texts[1] if task.is_pair else [None] * len(train.labels)
    parts = [pa.table(
        {
            "text_a": [texts[0][k] for k in keep_orig] + [generated.a[k] for k in keep_aug],
            "text_b": [text_b_orig[k] for k in keep_orig] + [generated.b[k] for k in keep_aug],
            "is_original": [True] * len(keep_orig) + [False] * len(keep_aug),
            "label": [train.labels[k] for k in keep_orig] + [-1] * len(keep_aug),
            "source_idx": [train.idx[k] for k in keep_orig] + [generated.sources[k] for k in keep_aug],
            "source": ["original"] * len(keep_orig) + ["augmented"] * len(keep_aug),
        },
        schema=TRANSFER_SCHEMA,
    )]
    if len(keep_unl):
        kept = unlabeled.table.take(pa.array(unlabeled.at_table[keep_unl]))
        n = kept.num_rows
        parts.append(pa.table({"text_a": kept["text_a"], "text_b": kept["text_b"] if task.is_pair else pa.nulls(n, pa.string()),
                               "is_original": np.zeros(n, bool),
                               "label": np.full(n, -1, np.int64), "source_idx": kept["row"],
                               "source": ["unlabeled"] * n}, schema=TRANSFER_SCHEMA))
    return pa.concat_tables(parts).combine_chunks()


def augment(task: Task, raw_dir: Path, out_path: Path, params: AugmentParams, *, seed: int,
            unlabeled: UnlabeledSpec | None = None, hub_dir: str | None = None) -> dict:
    """Write the transfer set of `task` to out_path (TRANSFER_SCHEMA); return a summary.

    `params`: params.yaml's `augment` section; `unlabeled`: the task's entry of params.yaml's `unlabeled:` (its
    rows join as source "unlabeled", label -1, source_idx = the row's 1-based position in the entry's files);
    `augment.augment_unlabeled`: also perturb them (their variants are "augmented" rows with source_idx =
    -position); `augment.unlabeled_share`: see _cap. Every row equal to a dev or test text
    (stages/data/dedup.py) is removed, whatever its source."""
    started = time.perf_counter()
    n_iter = task.n_iter if params.n_iter is None else params.n_iter
    train = _read_train(task, raw_dir)
    unl = _read_unlabeled(task, unlabeled, train, hub_dir)
    bases, base_ids = _bases(train, unl, params.augment_unlabeled)
    generated = _generate(task, bases, base_ids, len(train.labels), params, seed, n_iter)
    del bases
    generation_done = time.perf_counter()
    at, dev_test_removed = _guard(task, raw_dir, train, generated, unl)
    keep_orig, keep_aug, keep_unl = _cap(len(at["original"]), len(at["augmented"]), params.max_examples, seed,
                                         len(at["unlabeled"]), params.unlabeled_share)
    keep = {"original": at["original"][keep_orig], "augmented": at["augmented"][keep_aug],
            "unlabeled": at["unlabeled"][keep_unl]}
    counts = {name: len(rows) for name, rows in keep.items()}
    table = _transfer_table(task, train, generated, unl, keep)
    write_parquet(table, out_path)
    return {
        "originals": counts["original"],
        "augmented": counts["augmented"],
        "unlabeled": counts["unlabeled"],
        "duplicates_dropped": generated.duplicates,
        "dev_test_removed": dev_test_removed,
        "dropped_by_max_examples": sum(len(rows) for rows in at.values()) - table.num_rows,
        "rows": table.num_rows,
        "sources": counts,
        "unlabeled_input": ({**unl.stats, "augmented": params.augment_unlabeled, "share": params.unlabeled_share}
                            if unlabeled else None),
        "n_iter": n_iter,
        "word_tag_pairs": generated.word_tag_pairs,
        "seconds_tagging": round(generated.tagging_done - started, 2),
        "seconds_generation": round(generation_done - generated.tagging_done, 2),
        "seconds": round(time.perf_counter() - started, 2),
    }


def run(task: Task, params: Params) -> None:
    """The `augment` stage for one task: data/transfer/<task>.parquet and metrics/<task>/augment.json, from
    params.yaml's `augment`, `seed` and `data.hub_dir`, and the task's recorded `unlabeled:` entry."""
    summary = augment(task, paths.raw_dir(task.name), paths.transfer_file(task.name), params.augment,
                      seed=params.seed, unlabeled=recorded_spec(paths.unlabeled_source_file(task.name)),
                      hub_dir=paths.outside_dir(params.data.hub_dir))
    write_json({"task": task.name, **summary}, paths.metrics_dir(task.name) / "augment.json")
    print(f"augment {task.name}: {summary}")
