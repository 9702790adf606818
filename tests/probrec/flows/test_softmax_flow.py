"""Conditional softmax flow: a normalised latent density, importance-sampling estimates that
agree with brute-force Monte Carlo and sum to one, and a training bound below the estimate."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from probrec.flows import ConditionalSoftmaxFlow, load_model
from probrec.flows.softmax import _wake_q_term


def _scrambled(k: int, seed: int, scale: float = 0.5, **kw) -> ConditionalSoftmaxFlow:
    model = ConditionalSoftmaxFlow(
        3, tuple(range(k)), hidden=(8,), flow_hidden=8, seed=seed, **kw
    ).double()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(scale * torch.randn(p.shape, generator=g, dtype=p.dtype))
    model.fitted = True  # hand-set weights, no fit
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


@pytest.mark.parametrize("k", [2, 3, 5])
def test_coupling_layers_are_the_masked_full_width_coupling(k):
    """The coupling's sliced passes against its definition written with the full-width maps:
    ``v = e * m + (1 - m) * (e * exp(s) + t)``, ``(s, t) = out(silu(inp(e * m) + ctx(h)))``
    with ``s`` soft-clipped -- values, log-determinants and gradients, with and without
    autograd recording (the no-grad pass works in place)."""
    model = _scrambled(k, seed=k, scale=0.4)
    g = torch.Generator().manual_seed(1)
    z = torch.randn(4, 3, generator=g, dtype=torch.float64)
    e0 = torch.randn(6, 4, k, generator=g, dtype=torch.float64)
    _, ctxs, _, _ = model._context(z)
    for layer, c in zip(model.couplings, ctxs):
        m = layer.keep
        h = model.encoder(z)
        e = e0.clone().requires_grad_(True)
        a = torch.nn.functional.silu(layer.inp(e * m) + layer.ctx(h))
        s_full, t_full = layer.out(a).chunk(2, -1)
        s_full = 3.0 * torch.tanh(s_full / 3.0) * (1 - m)
        want_v = e * m + (1 - m) * (e * torch.exp(s_full) + t_full * (1 - m))
        want = (want_v, s_full.sum(-1))
        e_got = e0.clone().requires_grad_(True)
        got = layer(e_got, c)
        for w, gt in zip(want, got):
            torch.testing.assert_close(gt, w, rtol=1e-12, atol=1e-12)
        grads = torch.autograd.grad((want[0].sin().sum() + want[1].sum()), [e])
        grads_got = torch.autograd.grad((got[0].sin().sum() + got[1].sum()), [e_got])
        torch.testing.assert_close(grads_got[0], grads[0], rtol=1e-12, atol=1e-12)
        with torch.no_grad():
            v_ng, ld_ng = layer(e0, c.detach())
            back, ld_back = layer.inverse(v_ng, c.detach())
        torch.testing.assert_close(v_ng, want[0].detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(back, e0, rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(ld_back, ld_ng, rtol=0, atol=0)


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


@pytest.mark.parametrize("latent", ["annotation", "item"])
def test_quadrature_is_the_expectation_over_the_base_and_samples_agree(latent):
    """With quadrature the label probabilities and a panel's joint likelihood are the node
    mixture's: they match brute-force Monte Carlo over the continuous base N(0, I) (a smooth
    integrand) and sum to one exactly; simulated panels follow the joint likelihood."""
    model = _scrambled(2, seed=3, scale=0.1, latent=latent, quadrature=24)
    x = torch.randn(4, 3, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    p = model.predict_proba(x)
    np.testing.assert_allclose(p.sum(-1).numpy(), 1.0, atol=1e-12)
    z = model._features(x)
    counts = torch.tensor([[3.0, 1.0], [0.0, 4.0], [2.0, 2.0], [1.0, 0.0]], dtype=torch.float64)
    with torch.no_grad():
        _, ctxs, loc, log_scale = model._context(z)
        eps = torch.randn(400_000, 4, 2, generator=torch.Generator().manual_seed(0)).double()
        probs = torch.softmax(model._flow_sample(ctxs, loc, log_scale, eps)[0], -1)
        joint = (probs**counts).prod(-1)
        quad = model._item_log_lik(z, counts, torch.Generator(), 1).exp()
    se = probs[..., 1].std(0) / math.sqrt(eps.shape[0])
    assert bool(((p[:, 1] - probs[..., 1].mean(0)).abs() < 4 * se + 1e-4).all())
    se_joint = joint.std(0) / math.sqrt(eps.shape[0])
    assert bool(((quad - joint.mean(0)).abs() < 4 * se_joint + 1e-5).all())
    if latent == "item":  # panels of 4 drawn from the model: counts follow exp(panel log-lik)
        xs = x[:1].repeat(4000, 1)
        n_one = (model.sample(xs, 4, seed=0) == 1).sum(0).numpy()
        obs = np.bincount(n_one, minlength=5)
        panel = torch.tensor([[4.0 - j, float(j)] for j in range(5)], dtype=torch.float64)
        with torch.no_grad():
            log_joint = model._item_log_lik(z[:1].expand(5, -1), panel, torch.Generator(), 1)
        exp = np.array([math.comb(4, j) for j in range(5)]) * log_joint.exp().numpy()
        from scipy.stats import chisquare

        np.testing.assert_allclose(exp.sum(), 1.0, atol=1e-12)
        assert chisquare(obs, exp * obs.sum()).pvalue > 1e-3


def test_quadrature_needs_no_proposal_and_survives_save_load(population, tmp_path):
    train, valid, test = population
    model = ConditionalSoftmaxFlow(
        train.features.shape[1], train.label_values, hidden=(8,), latent="item", quadrature=4
    )
    assert not hasattr(model, "q_net") and model.nodes.shape == (4**5, 5)
    model.fit(train.features, train.labels, train.mask, epochs=2, lr=1e-3, progress=False)
    model.save(tmp_path / "q.pt")
    again = load_model(tmp_path / "q.pt")
    assert again.quadrature == 4
    torch.testing.assert_close(
        again.predict_proba(test.features), model.predict_proba(test.features)
    )


def test_constructor_checks():
    with pytest.raises(ValueError, match="4096"):
        ConditionalSoftmaxFlow(3, (0, 1, 2), quadrature=17)
    with pytest.raises(ValueError, match="quadrature"):
        ConditionalSoftmaxFlow(3, (0, 1), quadrature=-1)
    with pytest.raises(ValueError, match="n_eval_samples"):
        ConditionalSoftmaxFlow(3, (0, 1), n_eval_samples=1)
    with pytest.raises(ValueError, match="n_layers"):
        ConditionalSoftmaxFlow(3, (0, 1), n_layers=-1)
    untrained = ConditionalSoftmaxFlow(3, (0, 1))
    untrained.fitted = True  # initial weights, no fit
    assert math.isfinite(float(untrained.nll(np.zeros((2, 3)), [[0], [1, 1]])))


def test_wake_phase_term_is_zero_with_the_weighted_score_as_gradient():
    g = torch.Generator().manual_seed(3)
    v = torch.randn(16, 2, 3, generator=g, dtype=torch.float64)  # [S, B, K] fixed draws
    log_w = 3 * torch.randn(16, 2, generator=g, dtype=torch.float64)
    mu = torch.randn(2, 3, generator=g, dtype=torch.float64).requires_grad_()
    log_sd = (0.3 * torch.randn(2, 3, generator=g, dtype=torch.float64)).requires_grad_()
    term = _wake_q_term(log_w, ConditionalSoftmaxFlow._q_log_prob(v, mu, log_sd))
    assert torch.equal(term, torch.zeros(2, dtype=torch.float64))
    term.sum().backward()
    w = torch.softmax(log_w, 0)[..., None]  # self-normalised weights
    e = (v - mu.detach()) * torch.exp(-log_sd.detach())
    # closed-form Gaussian scores: d/dmu log q = e / sd, d/dlog_sd log q = e^2 - 1
    torch.testing.assert_close(mu.grad, (w * e * torch.exp(-log_sd.detach())).sum(0))
    torch.testing.assert_close(log_sd.grad, (w * (e * e - 1)).sum(0))


def _q_only_nll(model: ConditionalSoftmaxFlow, data, n: int = 256) -> float:
    """Per-annotation NLL estimated with draws of the amortised posterior ``q`` alone."""
    z, c = model._features(data.features), model._counts(data.labels, data.mask)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        if model.latent == "item":
            return float(-model._item_log_lik(z, c, g, n).sum() / c.sum())
        h, ctxs, loc, log_scale = model._context(z)
        k = model.n_labels
        mu, log_sd = model._q(h[:, None, :].expand(-1, k, -1), torch.eye(k).expand(len(z), k, k))
        v = mu + torch.exp(log_sd) * torch.randn((n, *mu.shape), generator=g)
        log_p = model._flow_log_prob(
            [x[:, None, :] for x in ctxs], loc[:, None, :], log_scale[:, None, :], v
        )
        log_w = (
            log_p
            + torch.log_softmax(v, -1).diagonal(dim1=-2, dim2=-1)
            - ConditionalSoftmaxFlow._q_log_prob(v, mu, log_sd)
        )
        return float(-(c * (torch.logsumexp(log_w, 0) - math.log(n))).sum() / c.sum())


@pytest.mark.parametrize(("latent", "samples"), [("item", 8), ("item", 1), ("annotation", 8)])
def test_amortised_posterior_learns_to_propose(population, latent, samples):
    """``q`` trained by the wake-phase update (or, with one draw, the reparameterised ELBO) is
    a usable proposal on its own: importance sampling with ``q`` alone lands near the accurate
    estimate (the bound's own gradient had starved it: 100-200 nats off on this population)."""
    train, _, test = population
    model = ConditionalSoftmaxFlow(
        train.features.shape[1],
        train.label_values,
        hidden=(32,),
        latent=latent,
        n_train_samples=samples,
        seed=0,
    )
    model.fit(train.features, train.labels, train.mask, epochs=40, lr=3e-3, progress=False)
    if latent == "item":
        z, c = model._features(test.features), model._counts(test.labels, test.mask)
        with torch.no_grad():
            ll = model._item_log_lik(z, c, torch.Generator().manual_seed(1), 4096, mixture=True)
        reference = float(-ll.sum() / c.sum())
    else:
        reference = model.nll(test.features, test.labels, test.mask, n_samples=4096)
    assert _q_only_nll(model, test) < reference + 0.4


def test_conditioning_weight_decay_acts_on_the_conditioning_weights_only(population, tmp_path):
    """AdamW shrinks a weight by ``1 - lr * decay`` per step: with ``lr * decay = 1`` the
    conditioning weights are wiped every step (left at one Adam step, at most about ``lr``),
    the other weights are not; the setting survives save / load."""
    train, _, test = population
    kw = {"hidden": (16,), "latent": "item", "seed": 0}
    model = ConditionalSoftmaxFlow(
        train.features.shape[1], train.label_values, conditioning_weight_decay=1000.0, **kw
    )
    model.fit(train.features, train.labels, train.mask, epochs=2, lr=1e-3, progress=False)
    cond = [c.ctx.weight for c in model.couplings] + [model.affine.weight]
    assert max(float(w.detach().abs().max()) for w in cond) <= 1.1e-3
    assert float(model.q_net[0].weight.detach().abs().max()) > 0.01
    assert float(model.encoder.net[0].weight.detach().abs().max()) > 0.01
    path = tmp_path / "flow.pt"
    model.save(path)
    again = load_model(path)
    assert again.conditioning_weight_decay == 1000.0
    torch.testing.assert_close(
        again.predict_proba(test.features, n_samples=64),
        model.predict_proba(test.features, n_samples=64),
    )
    plain = ConditionalSoftmaxFlow(train.features.shape[1], train.label_values, **kw)
    plain.fit(train.features, train.labels, train.mask, epochs=2, lr=1e-3, progress=False)
    assert float(plain.affine.weight.detach().abs().max()) > 0.01
    for bad in (-1.0, math.inf, math.nan, True, "1"):
        with pytest.raises((ValueError, TypeError), match="conditioning_weight_decay"):
            ConditionalSoftmaxFlow(4, (0, 1), conditioning_weight_decay=bad)
