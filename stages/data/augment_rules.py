"""The augmentation rules of Tang et al. 2019, Section 3.2, as pure functions (no spaCy, no I/O).

Per word w draw X ~ U[0,1]: X < p_mask masks w; p_mask <= X < p_mask + p_pos replaces w with another
word of the same POS tag, drawn from the training set's unigram distribution renormalised within
that tag; then, with probability p_ng, only a random n-gram of the perturbed example is kept.

Everything per example is vectorised over its words and over all of its rounds at once, so the
per-word work is numpy, and only turning rows back into strings is a Python loop.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np

from stages.data.text import MASK

KEEP, MASKED, REPLACED = 0, 1, 2  # per-word outcome codes in Perturbed.op


@dataclass(frozen=True)
class Rules:
    """The three rules' knobs (params.yaml's `augment`, validated there)."""

    p_mask: float
    p_pos: float
    p_ng: float
    ngram_min: int
    ngram_max: int


@dataclass(frozen=True)
class Encoded:
    """One text's words with what the within-tag draw needs, looked up once per example.

    All positions are on one integer axis that lays every (word, tag) count end to end, tags
    contiguous: the tag of a word owns [lo, lo + total) and the word itself [start, start + count).
    """

    tokens: np.ndarray  # object array of str
    lo: np.ndarray
    total: np.ndarray  # 0 when the tag never occurs in the training set
    start: np.ndarray
    count: np.ndarray  # 0 when (word, tag) never occurs in the training set

    def __len__(self) -> int:
        return len(self.tokens)

    @property
    def has_alternative(self) -> np.ndarray:
        return self.total - self.count > 0


class TagUnigrams:
    """Training-set counts of (word, tag), arranged for exact draws of P(v | tag, v != w).

    Integer counts on a shared cumulative axis make the draw exact: pick an integer uniformly in
    the tag's mass minus w's mass, and step over w's interval if the pick lands at or after it.
    """

    def __init__(self, counts: Counter[tuple[str, str]]):
        entries = sorted(counts, key=lambda wt: (wt[1], wt[0]))  # grouped by tag, stable order
        self.words = np.array([w for w, _ in entries], dtype=object)
        self.entry_tags = [t for _, t in entries]
        self.counts = np.array([counts[e] for e in entries], dtype=np.int64)
        self.cum_end = np.cumsum(self.counts)
        self.cum_start = self.cum_end - self.counts
        self.index = {e: i for i, e in enumerate(entries)}
        self.tags: dict[str, tuple[int, int]] = {}  # tag -> (lo, total)
        for i, tag in enumerate(self.entry_tags):
            lo, total = self.tags.get(tag, (int(self.cum_start[i]), 0))
            self.tags[tag] = (lo, total + int(self.counts[i]))

    @classmethod
    def from_corpus(cls, corpus: Iterable[tuple[Sequence[str], Sequence[str]]]) -> "TagUnigrams":
        counts: Counter[tuple[str, str]] = Counter()
        for tokens, tags in corpus:
            if len(tokens) != len(tags):
                raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
            counts.update(zip(tokens, tags))
        return cls(counts)

    def encode(self, tokens: Sequence[str], tags: Sequence[str]) -> Encoded:
        if len(tokens) != len(tags):
            raise ValueError(f"{len(tokens)} tokens but {len(tags)} tags")
        n = len(tokens)
        lo, total, start, count = (np.zeros(n, dtype=np.int64) for _ in range(4))
        for i, (word, tag) in enumerate(zip(tokens, tags)):
            lo[i], total[i] = self.tags.get(tag, (0, 0))
            entry = self.index.get((word, tag))
            if entry is None:  # a word unseen with this tag: nothing to exclude
                start[i] = lo[i]
            else:
                start[i], count[i] = self.cum_start[entry], self.counts[entry]
        return Encoded(np.array(tokens, dtype=object), lo, total, start, count)

    def draw(self, enc: Encoded, positions: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """Replacement words for enc.tokens[positions], which must all have an alternative."""
        count = enc.count[positions]
        pick = enc.lo[positions] + rng.integers(0, enc.total[positions] - count)
        pick += count * (pick >= enc.start[positions])  # skip w's own interval
        return self.words[np.searchsorted(self.cum_end, pick, side="right")]

    def replacement_distribution(self, word: str, tag: str) -> dict[str, float]:
        """P(v | tag, v != word): what `draw` samples from (for checks and documentation)."""
        mass = {w: int(c) for w, t, c in zip(self.words, self.entry_tags, self.counts) if t == tag and w != word}
        total = sum(mass.values())
        return {w: c / total for w, c in mass.items()} if total else {}


@dataclass(frozen=True)
class Perturbed:
    """n independent applications of the rules to one text."""

    tokens: np.ndarray  # (n, L) object: words after masking and replacement, before the n-gram
    op: np.ndarray  # (n, L) KEEP / MASKED / REPLACED
    ngram: np.ndarray  # (n,) bool: the n-gram rule fired
    start: np.ndarray  # (n,) first kept position (0 without n-gram)
    length: np.ndarray  # (n,) kept length (L without n-gram)

    def kept(self, i: int) -> list[str]:
        return self.tokens[i, self.start[i] : self.start[i] + self.length[i]].tolist()

    def texts(self) -> list[str]:
        return [" ".join(self.kept(i)) for i in range(len(self.start))]


def perturb(enc: Encoded, unigrams: TagUnigrams, rules: Rules, rng: np.random.Generator, n: int = 1) -> Perturbed:
    """Apply the rules n times, independently, to one text."""
    length = len(enc)
    x = rng.random((n, length))
    op = np.full((n, length), KEEP, dtype=np.int8)
    op[x < rules.p_mask] = MASKED
    # A word that is the only one of its tag has no "another word" to become: it stays.
    replace = (x >= rules.p_mask) & (x < rules.p_mask + rules.p_pos) & enc.has_alternative
    op[replace] = REPLACED
    tokens = np.empty((n, length), dtype=object)
    tokens[:] = enc.tokens
    tokens[op == MASKED] = MASK
    rows, cols = np.nonzero(replace)
    tokens[rows, cols] = unigrams.draw(enc, cols, rng)

    ngram = rng.random(n) < rules.p_ng
    size = np.minimum(rng.integers(rules.ngram_min, rules.ngram_max + 1, size=n), length)
    start = rng.integers(0, length - size + 1)  # uniform over the valid starts
    return Perturbed(
        tokens, op, ngram,
        np.where(ngram, start, 0),
        np.where(ngram, size, length),
    )


def targets(iteration: int, n_texts: int) -> tuple[bool, ...]:
    """Which texts round `iteration` augments: pairs cycle first only, second only, both."""
    if n_texts == 1:
        return (True,)
    if n_texts == 2:
        return (iteration % 3 != 1, iteration % 3 != 0)
    raise ValueError(f"examples have 1 or 2 texts, got {n_texts}")


def augment_example(
    texts: Sequence[Encoded], unigrams: TagUnigrams, rules: Rules, rng: np.random.Generator, n_iter: int
) -> list[tuple[str | None, ...]]:
    """n_iter augmented versions of one example: per round, one string per text, None = left as is.

    Each text augmented in a round gets its own independent application of the rules (its own
    n-gram decision); all rounds of one text are drawn together, text by text.
    """
    plan = [targets(i, len(texts)) for i in range(n_iter)]
    rounds: list[list[str | None]] = [[None] * len(texts) for _ in range(n_iter)]
    for j, enc in enumerate(texts):
        chosen = [i for i in range(n_iter) if plan[i][j]]
        if not chosen:
            continue
        for i, text in zip(chosen, perturb(enc, unigrams, rules, rng, len(chosen)).texts()):
            rounds[i][j] = text
    return [tuple(r) for r in rounds]
