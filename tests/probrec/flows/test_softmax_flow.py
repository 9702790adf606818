"""Conditional softmax flow: a normalised latent density, importance-sampling estimates that
agree with brute-force Monte Carlo and sum to one, and a training bound below the estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probrec.flows import ConditionalSoftmaxFlow


def _scrambled(k: int, seed: int, scale: float = 0.5, **kw) -> ConditionalSoftmaxFlow:
    model = ConditionalSoftmaxFlow(
        3, tuple(range(k)), hidden=(8,), flow_hidden=8, seed=seed, **kw
    ).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    return model.eval()


def test_latent_density_integrates_to_one_and_both_directions_agree():
    model = _scrambled(2, seed=4, scale=0.2)
    z = torch.randn(1, 3, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    with torch.no_grad():
        _, ctxs, loc, log_scale = model._context(z)
        grid = torch.linspace(-20, 20, 401, dtype=torch.float64)
        v = torch.stack(torch.meshgrid(grid, grid, indexing="ij"), -1).reshape(-1, 1, 2)
        dens = model._flow_log_prob(ctxs, loc, log_scale, v).exp()
        cell = float(grid[1] - grid[0]) ** 2
        assert abs(float(dens.sum()) * cell - 1) < 1e-4
        eps = torch.randn(50, 1, 2, dtype=torch.float64)
        v_s, logp_s = model._flow_sample(ctxs, loc, log_scale, eps)
        torch.testing.assert_close(model._flow_log_prob(ctxs, loc, log_scale, v_s), logp_s)


def test_importance_sampling_agrees_with_brute_force_monte_carlo():
    model = _scrambled(3, seed=2, scale=0.3)
    x = torch.randn(5, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    logp, se = model.label_log_probs_se(x, n_samples=2048, seed=0)
    with torch.no_grad():
        brute = torch.cat(
            [
                model._prior_probs(
                    model._features(x), 50_000, torch.Generator().manual_seed(s)
                ).mean(0)[None]
                for s in range(4)
            ]
        ).mean(0)
    err = (logp.exp() - brute).abs() / brute  # relative error of p; brute-force s.e. ~ 0.3 %
    assert bool((err < 4 * se + 0.01).all()), (err, se)
    assert float(se.max()) < 0.02


@settings(max_examples=5, deadline=None)
@given(
    seed=st.integers(0, 10_000), k=st.integers(2, 5), latent=st.sampled_from(["annotation", "item"])
)
def test_estimated_probabilities_sum_to_one(seed, k, latent):
    model = _scrambled(k, seed, scale=0.3, latent=latent)
    x = torch.randn(16, 3, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    p = model.predict_proba(x, n_samples=8192, seed=seed)
    assert bool((p > 0).all())
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, atol=1e-2)


def test_jackknife_standard_error_matches_the_spread_over_seeds():
    # at a small sample size the reported s.e. of log p(k | x) should describe how much the
    # estimate moves between independent seeds
    model = _scrambled(4, seed=11, scale=0.3, latent="item")
    x = torch.randn(6, 3, generator=torch.Generator().manual_seed(4), dtype=torch.float64)
    runs = [model.label_log_probs_se(x, n_samples=256, seed=s) for s in range(40)]
    est = torch.stack([r[0] for r in runs])
    spread = est.std(0)
    reported = torch.stack([r[1] for r in runs]).mean(0)
    ratio = float(reported.mean() / spread.mean())
    assert 0.6 < ratio < 1.6, ratio


def test_standard_error_shrinks_with_samples_and_training_bound_is_below():
    model = _scrambled(4, seed=7, scale=0.3)
    x = torch.randn(8, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    _, se_small = model.label_log_probs_se(x, n_samples=128)
    logp, se_big = model.label_log_probs_se(x, n_samples=8192)
    assert float(se_big.mean()) < 0.5 * float(se_small.mean())
    counts = torch.eye(4, dtype=torch.float64).repeat(2, 1)  # one annotation of each label
    z = model._features(x)
    with torch.no_grad():
        draws = torch.stack(
            [model._train_loss(z, counts, torch.Generator().manual_seed(s)) for s in range(256)]
        )
    bounds, bounds_se = draws.mean(0), draws.std(0) / 16
    exact = -(counts * logp).sum(-1)
    slack = 4 * (bounds_se + 4 * se_big.max())
    assert bool((bounds >= exact - slack).all())  # E[-bound] >= -log p


def test_item_latent_panel_samples_share_one_distribution():
    model = _scrambled(3, seed=1, scale=1.5, latent="item")
    x = torch.randn(1, 3, generator=torch.Generator().manual_seed(3), dtype=torch.float64).repeat(
        400, 1
    )
    panels = model.sample(x, 8, seed=0).T.numpy()  # 400 panels of 8 for the same input
    per_panel = np.stack([(panels == k).mean(1) for k in range(3)], 1)
    iid = model.predict_proba(x[:1], n_samples=4096)[0].numpy()
    # the panels' label shares vary far more than independent draws would allow
    binomial_var = iid * (1 - iid) / 8
    assert (per_panel.var(0) > 2 * binomial_var).any()
    np.testing.assert_allclose(per_panel.mean(0), iid, atol=0.05)


def test_constructor_checks():
    with pytest.raises(ValueError, match="n_eval_samples"):
        ConditionalSoftmaxFlow(3, (0, 1), n_eval_samples=1)
    with pytest.raises(ValueError, match="n_layers"):
        ConditionalSoftmaxFlow(3, (0, 1), n_layers=-1)
    assert math.isfinite(
        float(ConditionalSoftmaxFlow(3, (0, 1)).nll(np.zeros((2, 3)), [[0], [1, 1]]))
    )
