"""Statistics over training seeds: what `evaluate` reports instead of single-run numbers.

- `describe`: mean, sample standard deviation, min, max and a 95% confidence interval of the mean
  (Student's t with n - 1 degrees of freedom) of one score over the seeds.
- `paired_t_test`: student vs baseline trained with the same seeds, a paired t-test on the per-seed
  scores (scipy.stats.ttest_rel, two-sided): does the gain hold across seeds?
- `mcnemar_test`: the exact McNemar test (two-sided binomial test on the discordant sentences) between
  the two models' seed ensembles (each sentence's class: the argmax of the seeds' mean probabilities).
  It asks whether the models differ on these dev sentences, using every prediction rather than one
  number per seed, and it stays meaningful with few seeds, where the t-test has little power.
- `one_sample_t_test`: seeds of a stochastic model against the single score of a deterministic one (a
  TF-IDF + logistic regression fit has no seed): scipy.stats.ttest_1samp, two-sided.
- `majority_vote`: a seed ensemble's class per sentence by the seeds' votes (ties: the larger mean
  probability), the ensemble `compare` tests against a deterministic model with `mcnemar_test`.

Pure functions on numbers and arrays; no file I/O.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import stats


def describe(values: list[float]) -> dict:
    """n, mean, sd, min, max and the 95% CI of the mean; sd and CI are None for a single value."""
    x = np.asarray(values, dtype=np.float64)
    if len(x) == 0:
        raise ValueError("no values to describe")
    n, mean = len(x), float(x.mean())
    sd = float(x.std(ddof=1)) if n > 1 else None
    if sd is None:
        ci = None
    else:
        half = float(stats.t.ppf(0.975, n - 1)) * sd / math.sqrt(n)
        ci = [mean - half, mean + half]
    return {"n": n, "mean": mean, "sd": sd, "min": float(x.min()), "max": float(x.max()), "ci95": ci}


def paired_t_test(a: list[float], b: list[float]) -> dict:
    """Mean of a - b, and the two-sided p-value of the paired t-test (None with fewer than 2 pairs, or
    when every difference is the same, where the test is undefined)."""
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"paired scores need equal lengths, got {len(a)} and {len(b)}")
    diff = a - b
    result = {"mean_difference": float(diff.mean()) if len(diff) else None, "t": None, "p_value": None}
    if len(diff) >= 2 and np.ptp(diff) > 0:
        test = stats.ttest_rel(a, b)
        result.update(t=float(test.statistic), p_value=float(test.pvalue))
    return result


def ensemble_predictions(probabilities: list[np.ndarray]) -> np.ndarray:
    """Each row's class under the seeds' ensemble: argmax of the mean of their (rows, classes) probabilities."""
    return np.mean(np.stack(probabilities), axis=0).argmax(-1)


def mcnemar_test(labels: np.ndarray, pred_a: np.ndarray, pred_b: np.ndarray) -> dict:
    """Exact McNemar test: a_only = rows a gets right and b wrong, b_only the reverse; the p-value is the
    two-sided binomial test of a_only out of a_only + b_only at 1/2 (1.0 when they never disagree)."""
    labels, pred_a, pred_b = (np.asarray(v) for v in (labels, pred_a, pred_b))
    known = labels >= 0
    right_a, right_b = pred_a[known] == labels[known], pred_b[known] == labels[known]
    a_only, b_only = int((right_a & ~right_b).sum()), int((~right_a & right_b).sum())
    p = float(stats.binomtest(a_only, a_only + b_only, 0.5).pvalue) if a_only + b_only else 1.0
    return {"a_only": a_only, "b_only": b_only, "p_value": p}


def one_sample_t_test(values: list[float], reference: float) -> dict:
    """Mean of values - reference, and the two-sided p-value of the one-sample t-test (None with fewer than 2
    values, or when every value is the same, where the test is undefined)."""
    x = np.asarray(values, dtype=np.float64)
    result = {"mean_difference": float(x.mean() - reference) if len(x) else None, "t": None, "p_value": None}
    if len(x) >= 2 and np.ptp(x) > 0:
        test = stats.ttest_1samp(x, reference)
        result.update(t=float(test.statistic), p_value=float(test.pvalue))
    return result


def majority_vote(probabilities: list[np.ndarray]) -> np.ndarray:
    """Each row's class under the seeds' majority vote over their argmax classes; a tie goes to the tied class
    with the larger mean probability."""
    stacked = np.stack(probabilities)  # (seeds, rows, classes)
    votes = np.zeros(stacked.shape[1:], dtype=np.float64)
    np.add.at(votes, (np.arange(stacked.shape[1])[None, :], stacked.argmax(-1)), 1.0)
    # a vote counts 1; the mean probability (below 1) only orders classes with equal votes
    return (votes + stacked.mean(axis=0) * 0.5).argmax(-1)
