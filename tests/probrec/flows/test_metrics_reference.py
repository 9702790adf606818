"""Annotator-simulation metrics against independent references on random and edge-case
inputs: the individual annotations expanded from the counts, SciPy's weighted Wasserstein
distance, statsmodels' Fleiss' kappa and a pairwise-agreement count; argument checks that name
the argument."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import wasserstein_distance

from probrec.flows.metrics import (
    fleiss_kappa,
    majority_accuracy,
    mean_rmse,
    nll,
    std_rmse,
    wasserstein1,
)

K = 5


def _random_case(rng, n, values):
    probs = rng.dirichlet(np.full(K, 0.5), n)
    counts = rng.integers(0, 4, (n, K)).astype(float)
    counts[counts.sum(1) == 0, int(rng.integers(K))] = 1.0
    # the individual annotations: (item, label index) pairs
    item = np.concatenate([np.full(int(c.sum()), i) for i, c in enumerate(counts)])
    label = np.concatenate([np.repeat(np.arange(K), c.astype(int)) for c in counts])
    return probs, counts, item, label, values


def _cases():
    rng = np.random.default_rng(0)
    for t in range(60):
        values = np.arange(1.0, K + 1) if t % 3 else np.sort(rng.normal(size=K))
        yield _random_case(rng, int(rng.integers(1, 20)), values)


def test_nll_is_the_mean_over_individual_annotations():
    for probs, counts, item, label, _ in _cases():
        lp = np.log(probs)
        assert nll(lp, counts) == pytest.approx(-np.mean(lp[item, label]), rel=1e-12)
        per_item = -np.mean([np.mean(lp[i, label[item == i]]) for i in np.unique(item)])
        assert nll(lp, counts, per_item=True) == pytest.approx(per_item, rel=1e-12)
    # a zero probability on an unused label costs nothing; on a used one the NLL is inf
    with np.errstate(divide="ignore"):
        assert nll(np.log([[0.5, 0.5, 0.0]]), [[1, 1, 0]]) == pytest.approx(np.log(2))
        assert nll(np.log([[1.0, 0.0]]), [[1, 1]]) == np.inf


def test_mean_and_std_rmse_match_numpy_on_the_annotations():
    for probs, counts, item, label, values in _cases():
        emp_mean = np.array([values[label[item == i]].mean() for i in range(len(counts))])
        emp_std = np.array([values[label[item == i]].std() for i in range(len(counts))])
        pm = probs @ values
        ps = np.sqrt(probs @ values**2 - pm**2)
        assert mean_rmse(probs, counts, values) == pytest.approx(
            np.sqrt(np.mean((pm - emp_mean) ** 2)), rel=1e-10, abs=1e-12
        )
        keep = counts.sum(1) >= 2
        if keep.any():
            assert std_rmse(probs, counts, values) == pytest.approx(
                np.sqrt(np.mean((ps[keep] - emp_std[keep]) ** 2)), rel=1e-10, abs=1e-12
            )
    # unnormalised probabilities are renormalised per item
    assert mean_rmse([[2.0, 2.0]], [[1, 1]], [0.0, 1.0]) == 0.0


def test_wasserstein1_matches_scipy_with_weights():
    for probs, counts, _, _, values in _cases():
        w = wasserstein1(probs, counts, values)
        ref = [wasserstein_distance(values, values, p, c) for p, c in zip(probs, counts)]
        np.testing.assert_allclose(w, ref, rtol=1e-10, atol=1e-12)
    # point masses at the ends of the label line: the label range
    assert wasserstein1([[1.0, 0.0, 0.0]], [[0, 0, 3]], [1.0, 2.0, 4.0])[0] == 3.0


def test_majority_accuracy_against_a_direct_count_and_documented_ties():
    for probs, counts, *_ in _cases():
        pred = probs.argmax(1)
        hits = [counts[i, pred[i]] == counts[i].max() for i in range(len(counts))]
        assert majority_accuracy(probs, counts) == pytest.approx(np.mean(hits))
    # tied human majority: any tied label is a hit, a non-tied one is not
    assert majority_accuracy([[0.1, 0.6, 0.3]], [[2, 2, 1]]) == 1.0
    assert majority_accuracy([[0.6, 0.1, 0.3]], [[2, 2, 1]]) == 1.0
    assert majority_accuracy([[0.1, 0.3, 0.6]], [[2, 2, 1]]) == 0.0
    # tied prediction: the first (lowest) tied label is the prediction (documented)
    assert majority_accuracy([[0.5, 0.5, 0.0]], [[2, 0, 1]]) == 1.0
    assert majority_accuracy([[0.5, 0.5, 0.0]], [[0, 2, 1]]) == 0.0
    # items without annotations are left out
    assert majority_accuracy([[0.9, 0.1], [0.1, 0.9]], [[0, 0], [0, 3]]) == 1.0


def _kappa_by_pairs(counts):
    """Fleiss' kappa of the documented definition from the individual ratings: P_i the share
    of agreeing ordered pairs of distinct raters of item i (items with >= 2 ratings), p_j
    the pooled share of ratings in category j over those items."""
    agree, pooled = [], []
    for row in np.asarray(counts, dtype=int):
        ratings = np.repeat(np.arange(len(row)), row)
        if len(ratings) < 2:
            continue
        pairs = [(a, b) for i, a in enumerate(ratings) for j, b in enumerate(ratings) if i != j]
        agree.append(np.mean([a == b for a, b in pairs]))
        pooled.extend(ratings.tolist())
    p_j = np.bincount(pooled, minlength=np.shape(counts)[1]) / len(pooled)
    p_e = np.sum(p_j**2)
    return (np.mean(agree) - p_e) / (1 - p_e)


def test_fleiss_kappa_matches_statsmodels_for_equal_rater_counts():
    sm = pytest.importorskip("statsmodels.stats.inter_rater")
    rng = np.random.default_rng(1)
    for _ in range(50):
        n, r = int(rng.integers(2, 25)), int(rng.integers(2, 7))
        counts = np.stack(
            [np.bincount(rng.integers(0, K, r), minlength=K) for _ in range(n)]
        ).astype(float)
        if (counts.sum(0) == counts.sum()).any():
            continue  # one category only: undefined
        assert fleiss_kappa(counts) == pytest.approx(sm.fleiss_kappa(counts), abs=1e-12)
        assert fleiss_kappa(counts) == pytest.approx(_kappa_by_pairs(counts), abs=1e-12)


def test_fleiss_kappa_with_varying_rater_counts_matches_the_pairwise_definition():
    # statsmodels assumes the same number of raters per item; the library documents its
    # generalisation (per-item agreement averaged over items, pooled category shares)
    rng = np.random.default_rng(2)
    for _ in range(50):
        n = int(rng.integers(2, 20))
        counts = np.stack(
            [
                np.bincount(rng.integers(0, K, int(rng.integers(0, 7))), minlength=K)
                for _ in range(n)
            ]
        )
        usable = counts[counts.sum(1) >= 2]
        if len(usable) == 0 or (usable.sum(0) == usable.sum()).any():
            continue
        assert fleiss_kappa(counts) == pytest.approx(_kappa_by_pairs(counts), abs=1e-12)
    # perfect agreement within items across two categories: kappa 1; systematic
    # disagreement between two raters: kappa -1 (Scott's pi)
    assert fleiss_kappa([[3, 0], [0, 2], [4, 0]]) == pytest.approx(1.0)
    assert fleiss_kappa([[1, 1], [1, 1]]) == pytest.approx(-1.0)


@pytest.mark.parametrize(
    ("fn", "args", "kwargs", "pattern"),
    [
        (nll, ([[0.0, -np.inf]], [[1, 0, 0]]), {}, "same shape"),
        (nll, ([[np.nan, 0.0]], [[1, 0]]), {}, "log_probs contains NaN"),
        (nll, ([[-1.0, -1.0]], [[np.nan, 0]]), {}, "counts contains non-finite"),
        (nll, ([[0.5, 0.5]], [[1, 1]]), {}, "log_probs must be log-probabilities"),
        (nll, (np.zeros((0, 2)), np.zeros((0, 2))), {}, "counts has no annotations"),
        (mean_rmse, ([[0.5, 0.5]], [[1, 1]], [1.0, np.nan]), {}, "values contains non-finite"),
        (mean_rmse, ([[0.5, 0.5]], [[1, 1]], [2.0, 1.0]), {}, "values must be 2 increasing"),
        (mean_rmse, ([[0.5, 0.5]], [[0, 0]], [1.0, 2.0]), {}, "counts: 1 row"),
        (mean_rmse, ([[0.0, 0.0]], [[1, 0]], [1.0, 2.0]), {}, "probs: 1 row"),
        (mean_rmse, (np.zeros((0, 2)), np.zeros((0, 2)), [1.0, 2.0]), {}, "hold no items"),
        (std_rmse, ([[0.5, 0.5]], [[1, 1]], [1.0, 2.0]), {"min_annotations": 0}, "min_annotations"),
        (std_rmse, ([[0.5, 0.5]], [[1, 0]], [1.0, 2.0]), {}, "counts: no item"),
        (wasserstein1, ([[0.5, 0.5]], [[1, 1], [1, 0]], [1.0, 2.0]), {}, "same shape"),
        (wasserstein1, ([[0.5, 0.5]], [[1, -1]], [1.0, 2.0]), {}, "counts must be non-negative"),
        # an all-zero prediction was scored as predicting the first label
        (majority_accuracy, ([[0.0, 0.0]], [[1, 0]]), {}, "probs: 1 row"),
        (majority_accuracy, ([[np.nan, 0.5]], [[1, 0]]), {}, "probs contains non-finite"),
        (majority_accuracy, ([[-0.5, 0.5]], [[1, 0]]), {}, "probs must be non-negative"),
        (fleiss_kappa, ([[1.5, 0.5], [0, 2]],), {}, "counts must be non-negative integers"),
        (fleiss_kappa, ([[1, 0], [0, 1]],), {}, "counts: Fleiss' kappa needs items"),
        (fleiss_kappa, ([[2, 0], [3, 0]],), {}, "counts: all ratings fall in one category"),
        (fleiss_kappa, ([1, 1],), {}, "counts must have 2 dimensions"),
    ],
)
def test_argument_errors_name_the_argument(fn, args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        fn(*args, **kwargs)
