"""Seed statistics on known inputs: exact values, computed by hand."""

import math

import numpy as np
import pytest

from stages.report.statistics import (describe, ensemble_predictions, majority_vote, mcnemar_test, one_sample_t_test,
                                      paired_t_test)


def test_describe_mean_sd_range_and_t_interval():
    d = describe([0.70, 0.72, 0.74])
    assert d["n"] == 3 and d["mean"] == pytest.approx(0.72) and d["sd"] == pytest.approx(0.02)
    assert (d["min"], d["max"]) == (0.70, 0.74)
    half = 4.302652729911275 * 0.02 / math.sqrt(3)  # t(0.975, 2 degrees of freedom)
    assert d["ci95"] == pytest.approx([0.72 - half, 0.72 + half])


def test_describe_one_seed_has_no_spread():
    assert describe([0.8]) == {"n": 1, "mean": 0.8, "sd": None, "min": 0.8, "max": 0.8, "ci95": None}
    with pytest.raises(ValueError):
        describe([])


def test_paired_t_test_on_known_differences():
    # differences 1, 2, 3: mean 2, sd 1, t = 2 / (1 / sqrt 3) = 2 sqrt 3, two-sided p with 2 degrees of freedom
    result = paired_t_test([11, 12, 13], [10, 10, 10])
    assert result["mean_difference"] == 2 and result["t"] == pytest.approx(2 * math.sqrt(3))
    t = 2 * math.sqrt(3)
    assert result["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # closed form of the t(2) tail
    assert paired_t_test([1.0], [0.5]) == {"mean_difference": 0.5, "t": None, "p_value": None}
    assert paired_t_test([2, 3], [1, 2])["p_value"] is None  # every difference 1: no variance, no test
    with pytest.raises(ValueError, match="equal lengths"):
        paired_t_test([1, 2], [1])


def test_mcnemar_counts_discordant_rows_and_uses_the_exact_binomial():
    labels = np.array([0, 1, 1, 0, 1, 0, -1])
    a = np.array([0, 1, 1, 0, 0, 1, 1])  # right on rows 0-3
    b = np.array([1, 0, 1, 0, 1, 1, 0])  # right on rows 2, 3, 4; the unlabelled row is ignored
    result = mcnemar_test(labels, a, b)
    assert (result["a_only"], result["b_only"]) == (2, 1)
    assert result["p_value"] == pytest.approx(1.0)  # P(X <= 1 or X >= 2 | n = 3, 1/2) = 1
    lopsided = mcnemar_test(np.zeros(10, int), np.zeros(10, int), np.ones(10, int))
    assert (lopsided["a_only"], lopsided["b_only"]) == (10, 0)
    assert lopsided["p_value"] == pytest.approx(2 / 2**10)
    assert mcnemar_test(labels, a, a)["p_value"] == 1.0


def test_ensemble_takes_the_argmax_of_mean_probabilities():
    p1 = np.array([[0.9, 0.1], [0.4, 0.6]])
    p2 = np.array([[0.2, 0.8], [0.45, 0.55]])
    p3 = np.array([[0.3, 0.7], [0.9, 0.1]])
    assert ensemble_predictions([p1, p2, p3]).tolist() == [1, 0]  # means (0.467, 0.533), (0.583, 0.417)


def test_one_sample_t_test_against_a_fixed_score():
    # values 0.80, 0.82, 0.84 against 0.78: mean difference 0.04, sd 0.02, t = 0.04 / (0.02 / sqrt 3) = 2 sqrt 3
    result = one_sample_t_test([0.80, 0.82, 0.84], 0.78)
    t = 2 * math.sqrt(3)
    assert result["mean_difference"] == pytest.approx(0.04) and result["t"] == pytest.approx(t)
    assert result["p_value"] == pytest.approx(1 - t / math.sqrt(t * t + 2))  # the t(2) tail, as above
    assert one_sample_t_test([0.8], 0.7)["p_value"] is None  # one seed: no test
    assert one_sample_t_test([0.8, 0.8], 0.7) == {"mean_difference": pytest.approx(0.1), "t": None, "p_value": None}


def test_majority_vote_counts_seeds_and_breaks_ties_by_mean_probability():
    seeds = [np.array([[0.9, 0.1, 0.0], [0.6, 0.4, 0.0], [0.2, 0.3, 0.5]]),
             np.array([[0.4, 0.6, 0.0], [0.45, 0.55, 0.0], [0.1, 0.8, 0.1]]),
             np.array([[0.4, 0.6, 0.0], [0.7, 0.3, 0.0], [0.6, 0.1, 0.3]])]
    # row 0: votes 0, 1, 1 -> 1, although the mean probabilities (0.567, 0.433) favour 0;
    # row 1: votes 0, 1, 0 -> 0; row 2: one vote each, mean probabilities (0.3, 0.4, 0.3) -> 1
    assert majority_vote(seeds).tolist() == [1, 0, 1]
    assert majority_vote(seeds[:1]).tolist() == [0, 0, 2]  # one seed: its own argmax
