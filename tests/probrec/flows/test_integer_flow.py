"""Conditional integer flow: exact normalisation for any input, agreement with a closed form,
bimodal label distributions that rounding a Gaussian cannot produce, and simulated panels."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.stats import norm

from probrec.flows import ConditionalIntegerFlow, GaussianHead
from probrec.flows.metrics import fleiss_kappa


def _scrambled(model: ConditionalIntegerFlow, seed: int, scale: float) -> ConditionalIntegerFlow:
    """Random, far-from-initial weights (a non-trivial spline for every input)."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.fitted = True  # hand-set weights, no fit
    return model.eval()


@settings(max_examples=15, deadline=None)
@given(
    seed=st.integers(0, 2**16),
    scale=st.floats(0.1, 3.0),
    x_scale=st.sampled_from([1e-3, 1.0, 1e3]),
    labels=st.sampled_from([(1, 2, 3, 4, 5), (0, 1), (-3, -2, -1, 0, 1), (0, 2, 3, 7)]),
    layers=st.integers(0, 2),
)
def test_probabilities_sum_to_one_exactly_for_any_input(seed, scale, x_scale, labels, layers):
    model = _scrambled(
        ConditionalIntegerFlow(3, labels, hidden=(8,), n_layers=layers, seed=seed % 7), seed, scale
    ).double()
    x = x_scale * torch.randn(
        32, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64
    )
    p = model.predict_proba(x)
    assert p.shape == (32, len(labels)) and bool((p >= 0).all())
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, rtol=0, atol=1e-12)
    img = model.cdf_at_cuts(x)
    # a monotone transform of the cut points, up to rounding: extreme weights saturate the
    # spline, where neighbours round together and may differ by an ulp either way
    ulps = 8 * torch.finfo(img.dtype).eps * img.abs()[..., 1:].clamp_min(1.0)
    assert bool((img.diff(dim=-1) >= -ulps).all())


def test_without_splines_it_is_a_discretised_normal():
    """n_layers=0 and a normal base: P(k) = Phi((c_k - m) / s) - Phi((c_{k-1} - m) / s)."""
    model = _scrambled(
        ConditionalIntegerFlow(4, range(1, 6), hidden=(8,), n_layers=0, base="normal"), 1, 0.5
    ).double()
    x = torch.randn(10, 4, dtype=torch.float64)
    prm = model.head(model.encoder(model._features(x))).detach().numpy()
    shift, scale = prm[:, 0], np.exp(prm[:, 1])
    cuts = model.cuts.numpy()  # k + 1/2 on the normalised label scale (float32 at creation)
    np.testing.assert_allclose(cuts, (np.array([1.5, 2.5, 3.5, 4.5]) - 3.0) / 2.5 * 1.5, atol=1e-6)
    cdf = norm.cdf((cuts[None, :] - shift[:, None]) / scale[:, None])
    ref = np.diff(np.concatenate([np.zeros((10, 1)), cdf, np.ones((10, 1))], 1), axis=1)
    np.testing.assert_allclose(model.predict_proba(x).numpy(), ref, rtol=1e-10, atol=1e-14)


def test_fits_bimodal_annotations_that_a_rounded_gaussian_cannot(bimodal):
    x, labels, p_true = bimodal
    fit = {"epochs": 40, "batch_size": 50, "lr": 1e-2, "progress": False}
    flow = ConditionalIntegerFlow(3, range(1, 6), hidden=(8,), seed=0).fit(x, labels, **fit)
    gauss = GaussianHead(3, range(1, 6), hidden=(8,), seed=0).fit(x, labels, **fit)
    p_flow = flow.predict_proba(x).mean(0).numpy()
    p_gauss = gauss.predict_proba(x).mean(0).numpy()
    tv_flow = 0.5 * np.abs(p_flow - p_true).sum()
    tv_gauss = 0.5 * np.abs(p_gauss - p_true).sum()
    assert tv_flow < 0.06 < 0.2 < tv_gauss
    assert flow.nll(x, labels) < gauss.nll(x, labels) - 0.2


def test_item_latent_simulates_panels_that_agree_like_humans():
    """Items where every annotator says 1 or every annotator says 5 (features are noise): the
    per-annotation distribution is the same, but only a panel model reproduces the agreement."""
    rng = np.random.default_rng(0)
    n, m = 160, 6
    labels = np.repeat(np.where(rng.random(n) < 0.5, 1, 5)[:, None], m, axis=1)
    x = rng.standard_normal((n, 2)).astype(np.float32)
    fit = {"epochs": 30, "batch_size": 40, "lr": 1e-2, "progress": False}
    iid = ConditionalIntegerFlow(2, range(1, 6), hidden=(8,), seed=0).fit(x, labels, **fit)
    panel = ConditionalIntegerFlow(2, range(1, 6), hidden=(8,), item_latent=1, seed=0).fit(
        x, labels, **fit
    )
    for model in (iid, panel):
        p = model.predict_proba(x[:50]).mean(0).numpy()
        assert abs(p[0] - 0.5) < 0.1 and abs(p[4] - 0.5) < 0.1
    sims = {k: mdl.sample(x, m, seed=1).T.numpy() for k, mdl in (("iid", iid), ("panel", panel))}
    kappa = {
        k: fleiss_kappa(np.stack([(s == v).sum(1) for v in range(1, 6)], 1))
        for k, s in sims.items()
    }
    assert kappa["iid"] < 0.1 and kappa["panel"] > 0.8  # humans: kappa = 1
    assert float(panel.item_moments(x)[1].mean()) < 0.5 < float(iid.item_moments(x)[1].mean())
    nll_iid = -np.log(iid.predict_proba(x).numpy()[np.arange(n), labels[:, 0] - 1]).mean()
    assert nll_iid > 0.6  # the marginal cannot be sharper than the 50/50 split


