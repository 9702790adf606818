"""The annotator flows' internals against independent computations.

The rational-quadratic spline against its formula written out here, bisection and finite
differences."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.flows.spline import rq_spline, spline_knots

# ---------------------------------------------------------------------------- the spline


def _raw(bins: int, scale: float, seed: int, dtype=torch.float32) -> list[torch.Tensor]:
    """Unconstrained parameters ``[1, bins]``, ``[1, bins]``, ``[1, bins - 1]``; a large
    ``scale`` makes flat bins (slopes down to ~1e-5) next to steep ones."""
    g = torch.Generator().manual_seed(seed)
    return [
        (scale * torch.randn(1, n, generator=g, dtype=torch.float64)).to(dtype)
        for n in (bins, bins, bins - 1)
    ]


def _reference_forward(x, xk, yk, dk):
    """Durkan et al.'s (2019) eq. 4 and its derivative, written out per element in float64
    with a plain search for the bin (identity outside the knots)."""
    xs, ys, ds = (np.asarray(t, dtype=np.float64) for t in (xk, yk, dk))
    y, dydx = np.array(x, dtype=np.float64), np.ones(len(x))
    for i, v in enumerate(np.asarray(x, dtype=np.float64)):
        if not xs[0] < v < xs[-1]:
            continue
        j = min(int(np.searchsorted(xs, v, side="right")) - 1, len(xs) - 2)
        w, h = xs[j + 1] - xs[j], ys[j + 1] - ys[j]
        s, xi = h / w, (v - xs[j]) / w
        den = s + (ds[j + 1] + ds[j] - 2 * s) * xi * (1 - xi)
        y[i] = ys[j] + h * (s * xi**2 + ds[j] * xi * (1 - xi)) / den
        num = ds[j + 1] * xi**2 + 2 * s * xi * (1 - xi) + ds[j] * (1 - xi) ** 2
        dydx[i] = s**2 * num / den**2
    return y, dydx


def _reference_inverse(y, xk, yk, dk):
    """The inverse by bisection on :func:`_reference_forward` (float64, 200 halvings)."""
    lo, hi = np.full(len(y), float(xk[0])), np.full(len(y), float(xk[-1]))
    for _ in range(200):
        mid = (lo + hi) / 2
        below = _reference_forward(mid, xk, yk, dk)[0] < y
        lo, hi = np.where(below, mid, lo), np.where(below, hi, mid)
    return (lo + hi) / 2


def _test_points(yk: torch.Tensor, n: int, bound: float = 4.0) -> torch.Tensor:
    """Points across ``(-bound, bound)`` plus every interior knot and its float neighbours."""
    inner = yk[0, 1:-1]
    up, down = torch.full_like(inner, 9.0), torch.full_like(inner, -9.0)
    grid = torch.linspace(-bound + 1e-3, bound - 1e-3, n, dtype=yk.dtype)
    return torch.cat([grid, inner, torch.nextafter(inner, up), torch.nextafter(inner, down)])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize(("bins", "scale", "seed"), [(4, 6.0, 4), (16, 10.0, 1), (8, 3.0, 3)])
def test_spline_inverse_is_accurate_in_flat_and_steep_bins(bins, scale, seed, dtype):
    """The inverse against bisection on the spline through the same knots: within a few
    times the error the input's rounding allows (``eps (|y| / f'(x) + |x|)``). The single
    root form ``2 c / (-b - sqrt(b^2 - 4 a c))`` cancelled where ``b < 0``: up to ~1000x that
    (2e-3 in x in float32, 5e-10 in float64)."""
    raw = _raw(bins, scale, seed, dtype)
    xk, yk, dk = spline_knots(*raw, 4.0, min_derivative=1e-3)
    y = _test_points(yk, 2001)
    x, logdet = rq_spline(y, *raw, inverse=True, min_derivative=1e-3)
    assert x.dtype == dtype and logdet.dtype == dtype
    ref = _reference_inverse(y.double().numpy(), xk[0], yk[0], dk[0])
    slope = _reference_forward(ref, xk[0], yk[0], dk[0])[1]
    eps = torch.finfo(dtype).eps
    allowed = 4 * eps * (np.abs(y.double().numpy()) / slope + np.abs(ref))
    err = np.abs(x.double().numpy() - ref)
    assert (err <= allowed).all(), f"worst {np.max(err / allowed):.1f}x 4 eps (|y| / f' + |x|)"


@pytest.mark.parametrize(("bins", "scale", "seed"), [(4, 1.0, 0), (8, 6.0, 2), (16, 10.0, 1)])
def test_float64_spline_matches_the_formula_round_trips_and_is_identity_in_the_tails(
    bins, scale, seed
):
    raw = _raw(bins, scale, seed, torch.float64)
    xk, yk, dk = spline_knots(*raw, 4.0, min_derivative=1e-3)
    x = torch.cat([_test_points(xk, 4001), torch.tensor([-50.0, -4.0, 4.0, 7.5])])
    y, logdet = rq_spline(x, *raw, min_derivative=1e-3)
    ref_y, ref_slope = _reference_forward(x.numpy(), xk[0], yk[0], dk[0])
    np.testing.assert_allclose(y.numpy(), ref_y, rtol=0, atol=1e-13)
    np.testing.assert_allclose(logdet.numpy(), np.log(ref_slope), rtol=0, atol=1e-9)
    back, logdet_inv = rq_spline(y, *raw, inverse=True, min_derivative=1e-3)
    # the round trip's error: the forward's rounding over the slope, and the inverse's own
    eps = torch.finfo(torch.float64).eps
    tol = 8 * eps * (np.abs(ref_y) / ref_slope + np.abs(x.numpy()))
    assert (np.abs(back.numpy() - x.numpy()) <= tol).all()
    np.testing.assert_allclose(logdet_inv.numpy(), -logdet.numpy(), rtol=0, atol=1e-7)
    tails = x.abs() >= 4.0
    assert torch.equal(y[tails], x[tails]) and torch.equal(back[tails], x[tails])
    assert bool((logdet[tails] == 0).all()) and bool((logdet_inv[tails] == 0).all())


def test_spline_log_derivative_and_parameter_gradients_match_finite_differences():
    raw = _raw(6, 4.0, 7, torch.float64)
    xk, yk, _ = spline_knots(*raw, 4.0)
    step = 1e-7
    for inverse, knots in ((False, xk), (True, yk)):
        # a grid, and points just past every interior knot (further than the step)
        x = torch.cat([torch.linspace(-3.9, 3.9, 301, dtype=torch.float64), knots[0, 1:-1] + 1e-5])
        up = rq_spline(x + step, *raw, inverse=inverse)[0]
        down = rq_spline(x - step, *raw, inverse=inverse)[0]
        fd = ((up - down) / (2 * step)).log()
        logdet = rq_spline(x, *raw, inverse=inverse)[1]
        torch.testing.assert_close(logdet, fd, rtol=0, atol=1e-5)
    # d(y, log det) / d(parameters) by central differences (torch.autograd.gradcheck)
    params = [p.clone().requires_grad_(True) for p in raw]
    pts = torch.linspace(-3.7, 3.7, 23, dtype=torch.float64)

    def both(w, h, d):
        y, ld = rq_spline(pts, w, h, d)
        xi, ldi = rq_spline(pts, w, h, d, inverse=True)
        return y, ld, xi, ldi

    assert torch.autograd.gradcheck(both, params, eps=1e-6, atol=1e-6)
