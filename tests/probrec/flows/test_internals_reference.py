"""The annotator flows' internals against independent computations.

The rational-quadratic spline against its formula written out here, bisection and finite
differences; the integer flow's label probabilities against integrals of the rating density
and a Gauss-Hermite grid built here, its panels against brute-force sums and its samples
against both (chi-square); the softmax flow's quadrature against Gauss-Hermite sums, its
importance sampling's convergence to the integral, its flow density against the Jacobian;
every training objective's gradient against finite differences (float64)."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import torch
from scipy import integrate, stats

from probrec.flows import ConditionalIntegerFlow, ConditionalSoftmaxFlow
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


# ---------------------------------------------------------------------------- integer flow

_LABELS = (1, 2, 4, 5, 7)  # not consecutive: cut points halfway between the values


def _perturbed(model, scale: float = 0.7, seed: int = 1):
    """``model`` in float64, eval mode, every parameter moved by ``scale`` N(0, 1) noise so
    that the splines, scales and latent effects are far from their initial identity; marked
    fitted."""
    model = model.double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.fitted = True  # weights set by hand: predictions allowed without fit
    return model.eval()


def _x(n: int, dim: int = 3, seed: int = 2) -> torch.Tensor:
    return torch.randn(n, dim, dtype=torch.float64, generator=torch.Generator().manual_seed(seed))


def _base_pdf(base: str):
    return stats.logistic.pdf if base == "logistic" else stats.norm.pdf


def _integer_reference(model, x, u=None) -> np.ndarray:
    """``P(y = k | x[, u])`` ``[n, K]`` as the integral of the rating density
    ``f_0(T_x(r)) T_x'(r)`` between the label values' midpoints (composite 20-point
    Gauss-Legendre on panels 0.004 wide on the affine map's scale, ``T_x'`` by autograd), the
    tails running to infinity: ``T_x`` is the identity outside the splines' interval after
    the affine map, so the mass sits where that map's output is within 40 (the rest is under
    ``e^-40``)."""
    values = np.asarray(model.labels, dtype=np.float64)
    centre, half = (values[0] + values[-1]) / 2, (values[-1] - values[0]) / 2 + 0.5
    cuts = ((values[1:] + values[:-1]) / 2 - centre) / half * 1.5
    pdf = _base_pdf(model.base)
    gl_t, gl_w = np.polynomial.legendre.leggauss(20)
    with torch.no_grad():
        h = model.encoder(model._features(x))
        prm = model._params(h, u)
    out = np.zeros((len(x), len(values)))
    for i in range(len(x)):
        shift, scale = float(prm[i, 0]), math.exp(float(prm[i, 1].clamp(-7, 7)))
        lo, hi = shift - 40 * scale, shift + 40 * scale
        edges = [lo, *np.clip(cuts, lo, hi), hi]
        for k, (a, b) in enumerate(zip(edges[:-1], edges[1:])):
            if b <= a:
                continue
            # panels about 0.004 wide on the affine map's scale, where the splines act
            panels = np.linspace(a, b, max(2, int(np.ceil((b - a) / scale / 0.004))) + 1)
            mid, rad = (panels[1:] + panels[:-1]) / 2, (panels[1:] - panels[:-1]) / 2
            r = torch.tensor((mid[:, None] + rad[:, None] * gl_t).ravel(), requires_grad=True)
            t = model._forward_map(r, prm[i])
            (slope,) = torch.autograd.grad(t.sum(), r)
            dens = pdf(t.detach().numpy()) * slope.numpy()
            out[i, k] = float((dens.reshape(len(mid), -1) @ gl_w * rad).sum())
    return out


@pytest.mark.parametrize("base", ["logistic", "normal"])
def test_integer_flow_probabilities_are_integrals_of_the_rating_density(base):
    model = _perturbed(
        ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_layers=2, n_bins=5, base=base)
    )
    x = _x(2)
    p = model.predict_proba(x)
    assert float((p.sum(-1) - 1).abs().max()) <= 1e-15
    np.testing.assert_allclose(p.numpy(), _integer_reference(model, x), rtol=0, atol=1e-6)


def _hermite(q: int, dim: int) -> tuple[np.ndarray, np.ndarray]:
    """Gauss-Hermite nodes and weights of ``N(0, I_dim)`` from the physicists' rule
    (``numpy.polynomial.hermite``: weight ``exp(-t^2)``, ``u = sqrt(2) t``)."""
    t, w = np.polynomial.hermite.hermgauss(q)
    nodes = np.array(list(itertools.product(np.sqrt(2) * t, repeat=dim)))
    weights = np.prod(np.array(list(itertools.product(w / np.sqrt(np.pi), repeat=dim))), -1)
    return nodes, weights


def test_integer_flow_quadrature_is_a_gauss_hermite_sum_of_integrals():
    """``item_latent`` + ``quadrature``: ``P(k | x) = sum_j w_j P(k | x, u_j)`` over a
    Gauss-Hermite grid built here, each term the density's integral (one item)."""
    model = _perturbed(
        ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_bins=4, item_latent=2, quadrature=3),
        scale=0.3,
    )
    x = _x(1)
    nodes, weights = _hermite(3, 2)
    ref = sum(
        w * _integer_reference(model, x, torch.tensor(u)[None])[0] for u, w in zip(nodes, weights)
    )
    np.testing.assert_allclose(model.predict_proba(x)[0].numpy(), ref, rtol=0, atol=1e-6)


