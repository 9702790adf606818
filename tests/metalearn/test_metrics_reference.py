"""delta-AUPRC and R^2_os against independent references: scikit-learn and hand-written
step-wise precision-recall sums on random inputs with tied scores; argument checks that name
the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from sklearn.metrics import r2_score

from metalearn.metrics import delta_auprc, r2_os


def _stepwise_ap(y: np.ndarray, s: np.ndarray) -> float:
    """Average precision by definition: over distinct thresholds from the top (tied scores
    are one threshold), the recall increments times the precision at that threshold."""
    ap, prev_recall = 0.0, 0.0
    for th in np.unique(s)[::-1]:
        sel = s >= th
        tp = float((y[sel] == 1).sum())
        recall = tp / y.sum()
        ap += (recall - prev_recall) * tp / sel.sum()
        prev_recall = recall
    return ap


@pytest.mark.parametrize("tied", [False, True])
def test_delta_auprc_matches_the_stepwise_definition(tied):
    rng = np.random.default_rng(0 if tied else 1)
    checked = 0
    for _ in range(200):
        n = int(rng.integers(2, 40))
        y = rng.integers(0, 2, n)
        if y.min() == y.max():
            continue
        s = rng.integers(0, 4, n).astype(float) if tied else rng.normal(size=n)
        assert delta_auprc(y, s) == pytest.approx(_stepwise_ap(y, s) - y.mean(), abs=1e-12)
        checked += 1
    assert checked > 150


def test_delta_auprc_hand_cases():
    # all scores tied: one threshold, precision = positive fraction, delta 0
    assert delta_auprc([0, 1, 0, 1, 1], [0.3] * 5) == pytest.approx(0.0, abs=1e-15)
    # perfect ranking: AUPRC 1, delta 1 - 2/5
    assert delta_auprc([0, 1, 0, 1, 0], [0.1, 0.9, 0.2, 0.8, 0.3]) == pytest.approx(0.6)
    # a positive tied with a negative at the top: precision 1/2 at recall 1
    assert delta_auprc([1, 0, 0], [0.5, 0.5, 0.1]) == pytest.approx(0.5 - 1 / 3)
    # a column of scores and tensors are accepted
    assert delta_auprc(torch.tensor([0.0, 1.0]), np.array([[0.2], [0.7]])) == pytest.approx(0.5)


@pytest.mark.parametrize("labels", [[0, 0, 0], [1, 1, 1]])
def test_delta_auprc_refuses_a_one_class_query(labels):
    with pytest.raises(ValueError, match="y_true.*one positive and one negative"):
        delta_auprc(labels, [0.1, 0.5, 0.9])


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (([], []), "y_true is empty"),
        (([0, 1], []), "scores is empty"),
        (([0, 1], [0.1, 0.2, 0.3]), "y_true has 2, scores has 3"),
        # a [2, 2] matrix was flattened and matched 4 scores
        (([[0, 1], [1, 0]], [0.1, 0.2, 0.3, 0.4]), r"y_true must be 1-d, got shape \(2, 2\)"),
        (([0, 1], [[0.1, 0.2], [0.3, 0.4]]), "scores must be 1-d"),
        (([0, 1], [np.nan, 0.2]), "scores contain NaN"),
        (([0, np.nan], [0.1, 0.2]), "y_true must hold 0 / 1"),
    ],
)
def test_delta_auprc_argument_errors_name_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        delta_auprc(*args)


def test_r2_os_matches_sklearn_and_the_formula():
    rng = np.random.default_rng(2)
    for _ in range(100):
        n = int(rng.integers(2, 30))
        y, p = rng.normal(size=n), rng.normal(size=n)
        # with the query mean as training mean it is the ordinary R^2
        assert r2_os(y, p, y.mean()) == pytest.approx(r2_score(y, p), rel=1e-12, abs=1e-12)
        m = float(rng.normal())
        ref = 1.0 - np.sum((y - p) ** 2) / np.sum((y - m) ** 2)
        assert r2_os(y, p, m) == pytest.approx(ref, rel=1e-12, abs=1e-12)
    # predicting the training mean scores 0, whatever the query mean
    assert r2_os([1.0, 5.0, 2.0], [3.0, 3.0, 3.0], 3.0) == 0.0
    assert r2_os(np.array([[1.0], [3.0]]), torch.tensor([1.0, 3.0]), np.float32(0.0)) == 1.0


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        (([], [], 0.0), "y_true is empty"),
        (([1.0, 2.0], [1.0], 0.0), "y_true has 2, y_pred has 1"),
        # a [2, 3] target was flattened and matched 6 predictions
        ((np.ones((2, 3)), np.ones(6), 0.0), "y_true must be 1-d"),
        # an array of training means was broadcast against the labels
        (([1.0, 2.0], [1.0, 2.0], [0.0, 1.0]), "train_mean must be one number"),
        (([1.0, 2.0], [1.0, 2.0], "0"), "train_mean must be one number"),
        (([1.0, 2.0], [1.0, 2.0], np.inf), "train_mean contains NaN/inf"),
        (([2.0, 2.0], [1.0, 2.0], 2.0), "y_true.*undefined"),
    ],
)
def test_r2_os_argument_errors_name_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        r2_os(*args)
