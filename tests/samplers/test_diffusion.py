"""Diffusion building blocks against closed forms.

- the probability-flow ODE with the exact score of a Gaussian maps the prior to that Gaussian,
  and its log-density (exact trace, and Hutchinson on average) matches the Gaussian's;
- the reverse SDE with the exact score gives the Gaussian's moments;
- a network trained by denoising score matching on Gaussian samples recovers the moments;
- the particle score network is translation invariant and mean-free.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_post_hook

from samplers.diffusion import (
    CountingTarget,
    DiffusionModel,
    Normalizer,
    TemperedTarget,
    VESchedule,
    VPSchedule,
    ode_log_prob,
    ode_sample,
    sde_sample,
)
from samplers.score_nets import GeneratorMLP, ScoreMLP, centre_particles
from samplers.targets import Gaussian

MEAN = torch.tensor([0.7, -0.4], dtype=torch.float64)
COV = torch.tensor([[0.8, 0.3], [0.3, 0.5]], dtype=torch.float64)


def gaussian_score(schedule, mean=MEAN, cov=COV):
    """Exact score of ``p_t = N(alpha m, alpha^2 S + sigma^2 I)``."""

    def score(z, t):
        a, s = schedule.alpha(t)[:, None, None], schedule.sigma(t)[:, None, None]
        c = a**2 * cov + s**2 * torch.eye(2, dtype=z.dtype)
        r = z - a[:, :, 0] * mean
        return -torch.linalg.solve(c, r[..., None])[..., 0]

    return score


def gaussian_log_prob(x, mean=MEAN, cov=COV):
    return torch.distributions.MultivariateNormal(mean, cov).log_prob(x)


# VE: a centred Gaussian, since the N(0, (1 + sigma_max^2) I) prior ignores the data mean
@pytest.mark.parametrize(
    "schedule, mean", [(VPSchedule(), MEAN), (VESchedule(0.01, 20.0), torch.zeros(2).double())]
)
def test_ode_log_density_matches_gaussian_closed_form(schedule, mean):
    g = torch.Generator().manual_seed(0)
    score = gaussian_score(schedule, mean)
    z1 = schedule.prior_std() * torch.randn(400, 2, generator=g, dtype=torch.float64)
    z0, lq = ode_sample(score, schedule, z1, 200, 1e-4, log_prob=True)
    # the ODE transports the prior onto the Gaussian (up to the tiny noise at t_min)
    assert torch.allclose(z0.mean(0), mean, atol=4 * 0.9 / math.sqrt(400))
    # and the change of variables gives its exact log-density at the end points
    exact = gaussian_log_prob(z0, mean)
    assert torch.allclose(lq, exact, atol=2e-2), (lq - exact).abs().max()
    # the reverse direction (data -> noise) agrees too
    lq2 = ode_log_prob(score, schedule, z0, 200, 1e-4)
    assert torch.allclose(lq2, exact, atol=2e-2)


def test_hutchinson_log_density_is_unbiased():
    schedule = VPSchedule()
    x = torch.distributions.MultivariateNormal(MEAN, COV).sample((16,))
    exact = ode_log_prob(gaussian_score(schedule), schedule, x, 100, 1e-4)
    # 64 independent probes per point: the 16 points tiled 64 times in one batch
    reps = ode_log_prob(
        gaussian_score(schedule),
        schedule,
        x.repeat(64, 1),
        100,
        1e-4,
        "hutchinson",
        torch.Generator().manual_seed(0),
    ).reshape(64, 16)
    se = reps.std(0) / 8
    assert bool(((reps.mean(0) - exact).abs() <= 4 * se + 1e-6).all())
    assert float(reps.std(0).max()) > 0  # the estimator is random


def test_reverse_sde_recovers_gaussian_moments():
    schedule = VPSchedule()
    g = torch.Generator().manual_seed(1)
    z1 = torch.randn(4000, 2, generator=g, dtype=torch.float64)
    z0 = sde_sample(gaussian_score(schedule), schedule, z1, 400, 1e-4, g)
    n = z0.shape[0]
    se_mean = torch.sqrt(torch.diagonal(COV) / n)
    assert bool(((z0.mean(0) - MEAN).abs() <= 5 * se_mean + 0.02).all())
    assert torch.allclose(torch.cov(z0.T), COV, atol=0.08)


def test_trained_diffusion_model_recovers_gaussian_moments():
    torch.manual_seed(0)
    mean, cov = torch.tensor([3.0, -2.0]), torch.tensor([[4.0, 1.2], [1.2, 1.0]])
    data = torch.distributions.MultivariateNormal(mean, cov).sample((4000,))
    model = DiffusionModel(ScoreMLP(2, hidden=64, n_layers=2), VPSchedule(), Normalizer.fit(data))
    losses = model.fit(data, steps=1500, batch_size=256, lr=2e-3, seed=0)
    assert sum(losses[-100:]) < sum(losses[:100])
    for method in ("ode", "sde"):
        x = model.sample(4000, seed=3, method=method, n_steps=100).double()
        assert torch.allclose(x.mean(0), mean.double(), atol=0.15), (method, x.mean(0))
        assert torch.allclose(torch.cov(x.T), cov.double(), atol=0.35, rtol=0.1), (
            method,
            torch.cov(x.T),
        )
    # the ODE log-density of the trained model is close to the Gaussian's
    x = torch.distributions.MultivariateNormal(mean, cov).sample((200,))
    lq = model.log_prob(x, n_steps=50)
    lp = torch.distributions.MultivariateNormal(mean, cov).log_prob(x)
    assert float((lq - lp).abs().median()) < 0.15


def test_particle_score_net_is_translation_invariant_and_mean_free():
    net = ScoreMLP(12, hidden=32, n_layers=2, n_particles=4)
    x = torch.randn(5, 12)
    t = torch.rand(5)
    shift = torch.randn(5, 1, 3).expand(5, 4, 3).reshape(5, 12)
    out = net(x, t)
    assert torch.allclose(out, net(x + shift, t), atol=1e-5)
    assert torch.allclose(out.reshape(5, 4, 3).mean(1), torch.zeros(5, 3), atol=1e-6)
    gen = GeneratorMLP(12, latent_dim=6, hidden=16, n_particles=4)
    y = gen(torch.randn(7, 6))
    assert torch.allclose(y.reshape(7, 4, 3).mean(1), torch.zeros(7, 3), atol=1e-6)
    with pytest.raises(ValueError, match="multiple"):
        ScoreMLP(10, n_particles=4)


def test_counting_and_tempered_targets():
    base = Gaussian(torch.zeros(2))
    c = CountingTarget(base)
    tt = TemperedTarget(c, 0.25)
    x = torch.randn(7, 2)
    lp, g = tt.log_prob_and_grad(x)
    lp0, g0 = base.log_prob_and_grad(x)
    assert torch.allclose(lp, 0.25 * lp0) and torch.allclose(g, 0.25 * g0)
    tt.log_prob(x[:3])
    assert (c.n_grad, c.n_log_prob, c.n_evals) == (7, 3, 10)
    with pytest.raises(ValueError, match="beta"):
        TemperedTarget(base, 0.0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="beta_min"):
        VPSchedule(1.0, 0.5)
    with pytest.raises(ValueError, match="scale"):
        Normalizer(torch.zeros(2), torch.tensor([1.0, -1.0]))
    with pytest.raises(ValueError, match="trace"):
        ode_sample(
            gaussian_score(VPSchedule()),
            VPSchedule(),
            torch.zeros(3, 2, dtype=torch.float64),
            2,
            log_prob=True,
            trace="bad",
        )


def test_ema_is_the_bias_corrected_average_of_the_trained_weights():
    """The EMA weights are ``sum_s (1 - e) e^(n - s) W_s / (1 - e^n)`` over the weights ``W_s``
    after each step (recorded by an optimizer hook): the initial weights get no share (an
    average started at them kept ``e^n`` of the random initialisation)."""
    torch.manual_seed(0)
    data = torch.randn(300, 2)
    model = DiffusionModel(ScoreMLP(2, hidden=8, n_layers=1), VPSchedule(), Normalizer.fit(data))
    start = {k: v.clone() for k, v in model.net.state_dict().items()}
    trajectory = []

    def record(opt, args, kwargs):
        trajectory.append([p.detach().clone() for p in opt.param_groups[0]["params"]])

    handle = register_optimizer_step_post_hook(record)
    try:
        model.fit(data, steps=5, batch_size=64, ema=0.0, seed=3)
    finally:
        handle.remove()
    assert len(trajectory) == 5
    e, n = 0.9, 5
    want = [
        sum((1 - e) * e ** (n - s) * w[j] for s, w in enumerate(trajectory, 1)) / (1 - e**n)
        for j in range(len(trajectory[0]))
    ]
    model.net.load_state_dict(start)
    model.fit(data, steps=5, batch_size=64, ema=e, seed=3)
    for p, w in zip(model.net.parameters(), want):
        torch.testing.assert_close(p, w, rtol=1e-5, atol=1e-6)
    # a warm start keeps the starting weights' share e^n: e^n W_0 + sum_s (1 - e) e^(n - s) W_s
    model.net.load_state_dict(start)
    model.fit(data, steps=5, batch_size=64, ema=e, seed=3, warm_start=True)
    w0 = [start[k] for k, _ in model.net.named_parameters()]
    for p, w, a in zip(model.net.parameters(), want, w0):
        torch.testing.assert_close(p, e**n * a + (1 - e**n) * w, rtol=1e-5, atol=1e-6)
    # one step: the trained weights whatever the decay
    model.net.load_state_dict(start)
    model.fit(data, steps=1, batch_size=64, ema=0.999, seed=3)
    model2 = DiffusionModel(ScoreMLP(2, hidden=8, n_layers=1), VPSchedule(), Normalizer.fit(data))
    model2.net.load_state_dict(start)
    model2.fit(data, steps=1, batch_size=64, ema=0.0, seed=3)
    for p, q in zip(model.net.parameters(), model2.net.parameters()):
        torch.testing.assert_close(p, q, rtol=1e-6, atol=1e-7)


class _ExactParticleNet(torch.nn.Module):
    """Noise prediction of the exact score of CoM-free data ``N(0, v C)`` (``C`` the centring
    projector of 3 particles in 2-D), noised by ``schedule``: ``eps = sigma C z / (a^2 v +
    sigma^2)``."""

    n_particles, dim = 3, 6

    def __init__(self, schedule, v):
        super().__init__()
        self.schedule, self.v = schedule, v

    def forward(self, z, t):
        a, s = self.schedule.alpha(t)[:, None], self.schedule.sigma(t)[:, None]
        return s * centre_particles(z, 3) / (a * a * self.v + s * s)


@pytest.mark.parametrize("schedule", [VPSchedule(), VESchedule(0.01, 20.0)])
def test_particle_model_samples_and_density_live_on_the_com_free_subspace(schedule):
    """With the exact score of CoM-free Gaussian data, the samples are CoM-free with the
    data's covariance, and the ODE log-density is the closed-form Gaussian density of the
    4-dimensional subspace (target coordinates, scale 2). The prior's centre of mass used to
    be kept and scaled by the drift (by alpha_tmin / alpha_1 ~ 152 for VP)."""
    v, scale = 0.5, 2.0
    model = DiffusionModel(
        _ExactParticleNet(schedule, v),
        schedule,
        Normalizer(torch.zeros(6, dtype=torch.float64), torch.tensor(scale, dtype=torch.float64)),
        t_min=1e-4,
    )
    tau = scale**2 * v  # subspace variance in target coordinates

    def closed_form(x):
        return -0.5 * (x * x).sum(-1) / tau - 2.0 * math.log(2 * math.pi * tau)

    x, lq = model.sample_with_log_prob(300, seed=0, n_steps=200)
    com = x.reshape(300, 3, 2).mean(1)
    assert float(com.abs().max()) < 1e-6
    torch.testing.assert_close(lq, closed_form(x), rtol=0, atol=3e-2)
    # the reverse direction, and a translated copy (the density of the CoM-free part)
    torch.testing.assert_close(model.log_prob(x, n_steps=200), closed_form(x), rtol=0, atol=3e-2)
    shifted = x + torch.tensor([3.0, -1.0], dtype=torch.float64).repeat(3)
    torch.testing.assert_close(
        model.log_prob(shifted, n_steps=200), closed_form(x), rtol=0, atol=3e-2
    )
    # ODE and SDE samples: CoM-free, covariance tau C (C = I - 1 1^T / 3 per coordinate)
    want = tau * centre_particles(torch.eye(6, dtype=torch.float64), 3)
    for method in ("ode", "sde"):
        y = model.sample(4000, seed=1, method=method, n_steps=300)
        assert float(y.reshape(-1, 3, 2).mean(1).abs().max()) < 1e-6, method
        torch.testing.assert_close(torch.cov(y.T), want, rtol=0, atol=0.12)


def test_normalizer_scale_is_the_spread_about_the_mean():
    """The isotropic scale is the standard deviation of the centred data (numpy), so it does
    not change when the coordinates are shifted (it counted the spread of the coordinates'
    means: 32.5 instead of 1.6 for an offset of 30, and a diffusion model trained there
    sampled 1.5-4x the variances)."""
    import numpy as np

    g = torch.Generator().manual_seed(0)
    x = torch.randn(500, 3, generator=g, dtype=torch.float64) * torch.tensor([1.0, 2.0, 0.5])
    for offset in ([0.0, 0.0, 0.0], [30.0, -30.0, 5.0]):
        y = x + torch.tensor(offset, dtype=torch.float64)
        norm = Normalizer.fit(y)
        xn = y.numpy()
        want = np.sqrt(((xn - xn.mean(0)) ** 2).sum() / (xn.size - 1))
        assert float(norm.scale) == pytest.approx(want, rel=1e-12)
        torch.testing.assert_close(norm.shift, y.mean(0))
        per = Normalizer.fit(y, isotropic=False)
        torch.testing.assert_close(per.scale, torch.from_numpy(xn.std(0, ddof=1)))


def test_fit_and_log_prob_name_bad_samples():
    """Non-finite training samples made every weight NaN without an error; samples of the
    wrong width failed with a broadcasting RuntimeError."""
    x = torch.randn(50, 2)
    model = DiffusionModel(ScoreMLP(2, hidden=8, n_layers=1), VPSchedule(), Normalizer.fit(x))
    bad = x.clone()
    bad[7, 1] = float("nan")
    with pytest.raises(ValueError, match="x must be finite.*1 of 50 rows.*row 7"):
        model.fit(bad, 2)
    assert all(bool(torch.isfinite(p).all()) for p in model.parameters())
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        model.fit(torch.randn(5, 3), 2)
    with pytest.raises(ValueError, match=r"x must have shape \(n, 2\)"):
        model.log_prob(torch.randn(5, 3))