def _node_probs(model, x) -> tuple[np.ndarray, np.ndarray]:
    """``P(k | x, u_j)`` ``[G, n, K]`` at the grid of :func:`_hermite` and its weights."""
    nodes, weights = _hermite(model.quadrature, model.item_latent)
    with torch.no_grad():
        h = model.encoder(model._features(x))
        probs = [
            model._conditional_log_probs(model._params(h, torch.tensor(u)[None])).exp()
            for u in nodes
        ]
    return torch.stack(probs).numpy(), weights


def test_integer_flow_panel_log_prob_is_a_brute_force_sum():
    """The joint log-probability of small panels (non-consecutive labels, a padded panel)
    against ``log sum_j w_j prod_i P(y_i | x, u_j)`` written out; without an item latent the
    sum of the annotations' log-probabilities."""
    x = _x(3)
    panels = [[1, 7, 7], [2, 2, 4, 5], [5]]
    padded = np.array([row + [1] * (4 - len(row)) for row in panels])
    mask = np.array([[j < len(row) for j in range(4)] for row in panels])
    quad = _perturbed(
        ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_bins=4, item_latent=1, quadrature=7)
    )
    probs, weights = _node_probs(quad, x)
    idx = {v: k for k, v in enumerate(_LABELS)}
    ref = [
        math.log(
            sum(w * np.prod([probs[j, i, idx[y]] for y in row]) for j, w in enumerate(weights))
        )
        for i, row in enumerate(panels)
    ]
    np.testing.assert_allclose(quad.panel_log_prob(x, padded, mask).numpy(), ref, rtol=1e-10)
    np.testing.assert_allclose(quad.panel_log_prob(x, panels).numpy(), ref, rtol=1e-10)
    plain = _perturbed(ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_bins=4))
    logp = plain.label_log_probs(x).numpy()
    ref = [sum(logp[i, idx[y]] for y in row) for i, row in enumerate(panels)]
    np.testing.assert_allclose(plain.panel_log_prob(x, panels).numpy(), ref, rtol=1e-10)


