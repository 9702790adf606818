"""DiKL against independent references.

- the reverse diffusive KL gradient estimator (exact noisy model score of a linear generator,
  noisy target score by importance sampling + MALA) is unbiased for the gradient of the
  closed-form objective ``int rho(t) w(t) KL(q_t || p_t) dt`` of two Gaussians (full
  covariances), on a VP kernel (``alpha_t < 1``) at fixed levels and on a VE kernel with the
  noise levels drawn from the power density of :func:`~samplers.dikl.sample_times`
  (Gauss-Legendre quadrature of the objective), within Monte-Carlo error;
- a VP run never hands a zero noise level to the scores (``sigma_0 = 0`` made the loss NaN);
- :func:`~samplers.dikl.noisy_target_score` names bad kernel parameters instead of returning
  NaN or a silently wrong score;
- runs reproduce from their seed in float64, leave the global random stream alone, and a
  saved sampler reloads to identical samples.
"""

from __future__ import annotations

import io

import numpy as np
import pytest
import torch

import samplers
import samplers.dikl as dikl
from samplers.diffusion import NoiseSchedule, VESchedule, VPSchedule
from samplers.dikl import dikl_loss, noisy_target_score, sample_times
from samplers.targets import Gaussian

F64 = torch.float64
MU = torch.tensor([0.5, -0.3], dtype=F64)
COV = torch.tensor([[0.4, 0.15], [0.15, 0.9]], dtype=F64)
EYE = torch.eye(2, dtype=F64)
WEIGHTS = {"sigma2": lambda s: s * s, "sigma": lambda s: s, "none": lambda s: torch.ones_like(s)}


def _gaussian_gradient_check(
    sched: NoiseSchedule,
    draw_t,
    objective_t: torch.Tensor,
    objective_w: torch.Tensor,
    weight: str,
    n: int,
    reps: int,
) -> None:
    """Mean of ``reps`` DiKL gradient estimates (``n`` rows each) against the exact gradient of
    ``sum_k objective_w[k] w(t_k) KL(q_{t_k} || p_{t_k})`` (closed-form Gaussian KL)."""
    A = torch.tensor([[0.8, 0.2], [-0.1, 1.3]], dtype=F64, requires_grad=True)
    b = torch.tensor([1.0, 0.4], dtype=F64, requires_grad=True)

    def objective() -> torch.Tensor:
        a, s = sched.alpha(objective_t), sched.sigma(objective_t)
        q = torch.distributions.MultivariateNormal(
            a[:, None] * b, (a * a)[:, None, None] * (A @ A.T) + (s * s)[:, None, None] * EYE
        )
        p = torch.distributions.MultivariateNormal(
            a[:, None] * MU, (a * a)[:, None, None] * COV + (s * s)[:, None, None] * EYE
        )
        kl = torch.distributions.kl_divergence(q, p)
        return (objective_w * WEIGHTS[weight](s) * kl).sum()

    true = torch.cat([g.reshape(-1) for g in torch.autograd.grad(objective(), (A, b))])

    def model_score(u_t, t):  # exact score of q_t = N(alpha b, alpha^2 A A^T + sigma^2 I)
        a, s = sched.alpha(t), sched.sigma(t)
        cq = (a * a)[:, None, None] * (A @ A.T).detach() + (s * s)[:, None, None] * EYE
        return -torch.linalg.solve(cq, (u_t - a[:, None] * b.detach())[..., None])[..., 0]

    g = torch.Generator().manual_seed(1)
    target = Gaussian(MU, COV)

    def target_score(u_t, t):
        est, _ = noisy_target_score(
            target, u_t, sched.alpha(t), sched.sigma(t), g, n_is=64, n_mcmc=3, n_posterior=4,
            target_precision=2.0,
        )  # fmt: skip
        return est

    ests = []
    for _ in range(reps):
        t = draw_t(n, g)
        w = torch.randn(n, 2, generator=g, dtype=F64)
        u = w @ A.T + b
        eps = torch.randn(n, 2, generator=g, dtype=F64)
        loss = dikl_loss(u, t, eps, sched, model_score, target_score, weight)
        ests.append(torch.cat([x.reshape(-1) for x in torch.autograd.grad(loss, (A, b))]))
    ests = torch.stack(ests)
    mean, se = ests.mean(0), ests.std(0) / reps**0.5
    assert bool(((mean - true).abs() <= 4 * se + 2e-3).all()), (mean, true, se)
    assert float(true.abs().max()) > 10 * float(se.max())  # the check has power