@pytest.mark.parametrize("item_latent", [0, 1])
def test_seeded_samples_are_inverse_cdf_draws_whatever_the_batch_size(item_latent):
    """Uniforms drawn per 512-item block, in item order: a seeded panel does not depend on
    ``batch_size``; without an item latent each label is the inverse CDF of the exact
    probabilities at that uniform."""
    model = _scrambled(
        ConditionalIntegerFlow(4, range(1, 6), hidden=(8,), item_latent=item_latent), 3, 0.7
    )
    x = torch.randn(1100, 4, generator=torch.Generator().manual_seed(0))
    draws = [model.sample(x, 3, seed=7, batch_size=b) for b in (1, 300, 512, 1100, 5000)]
    assert all(torch.equal(d, draws[0]) for d in draws[1:])
    assert draws[0].shape == (3, 1100) and set(draws[0].unique().tolist()) <= set(range(1, 6))
    if item_latent:
        return
    g = torch.Generator().manual_seed(7)
    u = torch.cat([torch.rand((3, b), generator=g) for b in (512, 512, 76)], 1)
    cdf = model.predict_proba(x).double().cumsum(-1)[:, :-1]  # [N, 4]
    expected = 1 + (u.double()[..., None] > cdf).sum(-1)
    assert (expected != draws[0]).float().mean() < 1e-3  # float32 rounding at a boundary


def test_constructor_checks():
    with pytest.raises(ValueError, match="n_bins"):
        ConditionalIntegerFlow(2, range(1, 6), n_bins=1)
    with pytest.raises(ValueError, match="unknown base"):
        ConditionalIntegerFlow(2, range(1, 6), base="cauchy")
    for bad in (0.0, float("inf"), float("nan")):
        with pytest.raises(ValueError, match="bound"):
            ConditionalIntegerFlow(2, range(1, 6), bound=bad)
        with pytest.raises(ValueError, match="latent_lr"):
            ConditionalIntegerFlow(2, range(1, 6), latent_lr=bad)


def test_quadrature_integrates_the_item_latent():
    """Gauss-Hermite nodes give the moments of N(0, I); the node mixture matches a Monte Carlo
    average over the continuous latent, for the label distribution and for a panel's joint
    likelihood."""
    from probrec.flows.base import hermite_grid

    nodes, log_w = hermite_grid(5, 2)
    w = log_w.exp()
    assert nodes.shape == (25, 2) and float(w.sum()) == pytest.approx(1.0, abs=1e-12)
    torch.testing.assert_close(w @ nodes**2, torch.ones(2, dtype=torch.float64))
    torch.testing.assert_close(w @ nodes**4, torch.full((2,), 3.0, dtype=torch.float64))

    torch.manual_seed(0)
    quad = ConditionalIntegerFlow(
        3, range(1, 6), hidden=(8,), item_latent=1, quadrature=40
    ).eval()  # the manual Monte Carlo below calls the encoder directly: no dropout
    with torch.no_grad():  # a sizeable random effect, so the latent matters
        quad.u_scale.bias.fill_(0.7)
    quad.fitted = True  # hand-set weights, no fit
    x = torch.randn(4, 3)
    p = quad.predict_proba(x).double()
    torch.testing.assert_close(p.sum(-1), torch.ones(4, dtype=torch.float64))
    with torch.no_grad():
        h = quad.encoder(quad._features(x))
        u = torch.randn(200_000, 1, 1, generator=torch.Generator().manual_seed(1))
        logp_u = quad._conditional_log_probs(quad._params(h, u))  # [S, 4, K]
        torch.testing.assert_close(p, logp_u.exp().double().mean(0), atol=5e-3, rtol=0)
        counts = torch.tensor(
            [[3.0, 2, 1, 0, 0], [0, 0, 1, 1, 4], [1, 1, 1, 1, 1], [6, 0, 0, 0, 0]]
        )
        joint = quad._item_log_lik(quad._features(x), counts, torch.Generator(), 1)
        mc = torch.logsumexp((counts * logp_u).sum(-1), 0) - np.log(u.shape[0])
        torch.testing.assert_close(joint, mc, atol=2e-2, rtol=0)
        assert not torch.allclose(joint, (counts * p.log().float()).sum(-1), atol=0.1)
    with pytest.raises(ValueError, match="quadrature"):
        ConditionalIntegerFlow(3, range(1, 6), item_latent=3, quadrature=20)