def test_integer_flow_importance_sampled_latent_converges_to_the_integral():
    """Item latent without quadrature: the RQMC estimates of ``P(k | x)`` against Simpson's
    rule for ``int P(k | x, u) phi(u) du`` on 40001 points of ``[-9, 9]`` (20001 agree to
    1e-9; Gauss-Hermite converges slowly here, ``P(k | x, u)`` being step-like in ``u``):
    exactly normalised, the error shrinking with the samples and within 4 standard errors;
    the panel likelihood's estimate close to the integral of the panel's probability."""
    model = _perturbed(
        ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_bins=4, item_latent=1), scale=0.3
    )
    x = _x(4)
    u = np.linspace(-9, 9, 40001)
    with torch.no_grad():
        h = model.encoder(model._features(x))
        probs = model._conditional_log_probs(model._params(h, torch.tensor(u)[:, None, None]))
    probs = probs.exp().numpy()  # [points, items, K]
    ref = integrate.simpson(probs * stats.norm.pdf(u)[:, None, None], x=u, axis=0)
    errors = []
    for n in (64, 8192):
        logp, se = model.label_log_probs_se(x, n_samples=n)
        assert float((logp.exp().sum(-1) - 1).abs().max()) < 1e-14
        errors.append(np.abs(logp.exp().numpy() - ref).max())
    assert errors[1] < errors[0] / 20
    assert (np.abs(logp.numpy() - np.log(ref)) <= 4 * se.numpy()).all()
    panels = [[1, 7, 7], [2, 2, 4, 5], [5], [7, 7, 7, 7, 1]]
    idx = {v: k for k, v in enumerate(_LABELS)}
    ref_panel = [
        math.log(
            integrate.simpson(
                np.prod([probs[:, i, idx[y]] for y in row], 0) * stats.norm.pdf(u), x=u
            )
        )
        for i, row in enumerate(panels)
    ]
    est = model.panel_log_prob(x, panels, n_samples=65536).numpy()
    np.testing.assert_allclose(est, ref_panel, rtol=0, atol=0.05)


def _chi2_pvalue(counts: np.ndarray, probs: np.ndarray) -> float:
    expected = probs * counts.sum()
    keep = expected > 0
    assert counts[~keep].sum() == 0
    return float(stats.chisquare(counts[keep], expected[keep]).pvalue)


@pytest.mark.parametrize("latent", [0, 1])
def test_integer_flow_sample_frequencies_match_predict_proba_and_panel_pairs(latent):
    """Chi-square goodness of fit of simulated labels to ``predict_proba`` (one annotation on
    many copies of an item) and of simulated pairs of annotators to ``exp(panel_log_prob)``
    of every ordered pair (the pairs' dependence through the item latent)."""
    kwargs = {"item_latent": 1, "quadrature": 9} if latent else {}
    model = _perturbed(ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_bins=4, **kwargs))
    x = _x(1).expand(20000, -1)
    single = model.sample(x, 1, seed=0)[0].numpy()
    counts = np.array([(single == v).sum() for v in _LABELS])
    assert _chi2_pvalue(counts, model.predict_proba(x[:1])[0].numpy()) > 1e-3
    pairs = model.sample(x, 2, seed=1).numpy().T  # [items, 2]
    grid = list(itertools.product(_LABELS, repeat=2))
    counts = np.array([((pairs[:, 0] == a) & (pairs[:, 1] == b)).sum() for a, b in grid])
    joint = model.panel_log_prob(x[: len(grid)], np.array(grid)).exp().numpy()
    assert abs(joint.sum() - 1) < 1e-12
    assert _chi2_pvalue(counts, joint) > 1e-3


# ---------------------------------------------------------------------------- softmax flow


def _softmax_reference(model, x, q: int) -> tuple[np.ndarray, np.ndarray]:
    """``softmax(v_g)`` ``[G, n, K]`` at the flow's image of the Gauss-Hermite grid of
    :func:`_hermite` (``q`` nodes per dimension) and the grid's weights ``[G]``."""
    nodes, weights = _hermite(q, model.n_labels)
    with torch.no_grad():
        _, ctxs, loc, log_scale = model._context(model._features(x))
        eps = torch.tensor(nodes)[:, None, :].expand(-1, len(x), -1)
        v = model._flow_sample(ctxs, loc, log_scale, eps)[0]
    return torch.softmax(v, -1).numpy(), weights


