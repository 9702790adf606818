"""Metrics and diagnostics on cases with known answers: closed forms, brute force, SciPy."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from samplers.metrics import (
    energy_distance,
    ess,
    expected_squared_norm,
    histogram_distance,
    interatomic_distance_distance,
    mmd,
    mode_coverage,
    mode_statistics,
    mode_weight_tv,
    mode_weights,
    relative_error,
    split_rhat,
    wasserstein_1d,
)
from samplers.targets import DoubleWell4, GaussianMixture, MoG40


def _brute_mmd2(x, y, bws=(1, 2, 5, 10, 20)):
    x, y = x.double(), y.double()

    def k(a, b):
        d2 = torch.cdist(a, b) ** 2
        return sum(torch.exp(-d2 / (2 * h * h)) for h in bws)

    return float(k(x, x).mean() + k(y, y).mean() - 2 * k(x, y).mean())


def test_mmd_matches_brute_force_and_is_block_invariant():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(333, 2, generator=g) * 5
    y = torch.randn(257, 2, generator=g) * 5 + 1.0
    ref = _brute_mmd2(x, y)
    for block in (17, 64, 1000):
        assert mmd(x, y, block_size=block) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert mmd(x, y, squared=False) == pytest.approx(math.sqrt(ref), rel=1e-6)
    assert mmd(y, x) == pytest.approx(ref, rel=1e-6)
    assert mmd(x, x) == pytest.approx(0.0, abs=1e-9)


def test_mmd_matches_the_closed_form_between_gaussians():
    # for N(m1, s^2 I) vs N(m2, s^2 I) in d dims with an RBF of bandwidth h:
    # E k(x, x') = (h^2 / (h^2 + 2 s^2))^(d/2) = c,
    # E k(x, y) = c exp(-|m1 - m2|^2 / (2 (h^2 + 2 s^2)))
    d, s, shift = 2, 1.0, torch.tensor([1.5, 0.0])
    truth = 0.0
    for h in (1.0, 2.0, 5.0, 10.0, 20.0):
        c = (h * h / (h * h + 2 * s * s)) ** (d / 2)
        truth += 2 * c - 2 * c * math.exp(-float(shift @ shift) / (2 * (h * h + 2 * s * s)))
    g = torch.Generator().manual_seed(1)
    n = 4000
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.randn(n, d, generator=g, dtype=torch.float64) + shift
    # the V-statistic is biased upwards by about (E k(x,x) - E k(x,x')) (1/n + 1/m)
    bias = sum(1 - (h * h / (h * h + 2)) for h in (1.0, 2.0, 5.0, 10.0, 20.0)) * 2 / n
    assert mmd(x, y) == pytest.approx(truth + bias, rel=0.05)


def test_mmd_rejects_bad_input():
    with pytest.raises(ValueError, match="dimension"):
        mmd(torch.zeros(3, 2), torch.zeros(3, 3))
    with pytest.raises(ValueError, match="non-finite"):
        mmd(torch.tensor([[math.nan, 0.0]]), torch.zeros(3, 2))
    with pytest.raises(ValueError, match="bandwidths"):
        mmd(torch.zeros(3, 2), torch.zeros(3, 2), bandwidths=(0.0,))


def test_mode_metrics_on_known_cases():
    target = MoG40()
    exact = target.sample(20_000, seed=0)
    stats_ = mode_statistics(exact, target)
    assert stats_["modes_covered"] == 40 and stats_["n_modes"] == 40
    # sampling variation of the TV for 20k exact draws is about 0.018
    assert stats_["mode_weight_tv"] < 0.03
    # soft weights are unbiased even for overlapping components
    big = target.sample(200_000, seed=3)
    assert torch.allclose(
        mode_weights(big, target), torch.full((40,), 1 / 40, dtype=torch.float64), atol=0.0015
    )
    # well-separated ring of 12 modes; samples from the first 4 only, equally:
    # TV = 0.5 (4 (1/4 - 1/12) + 8 / 12) = 2/3
    angle = torch.arange(12) * 2 * math.pi / 12
    ring = GaussianMixture(30 * torch.stack([angle.cos(), angle.sin()], -1), 1.0)
    part = GaussianMixture(ring.means[:4], 1.0).sample(8000, seed=1)
    assert mode_coverage(part, ring) == 4
    assert mode_weight_tv(part, ring) == pytest.approx(2 / 3, abs=0.02)
    w = mode_weights(ring.means[[0, 0, 3]], ring)
    assert float(w[0]) == pytest.approx(2 / 3) and float(w[3]) == pytest.approx(1 / 3)
    # a point far from every mode is assigned but does not cover it
    assert mode_coverage(torch.tensor([[500.0, 500.0]]), target) == 0
    with pytest.raises(TypeError, match="GaussianMixture"):
        mode_weights(exact, DoubleWell4())
    # settings that counted nothing, or everything, silently; another dimension (torch error)
    for q in (1.5, 0.0, float("nan")):
        with pytest.raises(ValueError, match="quantile"):
            mode_coverage(part, ring, quantile=q)
    with pytest.raises(ValueError, match="min_count"):
        mode_coverage(part[:1], ring, min_count=0)
    with pytest.raises(ValueError, match="x must have 2 columns"):
        mode_weight_tv(torch.zeros(2, 3), ring)


def test_expected_squared_norm_relative_error():
    target = MoG40()
    x = target.sample(200_000, seed=2)
    est = expected_squared_norm(x)
    assert relative_error(est, target.expected_squared_norm()) < 0.01
    assert relative_error(11.0, 10.0) == pytest.approx(0.1)
    with pytest.raises(ValueError):
        relative_error(1.0, 0.0)
    with pytest.raises(ValueError, match="finite"):
        relative_error(float("nan"), 1.0)


def test_wasserstein_1d_matches_scipy_and_known_w2():
    rng = np.random.default_rng(0)
    u, v = rng.normal(size=300), rng.normal(1.0, 2.0, size=200)
    wu, wv = rng.random(300), rng.random(200)
    assert wasserstein_1d(u, v, wu, wv, p=1) == pytest.approx(
        stats.wasserstein_distance(u, v, wu, wv), rel=1e-9
    )
    # shifting a distribution by c moves it by exactly c in every W_p
    assert wasserstein_1d(u, u + 2.5, np.ones(300), np.ones(300), p=2) == pytest.approx(2.5)
    # two point masses with weights: W2^2 = 0.5 * 1^2
    assert wasserstein_1d(
        np.array([0.0, 1.0]), np.array([0.0]), np.ones(2), np.ones(1), p=2
    ) == pytest.approx(math.sqrt(0.5))
    # a negative weight gave 1.0; mismatched lengths an IndexError; p = 0 a ZeroDivisionError
    with pytest.raises(ValueError, match="non-negative"):
        wasserstein_1d([0.0, 1.0], [0.0], [2.0, -1.0], [1.0])
    with pytest.raises(ValueError, match="equal lengths"):
        wasserstein_1d([0.0, 1.0], [0.0], [1.0], [1.0])
    with pytest.raises(ValueError, match="p must be"):
        wasserstein_1d(u, v, wu, wv, p=0)


def test_histogram_distances():
    rng = np.random.default_rng(1)
    ref = rng.normal(size=20_000)
    assert histogram_distance(ref, ref) == 0.0
    assert histogram_distance(ref + 0.5, ref, "w1") == pytest.approx(0.5, abs=0.03)
    assert histogram_distance(ref + 0.5, ref, "w2") == pytest.approx(0.5, abs=0.03)
    tv = histogram_distance(rng.normal(size=20_000), ref, "tv")
    assert 0 < tv < 0.1
    # wild outliers are clipped into the edge bin instead of stretching the histogram
    wild = np.concatenate([ref, [1e9]])
    assert histogram_distance(wild, ref) < 0.01
    with pytest.raises(ValueError, match="metric"):
        histogram_distance(ref, ref, "kl")
    # infinite values (an energy outside a bounded support) count in the edge bin like other
    # wild values (they were dropped: 75% of the samples off the support changed nothing)
    off = np.concatenate([ref[:5000], np.full(15_000, np.inf)])
    assert histogram_distance(off, ref) > 1.0
    assert histogram_distance(off, ref) == pytest.approx(
        histogram_distance(np.concatenate([ref[:5000], np.full(15_000, 1e9)]), ref)
    )
    with pytest.raises(ValueError, match="NaN"):
        histogram_distance(np.full(10, np.nan), ref)
    with pytest.raises(ValueError, match="value_range"):
        histogram_distance(ref, ref, value_range=(np.nan, 1.0))


def test_energy_and_distance_histograms_of_particle_systems():
    target = DoubleWell4()
    g = torch.Generator().manual_seed(0)
    a, b = target.init_positions(3000, g), target.init_positions(3000, g)
    assert energy_distance(a, b, target) < 0.2 * float(target.energy(b).std())
    assert interatomic_distance_distance(a, b, target) < 0.05
    assert interatomic_distance_distance(a * 1.5, b, target) > 0.5


def test_ess_of_iid_and_ar1_chains():
    rng = np.random.default_rng(0)
    iid = rng.normal(size=(4, 2000, 2))
    e = ess(iid)
    assert np.all(np.abs(e / 8000 - 1) < 0.15)
    rho, n = 0.9, 5000
    x = np.zeros((4, n))
    eps = rng.normal(size=(4, n))
    for t in range(1, n):
        x[:, t] = rho * x[:, t - 1] + math.sqrt(1 - rho**2) * eps[:, t]
    expected = 4 * n * (1 - rho) / (1 + rho)
    assert ess(x)[0] == pytest.approx(expected, rel=0.25)
    assert ess(torch.tensor(x))[0] == pytest.approx(ess(x)[0])


def test_split_rhat_flags_chains_that_disagree():
    rng = np.random.default_rng(2)
    good = rng.normal(size=(4, 1000))
    assert abs(split_rhat(good)[0] - 1.0) < 0.01
    bad = good + np.array([0.0, 0.0, 0.0, 3.0])[:, None]
    assert split_rhat(bad)[0] > 1.1
    trending = good + np.linspace(0, 3, 1000)[None, :]  # a drift within each chain
    assert split_rhat(trending, rank=False)[0] > 1.1
    with pytest.raises(ValueError, match="4 draws"):
        split_rhat(np.zeros((2, 3)))
    # chains stuck at different points: the clearest failure to mix (was NaN)
    stuck = np.stack([np.zeros(50), np.ones(50)])
    assert split_rhat(stuck)[0] == np.inf and split_rhat(stuck, rank=False)[0] == np.inf
    assert np.isnan(split_rhat(np.zeros((2, 50)))[0])  # all draws equal: undefined
    with pytest.raises(ValueError, match="shape"):
        ess(np.zeros((0, 10)))
