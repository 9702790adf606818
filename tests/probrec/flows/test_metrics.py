"""Annotator metrics on hand-made cases, a published worked example and scipy."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.stats import wasserstein_distance

from probrec.flows import AnnotatorModel
from probrec.flows.metrics import (
    distribution_moments,
    evaluate,
    fleiss_kappa,
    kl_to_truth,
    majority_accuracy,
    mean_rmse,
    nll,
    panel_std,
    std_rmse,
    wasserstein1,
)

# Fleiss (1971) as worked on Wikipedia ("Fleiss' kappa"): 10 subjects, 14 raters, 5 categories
FLEISS_TABLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


def test_fleiss_kappa_worked_example():
    assert fleiss_kappa(FLEISS_TABLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_against_statsmodels():
    sm = pytest.importorskip("statsmodels.stats.inter_rater")
    table = np.random.default_rng(0).multinomial(7, [0.5, 0.3, 0.2], size=40)
    assert fleiss_kappa(table) == pytest.approx(sm.fleiss_kappa(table), rel=1e-12)


def test_fleiss_kappa_with_two_raters_is_scotts_pi_and_drops_single_ratings():
    rng = np.random.default_rng(1)
    a = rng.integers(0, 3, 60)
    b = np.where(rng.random(60) < 0.6, a, rng.integers(0, 3, 60))
    p_o = (a == b).mean()
    pooled = np.bincount(np.concatenate([a, b]), minlength=3) / 120
    scott = (p_o - (pooled**2).sum()) / (1 - (pooled**2).sum())
    table = np.zeros((61, 3), int)
    np.add.at(table, (np.arange(60), a), 1)
    np.add.at(table, (np.arange(60), b), 1)
    table[60, 2] = 1  # an item with one rating carries no agreement information
    assert fleiss_kappa(table) == pytest.approx(scott, rel=1e-12)
    with pytest.raises(ValueError, match="one category"):
        fleiss_kappa([[3, 0], [2, 0]])
    with pytest.raises(ValueError, match="at least two"):
        fleiss_kappa([[1, 0]])


def test_moments_rmse_nll_accuracy_on_a_hand_case():
    values = np.array([1, 2, 3, 4, 5])
    counts = np.array([[2, 0, 0, 0, 0], [0, 1, 0, 1, 0], [0, 0, 3, 1, 0]])
    probs = np.array([[0.5, 0.5, 0, 0, 0], [0, 0, 1.0, 0, 0], [0, 0, 0.5, 0.5, 0]])
    mean, sd = distribution_moments(counts, values)
    np.testing.assert_allclose(mean, [1, 3, 3.25])
    np.testing.assert_allclose(sd, [0, 1, np.sqrt(3 / 16)])
    pm, ps = distribution_moments(probs, values)
    np.testing.assert_allclose(pm, [1.5, 3, 3.5])
    np.testing.assert_allclose(ps, [0.5, 0, 0.5])
    assert mean_rmse(probs, counts, values) == pytest.approx(np.sqrt((0.25 + 0 + 0.0625) / 3))
    assert std_rmse(probs, counts, values) == pytest.approx(
        np.sqrt((0.25 + 1 + (0.5 - np.sqrt(3 / 16)) ** 2) / 3)
    )
    with np.errstate(divide="ignore"):
        logp = np.log(probs)
    assert nll(np.log(np.full((3, 5), 0.2)), counts) == pytest.approx(np.log(5))
    assert nll(logp, counts) == np.inf  # a zero-probability annotation
    # every item weighs the same (the paper's NLL-all): item cross-entropies log 2 and 0
    half = np.log(np.array([[0.5, 0.5, 1e-9, 1e-9, 1e-9], [1e-9, 1e-9, 1.0, 1e-9, 1e-9]]))
    two = np.array([[3, 1, 0, 0, 0], [0, 0, 1, 0, 0]])
    assert nll(half, two, per_item=True) == pytest.approx(np.log(2) / 2)
    assert nll(half, two) == pytest.approx(4 * np.log(2) / 5)
    for per_item in (False, True):  # an error, not a NaN
        with pytest.raises(ValueError, match="no annotations"):
            nll(half, np.zeros_like(two), per_item=per_item)
    assert majority_accuracy(probs, counts) == pytest.approx(2 / 3)  # ties count as hits
    with pytest.raises(ValueError, match="same shape"):
        mean_rmse(probs[:2], counts, values)
    # an item without annotations is no hit and no miss (it counted as a hit)
    no_votes = np.vstack([counts, np.zeros(5, dtype=int)])
    assert majority_accuracy(np.vstack([probs, probs[:1]]), no_votes) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="no annotations"):
        majority_accuracy(probs, np.zeros_like(counts))
    # probabilities where log-probabilities belong gave a negative NLL
    with pytest.raises(ValueError, match=r"log_probs must be log-probabilities \(<= 0\)"):
        nll(np.full((3, 5), 0.2), counts)
    for fn in (majority_accuracy, lambda p, c: mean_rmse(p, c, values)):  # NaN before
        with pytest.raises(ValueError, match="no items"):
            fn(np.zeros((0, 5)), np.zeros((0, 5)))


def test_kl_to_truth_matches_scipy_entropy():
    from scipy.stats import entropy

    rng = np.random.default_rng(5)
    true = rng.dirichlet(np.ones(4), size=30)
    true[0] = [0.5, 0.5, 0.0, 0.0]  # a label the truth never uses costs nothing
    probs = rng.dirichlet(np.ones(4), size=30)
    ref = np.mean([entropy(t, q) for t, q in zip(true, probs)])
    assert kl_to_truth(true, 3.0 * probs) == pytest.approx(ref, rel=1e-12)  # rows renormalised
    assert kl_to_truth(true, true) == pytest.approx(0.0, abs=1e-15)
    missing = true.copy()
    missing[1] = [1.0, 0.0, 0.0, 0.0]
    assert kl_to_truth(true, missing) == np.inf
    with pytest.raises(ValueError, match="true_probs"):
        kl_to_truth(true[:3], probs)
    with pytest.raises(ValueError, match="non-negative"):
        kl_to_truth(true, -probs)


def test_wasserstein_matches_scipy():
    rng = np.random.default_rng(2)
    values = np.array([-3, -2, -1, 0, 1])
    probs = rng.dirichlet(np.ones(5), size=20)
    counts = rng.multinomial(6, [0.1, 0.1, 0.1, 0.2, 0.5], size=20)
    got = wasserstein1(probs, counts, values)
    ref = [wasserstein_distance(values, values, p, c) for p, c in zip(probs, counts)]
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_wasserstein_to_small_panels_is_not_a_proper_score():
    """The expected W1 to a 3-annotator panel is lower for a point mass than for the truth.

    Exact expectation over every panel of n = 3 annotators drawn from p = (0.8, 0.2): for
    binary labels W1 is ``|k / n - q|`` (``k`` annotators say 1, the prediction puts ``q`` on
    1), so it is minimised by the median of ``k / n``, here 0, not by ``q = p_1``.
    """
    from scipy.stats import binom

    n, p1 = 3, 0.2
    k = np.arange(n + 1)
    weight = binom.pmf(k, n, p1)
    panels = np.stack([n - k, k], -1)  # [n + 1, 2] counts of labels 0 and 1

    def expected_w1(q1: float) -> float:
        probs = np.tile([1 - q1, q1], (n + 1, 1))
        return float(weight @ wasserstein1(probs, panels, [0, 1]))

    truth, point_mass = expected_w1(p1), expected_w1(0.0)
    assert truth == pytest.approx(weight @ np.abs(k / n - p1), rel=1e-12)  # 0.2048
    assert point_mass == pytest.approx(p1, rel=1e-12)  # E[k / n]
    assert point_mass < truth
    grid = np.linspace(0, 1, 101)
    assert grid[np.argmin([expected_w1(q) for q in grid])] == 0.0


class _Lookup(AnnotatorModel):
    """A fixed distribution per item (the item's index is its only feature)."""

    def __init__(self, probs: np.ndarray) -> None:
        super().__init__(1, (1, 2, 3), seed=0)
        self.register_buffer("table", torch.as_tensor(probs, dtype=torch.float32))
        self.fitted = True  # nothing to train

    def _label_log_probs(self, z, generator, n_samples):
        idx = torch.round(z[:, 0] * self.x_scale[0] + self.x_loc[0]).long()
        return self.table[idx].log()

    def _train_loss(self, z, counts, generator):  # nothing to train: the table is fixed
        return -(counts * self._label_log_probs(z, generator, None)).sum(-1)


def test_evaluate_on_a_model_with_known_probabilities():
    rng = np.random.default_rng(3)
    true = rng.dirichlet(np.full(3, 0.3), size=300)
    counts = np.stack([rng.multinomial(6, p) for p in true])
    lists = [np.repeat([1, 2, 3], c).tolist() for c in counts]
    model = _Lookup(true)
    x = np.arange(300, dtype=np.float32)[:, None]
    res = evaluate(model, x, lists, seed=0)
    assert res["nll"] == pytest.approx(-(counts * np.log(true)).sum() / counts.sum(), rel=1e-5)
    # every item has 6 annotations: item and annotation averages coincide
    assert res["nll_item"] == pytest.approx(res["nll"], rel=1e-6)
    assert res["std_rmse"] == pytest.approx(std_rmse(true, counts, [1, 2, 3]), rel=1e-5)
    assert res["w1"] == pytest.approx(wasserstein1(true, counts, [1, 2, 3]).mean(), rel=1e-5)
    assert res["nll_mc_se"] == 0.0
    # annotators simulated from the true distributions agree about as much as the humans
    assert abs(res["kappa_sim"] - res["kappa_human"]) < 0.06


def _exact_panel_std(p: np.ndarray, n: int, values: np.ndarray) -> float:
    """E[ddof-0 std of n iid draws from p], summing over every count vector (multinomial)."""
    from itertools import product

    from scipy.stats import multinomial

    total = 0.0
    for c in product(range(n + 1), repeat=len(p)):
        if sum(c) != n:
            continue
        c = np.array(c)
        mean = c @ values / n
        total += multinomial.pmf(c, n, p) * np.sqrt(max(c @ values**2 / n - mean**2, 0.0))
    return total


def test_panel_std_matches_exact_multinomial_expectation():
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.ones(3), size=5)
    model = _Lookup(probs)
    x = np.arange(5, dtype=np.float32)[:, None]
    sizes = np.array([1, 2, 3, 5, 8])
    est = panel_std(model, x, sizes, panels=4000, seed=0)
    exact = [_exact_panel_std(probs[i], int(n), np.array([1.0, 2, 3])) for i, n in enumerate(sizes)]
    assert est[0] == 0.0  # one annotator: no spread
    np.testing.assert_allclose(est, exact, atol=0.02)
    # the expected panel std is below the population std (ddof 0 and Jensen)
    pop = distribution_moments(probs, [1, 2, 3])[1]
    assert (est[1:] < pop[1:]).all()
    with pytest.raises(ValueError, match="panel_sizes"):
        panel_std(model, x, sizes[:3])
    human = [[1, 1, 2, 3], [2, 2], [1, 3, 3], [1, 2, 3, 3, 3], [2]]
    res = evaluate(model, x, human, seed=0)  # panels of the humans' sizes, seed + 2
    sd = np.array([np.std(h) for h in human[:4]])
    sim = panel_std(model, x[:4], [4, 2, 3, 5], panels=64, seed=2)
    assert res["std_rmse_panel"] == pytest.approx(np.sqrt(np.mean((sim - sd) ** 2)), rel=1e-9)