def test_softmax_flow_map_density_matches_its_jacobian_and_inverse():
    """``log p(v | x)`` of the flow's draws: the base density minus the log-determinant of
    the map's Jacobian (autograd, per item), and the same from the inverse pass."""
    model = _perturbed(ConditionalSoftmaxFlow(3, (0, 1, 2), hidden=(8,), flow_hidden=6))
    x = _x(2)
    _, ctxs, loc, log_scale = model._context(model._features(x))
    eps = torch.randn(5, 2, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
    v, logp = model._flow_sample(ctxs, loc, log_scale, eps)
    for s in range(5):
        for i in range(2):

            def one(e, i=i):
                out = model._flow_sample(
                    [c[i : i + 1] for c in ctxs],
                    loc[i : i + 1],
                    log_scale[i : i + 1],
                    e[None, None],
                )
                return out[0][0, 0]

            jac = torch.autograd.functional.jacobian(one, eps[s, i])
            ref = stats.multivariate_normal(np.zeros(3)).logpdf(eps[s, i].numpy())
            ref -= float(torch.linalg.slogdet(jac)[1])
            assert abs(float(logp[s, i].detach()) - ref) < 1e-10
    back = model._flow_log_prob(ctxs, loc, log_scale, v)
    torch.testing.assert_close(back, logp, rtol=0, atol=1e-10)


@pytest.mark.parametrize("k", [2, 3])
def test_softmax_flow_quadrature_probabilities_and_panels_are_gauss_hermite_sums(k):
    labels = tuple(range(k))
    x = _x(3)
    model = _perturbed(
        ConditionalSoftmaxFlow(3, labels, hidden=(8,), flow_hidden=6, quadrature=5), scale=0.5
    )
    probs, weights = _softmax_reference(model, x, 5)
    ref = np.einsum("g,gnk->nk", weights, probs)
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.numpy(), ref, rtol=1e-12, atol=0)
    assert float((p.sum(-1) - 1).abs().max()) < 1e-14
    panels = [[0, 1, 1], [k - 1, k - 1], [1, 0, 0, k - 1]]
    # latent="annotation": independent annotators, the sum of the log-probabilities
    ref_ann = [sum(math.log(ref[i, y]) for y in row) for i, row in enumerate(panels)]
    np.testing.assert_allclose(model.panel_log_prob(x, panels).numpy(), ref_ann, rtol=1e-12)
    item = _perturbed(
        ConditionalSoftmaxFlow(3, labels, hidden=(8,), flow_hidden=6, quadrature=5, latent="item"),
        scale=0.5,
    )
    probs, weights = _softmax_reference(item, x, 5)
    ref_item = [
        math.log(sum(w * np.prod([probs[g, i, y] for y in row]) for g, w in enumerate(weights)))
        for i, row in enumerate(panels)
    ]
    np.testing.assert_allclose(item.panel_log_prob(x, panels).numpy(), ref_item, rtol=1e-12)


def test_softmax_flow_importance_sampling_converges_to_the_integral():
    """Importance-sampled ``p(k | x)`` (no quadrature) against a 40-node-per-dimension
    Gauss-Hermite integral of ``softmax(v)`` over the same flow (converged: 30 nodes agree to
    1e-7): the error shrinks with the samples and is within 5 standard errors; an item
    latent's panel likelihood too."""
    x = _x(4)
    model = _perturbed(ConditionalSoftmaxFlow(3, (0, 1, 2), hidden=(8,), flow_hidden=6), 0.2)
    probs, weights = _softmax_reference(model, x, 40)
    ref = np.einsum("g,gnk->nk", weights, probs)
    coarse, w30 = _softmax_reference(model, x, 30)
    assert np.abs(np.einsum("g,gnk->nk", w30, coarse) - ref).max() < 1e-7
    errors = []
    for n in (64, 1024, 16384):
        p = model.predict_proba(x, n_samples=n).numpy()
        errors.append(np.abs(p - ref).max())
    assert errors[2] < errors[0] / 4 and errors[2] < 2e-3
    logp, se = model.label_log_probs_se(x, n_samples=16384)
    assert (np.abs(logp.numpy() - np.log(ref)) <= 5 * se.numpy() + 1e-6).all()
    item = _perturbed(
        ConditionalSoftmaxFlow(3, (0, 1, 2), hidden=(8,), flow_hidden=6, latent="item"), 0.2
    )
    probs, weights = _softmax_reference(item, x, 40)
    panels = [[0, 1, 1], [2, 2], [1, 0, 0, 2], [0]]
    ref_item = [
        math.log(np.dot(weights, np.prod([probs[:, i, y] for y in row], 0)))
        for i, row in enumerate(panels)
    ]
    est = item.panel_log_prob(x, panels, n_samples=8192).numpy()
    np.testing.assert_allclose(est, ref_item, rtol=0, atol=0.02)


