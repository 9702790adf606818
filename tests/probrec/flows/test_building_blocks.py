"""Interval masses, rational-quadratic splines and Monte Carlo helpers against independent
computations (scipy distributions, autograd derivatives, closed forms)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import logistic, norm

from probrec.flows.base import (
    item_chunks,
    map_item_chunks,
    normal_points,
    replicate_log_mean,
)
from probrec.flows.discrete import interval_log_mass
from probrec.flows.spline import rq_spline


@pytest.mark.parametrize(("base", "dist"), [("logistic", logistic), ("normal", norm)])
def test_interval_mass_matches_scipy_including_far_tails(base, dist):
    cuts = np.array([-np.inf, -40.0, -8.0, -1.0, -0.2, 0.3, 2.0, 9.0, 35.0, np.inf])
    lo, hi = torch.tensor(cuts[:-1]), torch.tensor(cuts[1:])
    got = interval_log_mass(lo, hi, base).numpy()
    # scipy: log(F(b) - F(a)) by the survival function right of 0, the CDF left of it
    with np.errstate(divide="ignore", invalid="ignore"):
        ref = np.where(
            (cuts[:-1] + cuts[1:]) > 0,
            dist.logsf(cuts[:-1]) + np.log1p(-np.exp(dist.logsf(cuts[1:]) - dist.logsf(cuts[:-1]))),
            dist.logcdf(cuts[1:])
            + np.log1p(-np.exp(dist.logcdf(cuts[:-1]) - dist.logcdf(cuts[1:]))),
        )
    np.testing.assert_allclose(got, ref, rtol=1e-9)
    assert abs(np.exp(got).sum() - 1) < 1e-14
    assert interval_log_mass(torch.tensor([-np.inf]), torch.tensor([np.inf]), base).item() == 0


def test_interval_mass_gradients_are_finite_at_infinite_ends():
    t = torch.tensor([-0.5, 0.4, 1.2], dtype=torch.float64, requires_grad=True)
    inf = torch.tensor([math.inf], dtype=torch.float64)
    for base in ("logistic", "normal"):
        lm = interval_log_mass(torch.cat([-inf, t]), torch.cat([t, inf]), base)
        (g,) = torch.autograd.grad(lm.sum(), t)
        assert bool(torch.isfinite(g).all())


def _random_spline(batch: int, bins: int, seed: int, scale: float = 2.0):
    g = torch.Generator().manual_seed(seed)
    w = scale * torch.randn(batch, bins, generator=g, dtype=torch.float64)
    h = scale * torch.randn(batch, bins, generator=g, dtype=torch.float64)
    d = scale * torch.randn(batch, bins - 1, generator=g, dtype=torch.float64)
    return w, h, d


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), bins=st.integers(2, 12))
def test_spline_is_monotone_invertible_with_correct_log_derivative(seed, bins):
    w, h, d = _random_spline(3, bins, seed)
    x = torch.linspace(-6, 6, 801, dtype=torch.float64)[:, None].expand(-1, 3).contiguous()
    x.requires_grad_(True)
    y, logdet = rq_spline(x, w, h, d, bound=4.0)
    assert bool((y.diff(dim=0) > 0).all())
    (dydx,) = torch.autograd.grad(y.sum(), x)
    torch.testing.assert_close(logdet, dydx.log(), rtol=1e-9, atol=1e-9)
    back, logdet_inv = rq_spline(y.detach(), w, h, d, bound=4.0, inverse=True)
    torch.testing.assert_close(back, x.detach(), rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(logdet_inv, -logdet.detach(), rtol=1e-8, atol=1e-8)
    outside = x.detach().abs() >= 4.0
    assert torch.equal(y.detach()[outside], x.detach()[outside])


def test_spline_with_uniform_bins_and_unit_derivatives_is_the_identity():
    w = torch.zeros(1, 6, dtype=torch.float64)
    d = torch.full((1, 5), math.log(math.expm1(1.0 - 1e-3)), dtype=torch.float64)
    x = torch.linspace(-5, 5, 101, dtype=torch.float64)[:, None]
    y, logdet = rq_spline(x, w, w, d)
    torch.testing.assert_close(y, x, rtol=0, atol=1e-12)
    torch.testing.assert_close(logdet, torch.zeros_like(x), rtol=0, atol=1e-12)


def test_replicate_mean_and_standard_error_match_direct_computation():
    g = torch.Generator().manual_seed(0)
    logp = torch.randn(400, 3, generator=g, dtype=torch.float64)
    w = logp.exp()
    est_r, se_r = replicate_log_mean(logp.reshape(8, 50, 3))
    per = w.reshape(8, 50, 3).mean(1)
    torch.testing.assert_close(est_r, per.mean(0).log())
    torch.testing.assert_close(se_r, per.std(0) / (math.sqrt(8) * per.mean(0)))


def test_normalised_replicate_mean_and_jackknife_match_a_direct_loop():
    g = torch.Generator().manual_seed(1)
    log_w = torch.randn(8, 50, 4, 3, generator=g, dtype=torch.float64) - 30.0  # tiny weights
    est, se = replicate_log_mean(log_w, normalise=True)
    w = log_w.exp().numpy()
    mean = w.mean((0, 1))
    np.testing.assert_allclose(est.numpy(), np.log(mean / mean.sum(-1, keepdims=True)))
    np.testing.assert_allclose(est.exp().sum(-1).numpy(), 1.0, rtol=1e-12)
    per = w.mean(1)  # [8, 4, 3]
    loo = []
    for i in range(8):
        m = np.delete(per, i, 0).mean(0)
        loo.append(np.log(m / m.sum(-1, keepdims=True)))
    loo = np.stack(loo)
    direct = np.sqrt(7 / 8 * ((loo - loo.mean(0)) ** 2).sum(0))
    np.testing.assert_allclose(se.numpy(), direct, rtol=1e-9)


def test_quasi_random_normals_are_normal_and_even():
    from scipy.stats import kstest

    g = torch.Generator().manual_seed(3)
    pts = normal_points(4096, 3, g, torch.zeros((), dtype=torch.float64))
    assert pts.shape == (8, 512, 3)
    flat = pts.reshape(-1, 3).numpy()
    for j in range(3):
        assert kstest(flat[:, j], "norm").pvalue > 0.01
    # far smaller error than independent draws on a smooth integrand: E[x0^2 + x1 x2] = 1
    vals = (pts[..., 0] ** 2 + pts[..., 1] * pts[..., 2]).mean(1)
    assert abs(float(vals.mean()) - 1) < 0.01
    again = normal_points(4096, 3, torch.Generator().manual_seed(3), pts)
    assert torch.equal(again, pts)
    previous = torch.get_default_dtype()
    try:  # the first point of each scramble followed the default dtype (2e-8 apart)
        torch.set_default_dtype(torch.float64)
        in64 = normal_points(4096, 3, torch.Generator().manual_seed(3), pts)
    finally:
        torch.set_default_dtype(previous)
    assert torch.equal(in64, pts)


@given(st.integers(0, 300), st.integers(1, 10**7))
@settings(max_examples=50, deadline=None)
def test_item_chunks_cover_every_item_once_within_the_budget(n, per_item):
    chunks = item_chunks(n, per_item, torch.device("cpu"))
    covered = [i for sl in chunks for i in range(n)[sl]]
    assert covered == list(range(n))
    size = max(1, 2**21 // per_item)
    assert all(sl.stop - sl.start <= size for sl in chunks)
    assert len(chunks) == -(-n // size)


def test_map_item_chunks_concatenates_tensors_and_tuples_along_the_item_axis():
    x = torch.arange(30.0).reshape(2, 15)  # items on axis 1
    cpu = torch.device("cpu")
    out = map_item_chunks(lambda sl: x[:, sl] * 2, 15, 2**20, cpu, dim=1)  # 2 items a chunk
    torch.testing.assert_close(out, x * 2)
    a, b = map_item_chunks(lambda sl: (x[0, sl], x[:, sl].T), 15, 2**21 // 4, cpu)
    torch.testing.assert_close(a, x[0])
    torch.testing.assert_close(b, x.T)
    empty = map_item_chunks(lambda sl: x[0, sl], 0, 1, cpu)
    assert empty.shape == (0,)


@pytest.mark.parametrize("kind", ["softmax", "integer"])
def test_chunked_monte_carlo_estimates_equal_one_pass(kind, monkeypatch):
    """The per-label importance-sampling estimates, the per-item moments and the panel
    likelihood of both flows draw their points for all items first, so computing them one item
    at a time gives the numbers of one pass over all items."""
    import probrec.flows.base as base
    from probrec.flows import ConditionalIntegerFlow, ConditionalSoftmaxFlow

    x = torch.randn(23, 5, generator=torch.Generator().manual_seed(0))
    if kind == "softmax":
        model = ConditionalSoftmaxFlow(5, (0, 1, 2), latent="item", n_eval_samples=64, seed=1)
    else:
        model = ConditionalIntegerFlow(5, range(1, 6), item_latent=1, n_eval_samples=64, seed=1)
    monkeypatch.setitem(base.CHUNK_ELEMENTS, "cpu", 2**40)
    model.fitted = True  # initial (or hand-set) weights, no fit
    whole, whole_se = model.label_log_probs_se(x, seed=3)
    whole_moments = model.item_moments(x, seed=3, n_samples=64)
    ann = torch.randint(0, 3, (23, 4), generator=torch.Generator().manual_seed(2))
    if kind == "integer":
        ann = ann + 2
    whole_panel = model.panel_log_prob(x, ann, seed=3)
    monkeypatch.setitem(base.CHUNK_ELEMENTS, "cpu", 1)  # one item per chunk
    assert len(item_chunks(23, 2, torch.device("cpu"))) == 23
    one, one_se = model.label_log_probs_se(x, seed=3)
    torch.testing.assert_close(one, whole, rtol=0, atol=1e-6)
    torch.testing.assert_close(one_se, whole_se, rtol=0, atol=1e-6)
    for a, b in zip(model.item_moments(x, seed=3, n_samples=64), whole_moments):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-6)
    torch.testing.assert_close(model.panel_log_prob(x, ann, seed=3), whole_panel, rtol=0, atol=1e-6)
    assert torch.allclose(one.exp().sum(-1), torch.ones(23), atol=1e-6)


def test_softmax_flow_coupling_gradient_matches_a_finite_difference():
    """The coupling's scale and shift differentiate correctly in an output weight."""
    from probrec.flows import ConditionalSoftmaxFlow

    flow = ConditionalSoftmaxFlow(6, (0, 1, 2, 3), latent="item", seed=0)
    layer = flow.couplings[0]
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        layer.out.weight.copy_(torch.randn(layer.out.weight.shape, generator=g))
    h = torch.randn(5, flow.encoder.out_dim, generator=g)
    e = torch.randn(7, 5, 4, generator=g) * layer.keep
    ctx = layer.context(h)
    s1, t1 = layer._scale_shift(e, ctx)
    (s1.sum() + t1.sum()).backward()
    grad = float(layer.out.weight.grad[1, 3])  # a moved coordinate's scale: not zero
    with torch.no_grad():
        w = layer.out.weight
        w[1, 3] += 1e-3
        up = sum(float(z.double().sum()) for z in layer._scale_shift(e, ctx))
        w[1, 3] -= 2e-3
        down = sum(float(z.double().sum()) for z in layer._scale_shift(e, ctx))
    assert abs(grad) > 0.1
    assert grad == pytest.approx((up - down) / 2e-3, rel=1e-2, abs=1e-3)
