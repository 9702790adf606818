"""Baselines against independent computations: scipy's normal and logistic distributions for
the ordinal heads, a per-member forward pass for the deep ensemble, MC dropout masks."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import expit
from scipy.stats import norm

from probrec.flows import DeepEnsemble, GaussianHead, MCDropoutHead, OrdinalLogisticHead


def _x(n: int = 9, d: int = 4) -> torch.Tensor:
    return torch.randn(n, d, generator=torch.Generator().manual_seed(0), dtype=torch.float64)


def test_gaussian_head_is_the_rounded_gaussian_and_trains_on_the_density():
    model = GaussianHead(4, (1, 2, 3, 4, 5), hidden=(8,), seed=1).double().eval()
    model.fitted = True  # initial (or hand-set) weights, no fit
    x = _x()
    z = model._features(x)
    mu, sd = (t.detach().numpy() for t in model.mean_std(z))
    cuts = np.array([-np.inf, 1.5, 2.5, 3.5, 4.5, np.inf])
    ref = np.diff(norm.cdf((cuts[None, :] - mu[:, None]) / sd[:, None]), axis=1)
    np.testing.assert_allclose(model.predict_proba(x).numpy(), ref, rtol=1e-10, atol=1e-15)
    # rounding Gaussian samples (tails folded) gives the same distribution
    g = torch.Generator().manual_seed(0)
    r = mu[0] + sd[0] * torch.randn(200_000, generator=g, dtype=torch.float64).numpy()
    freq = np.bincount(np.clip(np.round(r), 1, 5).astype(int) - 1, minlength=5) / r.size
    np.testing.assert_allclose(freq, ref[0], atol=4e-3)
    counts = torch.tensor([[0, 2, 1, 0, 0]], dtype=torch.float64).repeat(9, 1)
    loss = model._train_loss(z, counts, g).detach().numpy()
    dens = -(2 * norm.logpdf(2, mu, sd) + norm.logpdf(3, mu, sd))
    np.testing.assert_allclose(loss, dens, rtol=1e-10)


def test_ordinal_logistic_head_is_a_cumulative_link_model():
    model = OrdinalLogisticHead(4, (-3, -2, -1, 0, 1), hidden=(8,), seed=2).double().eval()
    model.fitted = True  # initial (or hand-set) weights, no fit
    with torch.no_grad():
        model.log_gaps.add_(torch.tensor([0.3, -0.5, 1.0], dtype=torch.float64))
    x = _x()
    eta = model._out(model._features(x)).detach().numpy()[:, 0]
    theta = model.thresholds().detach().numpy()
    assert (np.diff(theta) > 0).all()
    cum = expit(theta[None, :] - eta[:, None])  # P(y <= k)
    ref = np.diff(np.concatenate([np.zeros((9, 1)), cum, np.ones((9, 1))], 1), axis=1)
    np.testing.assert_allclose(model.predict_proba(x).numpy(), ref, rtol=1e-10, atol=1e-15)


def test_deep_ensemble_averages_its_members():
    model = DeepEnsemble(4, (0, 1, 2), members=3, hidden=(6,), dropout=0.0, seed=3).double()
    model.fitted = True  # initial (or hand-set) weights, no fit
    x = _x()
    z = model._features(x).numpy()
    lin = [m for m in model.net if hasattr(m, "weight")]
    probs = []
    for m in range(3):
        hid = np.maximum(z @ lin[0].weight[m].detach().numpy() + lin[0].bias[m].detach().numpy(), 0)
        logits = hid @ lin[1].weight[m].detach().numpy() + lin[1].bias[m].detach().numpy()
        e = np.exp(logits - logits.max(1, keepdims=True))
        probs.append(e / e.sum(1, keepdims=True))
    np.testing.assert_allclose(model.predict_proba(x).numpy(), np.mean(probs, 0), rtol=1e-10)
    assert not np.allclose(probs[0], probs[1])  # members start from different weights
    # the per-item spread: the members' standard deviations averaged (not the mixture's)
    v = np.array([0.0, 1.0, 2.0])
    sds = [np.sqrt(p @ v**2 - (p @ v) ** 2) for p in probs]
    np.testing.assert_allclose(model.item_moments(x)[1].numpy(), np.mean(sds, 0), rtol=1e-10)
    mix = np.mean(probs, 0)
    assert (model.item_moments(x)[1].numpy() < np.sqrt(mix @ v**2 - (mix @ v) ** 2)).all()


def test_ensemble_panels_answer_under_one_member():
    model = DeepEnsemble(4, (1, 2, 3), members=2, hidden=(4,), dropout=0.0, seed=0)
    with torch.no_grad():  # member 0 always answers 1, member 1 always 3
        model.net[-1].weight.zero_()
        model.net[-1].bias.copy_(torch.tensor([[[30.0, 0, 0]], [[0, 0, 30.0]]]))
    model.fitted = True  # initial (or hand-set) weights, no fit
    draws = model.sample(np.zeros((3000, 4)), 5, seed=1).numpy()  # [5, 3000]
    assert (draws == draws[:1]).all() and set(np.unique(draws)) == {1, 3}
    share = (draws[0] == 1).mean()  # the member is uniform over items
    assert abs(share - 0.5) < 4 * np.sqrt(0.25 / 3000)


def test_ensemble_keeps_each_members_best_weights():
    model = DeepEnsemble(4, (0, 1), members=3, hidden=(4,), seed=0)
    best = model._snapshot(None, torch.ones(3, dtype=torch.bool))
    before = {k: v.clone() for k, v in best.items()}
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)
    best = model._snapshot(best, torch.tensor([False, True, False]))
    for k, v in best.items():
        if k.startswith("net."):
            assert torch.equal(v[0], before[k][0]) and torch.equal(v[2], before[k][2])
            assert torch.equal(v[1], before[k][1] + 1.0)


def test_mc_dropout_is_seeded_and_averages_stochastic_passes():
    model = MCDropoutHead(4, (0, 1, 2), hidden=(32,), dropout=0.5, mc_samples=200, seed=0)
    model.fitted = True  # initial (or hand-set) weights, no fit
    x = _x().float()
    a = model.predict_proba(x, seed=1)
    assert torch.equal(a, model.predict_proba(x, seed=1))
    assert not torch.equal(a, model.predict_proba(x, seed=2))
    one = model.predict_proba(x, seed=1, n_samples=1)  # a single dropout mask
    assert (a - one).abs().max() > 1e-3
    # many passes converge: two seeds agree far better than single passes do
    b = model.predict_proba(x, seed=2)
    assert (a - b).abs().max() < 0.5 * (
        one - model.predict_proba(x, seed=2, n_samples=1)
    ).abs().max()
    with pytest.raises(ValueError, match="dropout"):
        MCDropoutHead(4, (0, 1), dropout=0.0)