# ---------------------------------------------------------------------------- gradients


def _counts(n: int, k: int, seed: int = 3) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, 4, (n, k), generator=g).double().index_fill_(1, torch.tensor([0]), 1)


_OBJECTIVES = [
    ("integer", {}),
    ("integer", {"item_latent": 1, "quadrature": 6}),
    ("integer", {"item_latent": 2}),
    ("softmax", {"quadrature": 4}),
    ("softmax", {"quadrature": 4, "latent": "item"}),
    ("softmax", {"latent": "item", "n_train_samples": 1}),
    ("softmax", {"latent": "item"}),
    ("softmax", {}),
]


@pytest.mark.parametrize(("kind", "kwargs"), _OBJECTIVES)
def test_training_objective_gradients_match_finite_differences(kind, kwargs):
    """The gradient of every training objective (at fixed random draws: the generator is
    reseeded per evaluation) along random directions against central differences, in
    float64. Under the wake-phase update (softmax flow, importance sampling with more than
    one draw) the bound sees ``q`` as a fixed proposal: its gradient is that of the value
    with ``q``'s mean and scale held at their current values (through the encoder too), and
    ``q``'s own gradient is the wake term's, not the value's; there ``q`` is frozen in the
    differences and its parameters are left out."""
    if kind == "integer":
        model = ConditionalIntegerFlow(3, _LABELS, hidden=(8,), n_bins=4, **kwargs)
    else:
        model = ConditionalSoftmaxFlow(3, (0, 1, 2), hidden=(8,), flow_hidden=6, **kwargs)
    model = _perturbed(model, 0.3)
    z, counts = _x(5), _counts(5, model.n_labels)
    wake = kind == "softmax" and not model.quadrature and model.n_train_samples > 1
    params = [p for name, p in model.named_parameters() if not (wake and name.startswith("q_net"))]
    if wake:  # the first call's proposal, replayed (detached) in the differences
        proposal, saved = model._proposal, []

        def frozen(h, c, wake_):
            if not saved:
                saved.append(proposal(h, c, wake_))
                return saved[0]
            mu, log_sd, _ = saved[0]
            return mu.detach(), log_sd.detach(), (mu.detach(), log_sd.detach())

        model._proposal = frozen

    def loss() -> torch.Tensor:
        return model._train_loss(z, counts, torch.Generator().manual_seed(0)).sum()

    grads = torch.autograd.grad(loss(), params)
    g = torch.Generator().manual_seed(1)
    for _ in range(3):
        direction = [torch.randn(p.shape, generator=g, dtype=p.dtype) for p in params]
        analytic = sum(float((gr * d).sum()) for gr, d in zip(grads, direction))
        step = 1e-6
        values = []
        for sign in (1, -1):
            with torch.no_grad():
                for p, d in zip(params, direction):
                    p.add_(sign * step * d)
                values.append(float(loss()))
                for p, d in zip(params, direction):
                    p.sub_(sign * step * d)
        numeric = (values[0] - values[1]) / (2 * step)
        assert abs(analytic - numeric) <= 1e-6 * (1 + abs(numeric)), (analytic, numeric)