def test_dikl_gradient_matches_the_closed_form_on_a_vp_kernel():
    """Levels 0.05 / 0.2 / 0.5 of the VP schedule (alpha 0.99 / 0.81 / 0.28), weight sigma,
    a correlated Gaussian target: the mean over levels of sigma_t KL(q_t || p_t)."""
    sched = VPSchedule()
    grid = torch.tensor([0.05, 0.2, 0.5], dtype=F64)
    m = 300

    def draw_t(n, g):
        return grid.repeat_interleave(n // 3)

    _gaussian_gradient_check(
        sched, draw_t, grid, torch.full((3,), 1 / 3, dtype=F64), "sigma", 3 * m, 16
    )


def test_dikl_gradient_with_power_density_times_matches_the_quadrature():
    """Noise levels drawn with density 2t: the loss's expected gradient is that of
    int_0^1 2t sigma_t^2 KL(q_t || p_t) dt (64-node Gauss-Legendre quadrature)."""
    sched = VESchedule(0.05, 2.0)
    x, w = np.polynomial.legendre.leggauss(64)
    nodes = torch.tensor(0.5 * (x + 1), dtype=F64)
    rho = 2 * nodes * torch.tensor(0.5 * w, dtype=F64)

    def draw_t(n, g):
        return sample_times(n, 2.0, g, F64)

    _gaussian_gradient_check(sched, draw_t, nodes, rho, "sigma2", 900, 24)


def test_vp_run_never_hands_a_zero_noise_level_to_the_scores(monkeypatch):
    """Every noise level drawn as t = 0 (torch.rand returns 0 once in 2^24 float32 draws):
    VP's sigma_0 = 0 made the target score and the loss NaN, every generator weight with it,
    and the run ended in 'non-finite samples'. Levels now start at the score network's t_min."""
    monkeypatch.setattr(
        dikl, "sample_times", lambda n, e, g, dtype=None, device=None: torch.zeros(n, dtype=dtype)
    )
    seen = []
    original = dikl._noisy_target_score  # the training loop's (unchecked) estimator

    def spy(target, u_t, alpha, sigma, *args):
        seen.append(float(sigma.min()))
        return original(target, u_t, alpha, sigma, *args)

    monkeypatch.setattr(dikl, "_noisy_target_score", spy)
    s = samplers.DiKL(
        n_iters=5, schedule="vp", gen_hidden=8, gen_layers=1, score_hidden=8, score_layers=1,
        batch_size=16, n_is=4, n_mcmc=1, n_posterior=1, target_precision=1.0,
    )  # fmt: skip
    res = s.run(Gaussian(MU, COV), 50, seed=0)
    assert bool(torch.isfinite(res.samples).all())
    sigma_min = float(VPSchedule().sigma(torch.tensor(1e-3, dtype=F64)))
    assert len(seen) == 5 and min(seen) == pytest.approx(sigma_min, rel=1e-6)


@pytest.mark.parametrize(
    ("alpha", "sigma", "kwargs", "match"),
    [
        (1.0, 0.0, {}, "sigma"),  # was NaN
        (0.0, 0.5, {}, "alpha"),  # was NaN
        (1.0, -0.5, {}, "sigma"),  # was the score at |sigma|
        (torch.ones(3), 0.5, {}, "alpha"),  # was a broadcasting RuntimeError
        (1.0, 0.5, {"target_precision": -4.0}, "target_precision"),  # was NaN
        (1.0, 0.5, {"target_precision": -1.0}, "target_precision"),  # was a wrong score
        (1.0, 0.5, {"step_scale": -1.0}, "step_scale"),
    ],
)
def test_noisy_target_score_names_bad_kernel_parameters(alpha, sigma, kwargs, match):
    g = torch.Generator().manual_seed(0)
    u_t = torch.randn(4, 2, generator=g, dtype=F64)
    alpha, sigma = (
        torch.full((4,), v, dtype=F64) if isinstance(v, float) else v for v in (alpha, sigma)
    )
    with pytest.raises(ValueError, match=match):
        noisy_target_score(Gaussian(MU, COV), u_t, alpha, sigma, g, **kwargs)
    with pytest.raises(ValueError, match="u_t"):
        noisy_target_score(Gaussian(MU, COV), u_t[0], 1.0, 0.5, g)


def test_scalar_kernel_parameters_equal_per_row_ones():
    """A scalar alpha / sigma (0-d tensor or float; a 0-d tensor raised IndexError) gives the
    same draws and score as the same value repeated per row."""
    u_t = torch.randn(6, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    target = Gaussian(MU, COV)
    ref, _ = noisy_target_score(
        target, u_t, torch.full((6,), 0.8, dtype=F64), torch.full((6,), 0.3, dtype=F64),
        torch.Generator().manual_seed(1),
    )  # fmt: skip
    for a, s in ((torch.tensor(0.8, dtype=F64), torch.tensor(0.3, dtype=F64)), (0.8, 0.3)):
        est, _ = noisy_target_score(target, u_t, a, s, torch.Generator().manual_seed(1))
        torch.testing.assert_close(est, ref, rtol=1e-12, atol=1e-12)


def test_float64_runs_reproduce_and_a_saved_sampler_reloads_to_identical_samples():
    kw = dict(
        n_iters=8, data_scale=2.0, gen_hidden=16, gen_layers=1, score_hidden=16, score_layers=1,
        batch_size=16, n_is=4, n_mcmc=1, n_posterior=1, target_precision=1.0,
    )  # fmt: skip
    target = Gaussian(MU, COV)
    state = torch.random.get_rng_state()
    r1 = samplers.DiKL(**kw).run(target, 40, seed=3)
    assert torch.equal(torch.random.get_rng_state(), state)  # the global stream is untouched
    s = samplers.DiKL(**kw)
    r2 = s.run(target, 40, seed=3)
    assert r1.samples.dtype == F64 and torch.equal(r1.samples, r2.samples)
    assert not torch.equal(r1.samples, samplers.DiKL(**kw).run(target, 40, seed=4).samples)
    buf = io.BytesIO()
    torch.save(s, buf)
    buf.seek(0)
    loaded = torch.load(buf, weights_only=False)
    torch.testing.assert_close(loaded.sample(30, 7), s.sample(30, 7), rtol=0, atol=0)
    assert loaded.sample(30, 7).dtype == F64


def test_importance_ess_counts_rows_outside_a_bounded_support_as_zero():
    """199 of 200 rows with no proposal in the support reported the live row's ESS (0.96),
    while 200 of 200 reported 0: the mean over all rows, by hand from the same draws."""
    from samplers.targets import from_log_prob

    base = Gaussian(MU, COV)

    def fn(x):
        lp = base.log_prob(x)
        return torch.where(x[:, 0] > -10.0, lp, torch.full_like(lp, -float("inf")))

    target = from_log_prob(fn, 2, grad_fn=lambda x: base.log_prob_and_grad(x)[1])
    n_is = 16
    for n_live in (1, 100, 200):
        g = torch.Generator().manual_seed(0)
        u_t = torch.cat(
            [MU + 0.3 * torch.randn(n_live, 2, generator=g, dtype=F64),
             torch.tensor([[-50.0, 0.0]], dtype=F64).expand(200 - n_live, 2)]
        )  # fmt: skip
        state = g.get_state()
        _, stats = noisy_target_score(target, u_t, 1.0, 0.3, g, n_is=n_is, n_mcmc=1)
        g.set_state(state)
        props = u_t[:, None] + 0.3 * torch.randn(200, n_is, 2, generator=g, dtype=F64)
        w = torch.softmax(base.log_prob(props[:n_live].reshape(-1, 2)).reshape(n_live, n_is), -1)
        ess = float((1 / (w * w).sum(-1)).sum()) / 200 / n_is
        assert stats["is_ess_fraction"] == pytest.approx(ess, rel=1e-10)


@pytest.mark.parametrize(("dim", "n_particles"), [(8, 4), (12, 4), (39, 13)])
def test_particle_generator_initial_spread_is_the_requested_one(dim, n_particles):
    """The centring after the last layer mixed the coordinates: one rescaling left the
    per-coordinate spreads of a 4-particle generator between 1.73 and 2.48 for 2.0."""
    from samplers.score_nets import GeneratorMLP, centre_particles

    torch.manual_seed(0)
    net = GeneratorMLP(dim, 8, 64, 2, n_particles=n_particles, output_std=2.0)
    with torch.no_grad():
        x = net(torch.randn(40_000, 8))
    # 4096 probes: the spreads carry ~1.1% sampling error each
    torch.testing.assert_close(x.std(0), torch.full((dim,), 2.0), rtol=0.05, atol=0.0)
    torch.testing.assert_close(x.mean(0), torch.zeros(dim), rtol=0.0, atol=0.15)
    torch.testing.assert_close(centre_particles(x, n_particles), x)
