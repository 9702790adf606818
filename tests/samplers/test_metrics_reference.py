"""Sampler metrics against independent references on random and edge-case inputs: SciPy
distances and densities, linear-programming optimal transport, closed forms; argument checks
that name the argument."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import linprog
from scipy.spatial.distance import cdist, pdist
from scipy.stats import chi2, multivariate_normal, wasserstein_distance

from samplers.metrics import (
    energy_distance,
    expected_squared_norm,
    histogram_distance,
    interatomic_distance_distance,
    mmd,
    mode_coverage,
    mode_weight_tv,
    mode_weights,
    relative_error,
    wasserstein_1d,
)
from samplers.targets import DoubleWell4, GaussianMixture


def _kernel_mean(a, b, bws, drop_diagonal=False):
    k = sum(np.exp(-cdist(a, b, "sqeuclidean") / (2 * h * h)) for h in bws)
    if drop_diagonal:
        n = len(a)
        return (k.sum() - np.trace(k)) / (n * (n - 1))
    return k.mean()


def test_mmd_is_the_v_statistic_on_random_inputs():
    rng = np.random.default_rng(0)
    for trial in range(20):
        d, n, m = int(rng.integers(1, 4)), int(rng.integers(2, 50)), int(rng.integers(2, 50))
        x, y = rng.normal(size=(n, d)) * 3, rng.normal(size=(m, d)) * 3 + 1
        bws = [1.0, 2.0, 5.0, 10.0, 20.0] if trial % 2 else [float(rng.uniform(0.1, 3))]
        v = _kernel_mean(x, x, bws) + _kernel_mean(y, y, bws) - 2 * _kernel_mean(x, y, bws)
        got = mmd(x, y, bws if len(bws) > 1 else bws[0], block_size=int(rng.integers(1, 20)))
        assert got == pytest.approx(v, rel=1e-6, abs=1e-9)
        # the V-statistic keeps the diagonal: it exceeds the unbiased U-statistic by
        # (k(0) - mean off-diagonal k) / n per sample set (k(0) = number of kernels)
        u = (
            _kernel_mean(x, x, bws, True)
            + _kernel_mean(y, y, bws, True)
            - 2 * _kernel_mean(x, y, bws)
        )
        gap = (len(bws) - _kernel_mean(x, x, bws, True)) / n + (
            len(bws) - _kernel_mean(y, y, bws, True)
        ) / m
        assert got - u == pytest.approx(gap, rel=1e-5, abs=1e-9)
    # one sample each: the V-statistic is 2 sum_h (1 - k_h(x, y))
    x, y = np.array([[0.0, 0.0]]), np.array([[1.0, 1.0]])
    assert mmd(x, y, 1.0) == pytest.approx(2 * (1 - np.exp(-1.0)))
    assert mmd(x, y, 1.0, squared=False) == pytest.approx(np.sqrt(2 * (1 - np.exp(-1.0))))


def test_mmd_matches_the_closed_form_for_gaussians_of_unequal_scales():
    # x ~ N(a, s1^2 I), y ~ N(b, s2^2 I): E exp(-|x - y|^2 / (2 h^2)) =
    # (h^2 / v)^(d/2) exp(-|a - b|^2 / (2 v)), v = h^2 + s1^2 + s2^2
    def ek(a, b, s1, s2, h):
        v = h * h + s1 * s1 + s2 * s2
        return (h * h / v) ** (len(a) / 2) * np.exp(-np.sum((a - b) ** 2) / (2 * v))

    a, b, s1, s2, bws, n = np.zeros(2), np.array([1.0, -0.5]), 1.0, 1.5, [1.0, 2.0, 5.0], 1000
    pop = sum(ek(a, a, s1, s1, h) + ek(b, b, s2, s2, h) - 2 * ek(a, b, s1, s2, h) for h in bws)
    bias = sum((1 - ek(a, a, s1, s1, h)) / n + (1 - ek(b, b, s2, s2, h)) / n for h in bws)
    vals = []
    for seed in range(8):
        rng = np.random.default_rng(seed)
        vals.append(mmd(rng.normal(size=(n, 2)) * s1 + a, rng.normal(size=(n, 2)) * s2 + b, bws))
    se = np.std(vals, ddof=1) / np.sqrt(len(vals))
    assert abs(np.mean(vals) - (pop + bias)) < 4 * se + 1e-3


@pytest.mark.parametrize(
    ("args", "kwargs", "pattern"),
    [
        ((np.zeros((0, 2)), np.zeros((3, 2))), {}, "x must be a non-empty"),
        ((np.zeros((3, 2)), np.zeros((3, 2, 1))), {}, "y must be a non-empty"),
        ((np.zeros((3, 2)), np.full((3, 2), np.inf)), {}, "y contains non-finite"),
        ((np.zeros((3, 2)), np.zeros((3, 2))), {"bandwidths": []}, "bandwidths"),
        ((np.zeros((3, 2)), np.zeros((3, 2))), {"bandwidths": np.nan}, "bandwidths"),
        ((np.zeros((3, 2)), np.zeros((3, 2))), {"block_size": 0}, "block_size"),
    ],
)
def test_mmd_argument_errors_name_the_argument(args, kwargs, pattern):
    with pytest.raises(ValueError, match=pattern):
        mmd(*args, **kwargs)


@pytest.fixture(scope="module")
def mixture_and_samples():
    rng = np.random.default_rng(3)
    k, d = 5, 2
    means = torch.tensor(rng.uniform(-5, 5, (k, d)))
    scales = torch.tensor(rng.uniform(0.3, 1.5, (k, d)))
    weights = torch.tensor(rng.dirichlet(np.ones(k)))
    mix = GaussianMixture(means, scales, weights)
    x = mix.sample(2000, seed=0)
    xn, mn, sn, wn = x.numpy(), means.numpy(), scales.numpy(), weights.numpy()
    dens = np.stack(
        [wn[j] * multivariate_normal(mn[j], np.diag(sn[j] ** 2)).pdf(xn) for j in range(k)], 1
    )
    return mix, x, dens / dens.sum(1, keepdims=True)


def test_mode_weights_and_tv_match_scipy_responsibilities(mixture_and_samples):
    mix, x, resp = mixture_and_samples
    ref = resp.mean(0)
    np.testing.assert_allclose(mode_weights(x, mix).numpy(), ref, atol=1e-12)
    tv = 0.5 * np.abs(ref - mix.weights.numpy()).sum()
    assert mode_weight_tv(x, mix) == pytest.approx(tv, abs=1e-12)
    assert mode_weight_tv(x.numpy(), mix) == pytest.approx(tv, abs=1e-12)


@pytest.mark.parametrize(("quantile", "min_count"), [(0.999, 1), (0.5, 30), (0.9, 200)])
def test_mode_coverage_matches_a_direct_count(mixture_and_samples, quantile, min_count):
    mix, x, resp = mixture_and_samples
    xn, mn, sn = x.numpy(), mix.means.numpy(), mix.scales.numpy()
    k = resp.argmax(1)
    inside = (((xn - mn[k]) / sn[k]) ** 2).sum(1) <= chi2.ppf(quantile, xn.shape[1])
    expected = int((np.bincount(k[inside], minlength=len(mn)) >= min_count).sum())
    assert mode_coverage(x, mix, quantile, min_count) == expected


def test_mode_coverage_of_samples_from_one_component():
    mix = GaussianMixture(torch.tensor([[-10.0, 0.0], [10.0, 0.0]]), 1.0)
    x = torch.randn(50, 2, generator=torch.Generator().manual_seed(0)) * 0.5 + mix.means[0]
    assert mode_coverage(x, mix) == 1
    assert mode_weight_tv(x, mix) == pytest.approx(0.5, abs=1e-12)


@pytest.mark.parametrize(
    "x", [np.zeros((0, 2)), np.zeros((3, 3)), np.full((3, 2), np.nan)], ids=["empty", "dim", "nan"]
)
def test_mode_metrics_reject_bad_samples(mixture_and_samples, x):
    mix = mixture_and_samples[0]
    for f in (mode_weights, mode_weight_tv, mode_coverage):
        with pytest.raises(ValueError, match="x "):
            f(x, mix)


def test_expected_squared_norm_and_relative_error():
    x = np.random.default_rng(4).normal(size=(100, 3))
    assert expected_squared_norm(x) == pytest.approx(np.mean(np.sum(x**2, 1)), rel=1e-14)
    assert relative_error(1.5, 2.0) == 0.25
    assert relative_error(-1.0, -2.0) == 0.5
    assert relative_error(torch.tensor(3.0), np.float64(2.0)) == 0.5
    for args, pattern in (
        ((np.nan, 1.0), "estimate must be finite"),
        ((1.0, np.inf), "truth must be finite"),
        ((1.0, 0.0), "truth must be non-zero"),
        (("1", 1.0), "estimate must be a finite number"),
        ((1.0, [1.0, 2.0]), "truth must be one finite number"),
    ):
        with pytest.raises(ValueError, match=pattern):
            relative_error(*args)


def _w_lp(u, v, uw, vw, p):
    """W_p by linear programming over transport plans (independent of quantile functions)."""
    uw, vw = uw / uw.sum(), vw / vw.sum()
    n, m = len(u), len(v)
    rows = [np.kron(np.eye(n)[i], np.ones(m)) for i in range(n)]
    cols = [np.kron(np.ones(n), np.eye(m)[j]) for j in range(m)]
    cost = (np.abs(u[:, None] - v[None, :]) ** p).ravel()
    res = linprog(cost, A_eq=np.array(rows + cols), b_eq=np.concatenate([uw, vw]), bounds=(0, None))
    assert res.success
    return res.fun ** (1 / p)


def test_wasserstein_1d_matches_scipy_and_linear_programming():
    rng = np.random.default_rng(5)
    for trial in range(40):
        n, m = int(rng.integers(1, 10)), int(rng.integers(1, 10))
        u, v = rng.normal(size=n), rng.normal(size=m)
        if trial % 3 == 0:  # repeated support points
            u, v = np.round(u), np.round(v)
        uw, vw = rng.uniform(0, 1, n), rng.uniform(0, 1, m)
        if trial % 4 == 0 and n > 1:
            uw[0] = 0.0
        assert wasserstein_1d(u, v, uw, vw, 1) == pytest.approx(
            wasserstein_distance(u, v, uw, vw), abs=1e-12
        )
        assert wasserstein_1d(u, v, uw, vw, 1) == pytest.approx(_w_lp(u, v, uw, vw, 1), abs=1e-7)
        assert wasserstein_1d(u, v, uw, vw, 2) == pytest.approx(_w_lp(u, v, uw, vw, 2), abs=1e-7)


@pytest.mark.parametrize(
    ("args", "pattern"),
    [
        # a NaN value gave a NaN distance
        (([np.nan, 1.0], [0.0], [1.0, 1.0], [1.0]), "u_values contains non-finite"),
        (([0.0], [np.inf], [1.0], [1.0]), "v_values contains non-finite"),
        (([0.0], [1.0], [np.nan], [1.0]), "u_weights contains non-finite"),
        (([], [1.0], [], [1.0]), "u_values must be a non-empty 1-D"),
        (([0.0, 1.0], [0.0], [1.0], [1.0]), "u_values and u_weights must have equal lengths"),
        (([0.0], [0.0], [1.0], [-1.0]), "v_weights must be non-negative"),
        (([0.0], [0.0], [0.0], [1.0]), "u_weights must have a positive sum"),
    ],
)
def test_wasserstein_1d_argument_errors_name_the_argument(args, pattern):
    with pytest.raises(ValueError, match=pattern):
        wasserstein_1d(*args)


def _hist_reference(v, r, metric):
    lo, hi = r.min(), r.max()
    pad = 0.1 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, 201)
    c = 0.5 * (edges[1:] + edges[:-1])
    hv = np.histogram(np.clip(v, lo - pad, hi + pad), edges)[0].astype(float)
    hr = np.histogram(r, edges)[0].astype(float)
    if metric == "w1":
        return wasserstein_distance(c, c, hv, hr)
    if metric == "tv":
        return 0.5 * np.abs(hv / hv.sum() - hr / hr.sum()).sum()
    used = (hv + hr) > 0
    return _w_lp(c[used], c[used], hv[used], hr[used], 2)


@pytest.mark.parametrize("metric", ["w1", "w2", "tv"])
def test_histogram_distance_matches_scipy_on_binned_values(metric):
    rng = np.random.default_rng(6)
    values = np.concatenate([rng.normal(size=3000), [50.0, -np.inf]])  # clipped to edge bins
    ref = rng.normal(0.3, 1.2, size=5000)
    expected = _hist_reference(values, ref, metric)
    assert histogram_distance(values, ref, metric) == pytest.approx(expected, abs=1e-7)


@pytest.fixture(scope="module")
def dw4_pair():
    target = DoubleWell4()
    g = torch.Generator().manual_seed(0)
    a = target.init_positions(400, g).double()
    b = target.init_positions(600, g).double() * 1.2
    return target, a, b


@pytest.mark.parametrize("metric", ["w1", "w2", "tv"])
def test_interatomic_distance_histograms_match_scipy_pdist(dw4_pair, metric):
    target, a, b = dw4_pair
    da = np.concatenate([pdist(r.reshape(4, 2)) for r in a.numpy()])
    db = np.concatenate([pdist(r.reshape(4, 2)) for r in b.numpy()])
    expected = _hist_reference(da, db, metric)
    assert interatomic_distance_distance(a, b, target, metric) == pytest.approx(expected, abs=1e-7)
    # arrays are accepted too (they raised AttributeError)
    assert interatomic_distance_distance(a.numpy(), b.numpy(), target, metric) == pytest.approx(
        expected, abs=1e-7
    )


@pytest.mark.parametrize("metric", ["w1", "w2", "tv"])
def test_energy_histograms_match_the_dw4_formula(dw4_pair, metric):
    target, a, b = dw4_pair

    def e(x):  # ANCHORS: E = sum_{i<j} 0.9 (r - 4)^4 - 4 (r - 4)^2
        r = pdist(x.reshape(4, 2))
        return float(np.sum(0.9 * (r - 4) ** 4 - 4 * (r - 4) ** 2))

    ea, eb = (np.array([e(x) for x in z.numpy()]) for z in (a, b))
    # the target computes energies in its own dtype (float32 here)
    with torch.no_grad():
        ta, tb = (target.energy(z.to(target._dtype())).double().numpy() for z in (a, b))
    np.testing.assert_allclose(ta, ea, rtol=1e-5, atol=1e-3)
    expected = _hist_reference(ta, tb, metric)
    assert energy_distance(a, b, target, metric) == pytest.approx(expected, abs=1e-7)
    assert energy_distance(a.numpy(), b.numpy(), target, metric) == pytest.approx(
        expected, abs=1e-7
    )


@pytest.mark.parametrize("fn", [energy_distance, interatomic_distance_distance])
def test_particle_histograms_name_the_bad_argument(dw4_pair, fn):
    target, a, b = dw4_pair
    bad = a.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="samples contains NaN"):
        fn(bad, b, target)
    with pytest.raises(ValueError, match="reference contains"):
        fn(a, bad, target)
    with pytest.raises(ValueError, match=r"samples must be a non-empty \[n, 8\]"):
        fn(a[:, :3], b, target)
    with pytest.raises(ValueError, match=r"reference must be a non-empty \[n, 8\]"):
        fn(a, b[:0], target)
    with pytest.raises(ValueError, match="metric"):
        fn(a, b, target, "kl")
