"""Tail ESS, rank R-hat and the improved Geyer estimate: known cases, ArviZ on the same chains."""

from __future__ import annotations

import logging
import math

import numpy as np
import pytest
import torch

from samplers.diagnostics import ess, ess_tail, rhat, split_rhat, summary


def _ar1(rng: np.random.Generator, c: int, n: int, rho: float, d: int = 1) -> np.ndarray:
    """``c`` stationary AR(1) chains of ``n`` draws with unit marginal variance."""
    x = np.empty((c, n, d))
    x[:, 0] = rng.normal(size=(c, d))
    eps = rng.normal(size=(c, n, d)) * math.sqrt(1 - rho**2)
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + eps[:, t]
    return x


def test_tail_ess_of_iid_chains_is_the_draw_count():
    x = np.random.default_rng(0).standard_t(3, size=(4, 2000, 2))  # heavy tails
    assert np.all(np.abs(ess_tail(x) / 8000 - 1) < 0.15)
    assert ess_tail(torch.tensor(x)) == pytest.approx(ess_tail(x))


def test_tail_ess_sees_a_chain_that_rarely_visits_a_tail():
    """Bulk-mixing chains whose excursions to a tail come in long runs: the bulk ESS stays
    large, the tail ESS is far smaller."""
    rng = np.random.default_rng(1)
    x = rng.normal(size=(4, 4000))
    for chain in range(4):  # tail visits of 50 draws, four per chain (5% of the draws)
        for start in rng.integers(0, 3950, size=4):
            x[chain, start : start + 50] += 6.0
    bulk, tail = ess(x)[0], ess_tail(x)[0]
    assert bulk > 1000 and tail < bulk / 3


def test_rank_rhat_flags_chains_that_differ_only_in_scale():
    rng = np.random.default_rng(2)
    x = rng.normal(size=(4, 1000)) * np.array([1.0, 1.0, 1.0, 3.0])[:, None]
    assert split_rhat(x)[0] < 1.01  # same location: the bulk R-hat misses it
    assert rhat(x)[0] > 1.05
    good = rng.normal(size=(4, 1000, 3))
    assert np.all(np.abs(rhat(good) - 1) < 0.01)
    assert np.all(rhat(good) >= split_rhat(good))


def test_improved_estimate_on_antithetic_chains():
    """An antithetic AR(1) chain (rho = -0.5) has ESS = N (1 - rho) / (1 + rho) = 3 N."""
    x = _ar1(np.random.default_rng(3), 4, 5000, -0.5)
    assert ess(x, rank=False)[0] / (3 * 20000) == pytest.approx(1.0, rel=0.15)


def test_tail_ess_rejects_bad_levels():
    x = np.random.default_rng(4).normal(size=(2, 100))
    for probs in [(0.05,), (0.0, 0.95), (0.05, 1.5)]:
        with pytest.raises(ValueError, match="probs"):
            ess_tail(x, probs)
    assert np.isnan(ess_tail(np.zeros((2, 50)))[0])  # constant draws: undefined


@pytest.mark.parametrize(
    "c, n, rho, seed",
    [(4, 1000, 0.9, 7), (4, 200, 0.5, 2), (2, 500, -0.3, 0), (8, 100, 0.0, 1), (3, 300, -0.6, 0)],
)
def test_equal_to_arviz_on_the_same_chains(c: int, n: int, rho: float, seed: int):
    """Seeds where the ESS without the improved estimate was 0.02-15% off ArviZ's."""
    az = pytest.importorskip("arviz")
    logging.getLogger("arviz").setLevel(logging.ERROR)
    x = _ar1(np.random.default_rng(seed), c, n, rho, d=3)
    x[..., 1] = np.exp(x[..., 1])  # skewed
    x[..., 2] = x[..., 2] ** 3  # heavy-tailed
    for j in range(3):
        xj = x[..., j]
        assert ess(x)[j] == pytest.approx(az.ess(xj, method="bulk"), rel=1e-10)
        assert ess(x, rank=False)[j] == pytest.approx(az.ess(xj, method="mean"), rel=1e-10)
        assert ess_tail(x)[j] == pytest.approx(az.ess(xj, method="tail"), rel=1e-10)
        assert rhat(x)[j] == pytest.approx(az.rhat(xj, method="rank"), rel=1e-12)


def test_summary_equals_the_four_diagnostics_one_by_one():
    x = np.random.default_rng(5).standard_t(3, size=(4, 300, 5))
    x[..., 0] = np.round(x[..., 0])  # ties
    got = summary(x)
    want = {"ess_bulk": ess(x), "ess_tail": ess_tail(x), "rhat_split": split_rhat(x)}
    want["rhat"] = rhat(x)
    assert set(got) == set(want)
    for k in want:
        np.testing.assert_array_equal(got[k], want[k])
