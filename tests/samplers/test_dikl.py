"""DiKL against closed forms on Gaussian targets.

- the noisy target score estimator (importance sampling, then MALA on the denoising posterior)
  matches ``grad log (p * k_t)`` of a Gaussian; on an isotropic Gaussian of precision ``P`` its
  mix of Tweedie's and the target score identity is exact for any posterior draws (zero
  variance), and on a well-separated two-component mixture it matches the closed-form noisy
  score at low, crossover and high noise;
- the generator's initial output spread is set as asked;
- the DiKL gradient estimator of a linear (Gaussian) generator, with the exact noisy model
  score, is unbiased for the gradient of the closed-form ``sum_t w_t KL(q_t || p_t)`` within
  Monte-Carlo error;
- an end-to-end run counts every target evaluation of training and moves the generator onto
  the target.
"""

from __future__ import annotations

import pytest
import torch

import samplers
from samplers.diffusion import VESchedule
from samplers.dikl import dikl_loss, noisy_target_score, sample_times
from samplers.score_nets import GeneratorMLP
from samplers.targets import Gaussian, GaussianMixture, from_log_prob

MU = torch.tensor([0.5, -0.3], dtype=torch.float64)
VAR = torch.tensor([0.4, 0.9], dtype=torch.float64)


def _target() -> Gaussian:
    return Gaussian(MU, torch.diag(VAR))


def _true_noisy_score(u_t, alpha, sigma):
    var = alpha[:, None] ** 2 * VAR + sigma[:, None] ** 2
    return -(u_t - alpha[:, None] * MU) / var


@pytest.mark.parametrize("n_mcmc", [0, 5])
def test_noisy_target_score_matches_gaussian(n_mcmc):
    g = torch.Generator().manual_seed(0)
    n = 400
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-2.5, 0.5, generator=g))
    alpha = torch.ones(n, dtype=torch.float64)
    u_t = MU + torch.sqrt(VAR + sigma[:, None] ** 2) * torch.randn(
        n, 2, generator=g, dtype=torch.float64
    )
    est, stats = noisy_target_score(
        _target(),
        u_t,
        alpha,
        sigma,
        g,
        n_is=128,
        n_mcmc=n_mcmc,
        n_posterior=8,
        target_precision=2.0,
    )
    truth = _true_noisy_score(u_t, alpha, sigma)
    err = (est - truth) * sigma[:, None]  # on the scale of the noise
    se = err.std(0) / n**0.5
    assert bool((err.mean(0).abs() <= 4 * se + 1e-3).all()), (err.mean(0), se)
    assert float((err**2).mean().sqrt()) < 0.15
    assert 0 < stats["is_ess_fraction"] <= 1


@pytest.mark.parametrize("precision", [0.01, 1.0, 400.0])
def test_mixed_score_is_exact_on_isotropic_gaussian(precision):
    """Both identities are linear in u_0 with slopes alpha / sigma^2 and -P / alpha; the mix
    weight c = P sigma^2 / (alpha^2 + P sigma^2) cancels them, whatever the posterior draws."""
    g = torch.Generator().manual_seed(3)
    mu = torch.tensor([0.3, -1.2, 2.0], dtype=torch.float64)
    std = precision**-0.5
    target = Gaussian(mu, std**2 * torch.eye(3, dtype=torch.float64))
    n = 50
    sigma = torch.exp(torch.empty(n, dtype=torch.float64).uniform_(-4.0, 1.0, generator=g))
    alpha = torch.empty(n, dtype=torch.float64).uniform_(0.3, 1.0, generator=g)
    u_t = alpha[:, None] * mu + 3.0 * torch.randn(n, 3, generator=g, dtype=torch.float64)
    est, _ = noisy_target_score(
        target, u_t, alpha, sigma, g, n_is=4, n_mcmc=2, n_posterior=2, target_precision=precision
    )
    var = alpha[:, None] ** 2 * std**2 + sigma[:, None] ** 2
    truth = -(u_t - alpha[:, None] * mu) / var
    torch.testing.assert_close(est, truth, rtol=1e-8, atol=1e-8)


@pytest.mark.parametrize(("sigma", "max_rmse"), [(0.02, 0.1), (0.08, 0.1), (0.25, 0.35)])
def test_noisy_target_score_matches_two_mode_mixture(sigma, max_rmse):
    """Two components 0.5 apart, std 0.05 (precision 400), weights 0.3 / 0.7: p * N(0, sigma^2)
    is the mixture with variances 0.05^2 + sigma^2, whose score is closed-form. (At much higher
    noise few of the importance samples land in a component and the self-normalised estimate
    of the posterior component weights is biased towards equal weights, by O(1 / n_is).)"""
    g = torch.Generator().manual_seed(4)
    means = torch.tensor([[-0.25, 0.0], [0.25, 0.1]], dtype=torch.float64)
    s0 = 0.05
    mix = GaussianMixture(means, s0, torch.tensor([0.3, 0.7], dtype=torch.float64))
    n = 1000
    sig = torch.full((n,), sigma, dtype=torch.float64)
    x0 = mix.sample(n, seed=5)
    u_t = x0 + sigma * torch.randn(n, 2, generator=g, dtype=torch.float64)
    est, _ = noisy_target_score(
        mix,
        u_t,
        torch.ones(n, dtype=torch.float64),
        sig,
        g,
        n_is=512,
        n_mcmc=5,
        n_posterior=8,
        target_precision=1 / s0**2,
    )
    smoothed = GaussianMixture(means, (s0**2 + sigma**2) ** 0.5, mix.weights)
    _, truth = smoothed.log_prob_and_grad(u_t)
    err = (est - truth) * sigma  # noise units
    se = err.std(0) / n**0.5
    assert bool((err.mean(0).abs() <= 4 * se + 2e-3).all()), (err.mean(0), se)
    # per-row spread: at sigma = 0.25 both components are a priori likely and 8 chains give
    # the posterior mean to within 0.5 * (0.21 / 8)^0.5 / sigma ~ 0.3 noise units
    assert float((err**2).sum(-1).mean().sqrt()) < max_rmse
    assert float((truth * sigma).norm(dim=-1).mean()) > 0.3  # the score is not negligible


def test_generator_initial_spread():
    torch.manual_seed(0)
    net = GeneratorMLP(2, 8, 64, 3, output_std=2.5)
    with torch.no_grad():
        x = net(torch.randn(20_000, 8))
    torch.testing.assert_close(x.std(0), torch.full((2,), 2.5), rtol=0.05, atol=0.0)
    torch.testing.assert_close(x.mean(0), torch.zeros(2), rtol=0.0, atol=0.1)
    torch.manual_seed(0)
    plain = GeneratorMLP(2, 8, 64, 3)
    with torch.no_grad():
        assert float(plain(torch.randn(20_000, 8)).std()) < 1.0  # PyTorch's default is narrow
    with pytest.raises(ValueError, match="output_std"):
        GeneratorMLP(2, output_std=-1.0)


def test_dikl_gradient_is_unbiased_for_gaussian_kl():
    torch.manual_seed(0)
    sched = VESchedule(0.1, 2.0)
    grid = torch.tensor([0.2, 0.5, 0.8], dtype=torch.float64)
    A = torch.tensor([[0.8, 0.2], [-0.1, 1.3]], dtype=torch.float64, requires_grad=True)
    b = torch.tensor([1.0, 0.4], dtype=torch.float64, requires_grad=True)

    def kl_t(t):
        s2 = sched.sigma(t) ** 2
        cq = A @ A.T + s2 * torch.eye(2, dtype=torch.float64)
        cp = torch.diag(VAR) + s2 * torch.eye(2, dtype=torch.float64)
        q = torch.distributions.MultivariateNormal(b, cq)
        p = torch.distributions.MultivariateNormal(MU, cp)
        return s2 * torch.distributions.kl_divergence(q, p)

    true = torch.autograd.grad(sum(kl_t(t) for t in grid) / 3, (A, b))
    true = torch.cat([true[0].reshape(-1), true[1]])

    def model_score(u_t, t):  # exact score of q_t = N(b, A A^T + sigma^2 I)
        s2 = sched.sigma(t) ** 2
        cq = (A @ A.T).detach() + s2[:, None, None] * torch.eye(2, dtype=torch.float64)
        return -torch.linalg.solve(cq, (u_t - b.detach())[..., None])[..., 0]

    g = torch.Generator().manual_seed(1)
    target = _target()

    def target_score(u_t, t):
        est, _ = noisy_target_score(
            target,
            u_t,
            sched.alpha(t),
            sched.sigma(t),
            g,
            n_is=64,
            n_mcmc=3,
            n_posterior=4,
            target_precision=2.0,
        )
        return est

    m, reps = 300, 24
    t = grid.repeat_interleave(m)
    ests = []
    for _ in range(reps):
        w = torch.randn(3 * m, 2, generator=g, dtype=torch.float64)
        u = w @ A.T + b
        eps = torch.randn(3 * m, 2, generator=g, dtype=torch.float64)
        loss = dikl_loss(u, t, eps, sched, model_score, target_score)
        ga, gb = torch.autograd.grad(loss, (A, b))
        ests.append(torch.cat([ga.reshape(-1), gb]))
    ests = torch.stack(ests)
    mean, se = ests.mean(0), ests.std(0) / reps**0.5
    assert bool(((mean - true).abs() <= 4 * se + 2e-3).all()), (mean, true, se)
    assert float(true.abs().max()) > 10 * float(se.max())  # the check has power


@pytest.mark.parametrize("exponent", [1.0, 3.0])
def test_sample_times_follow_the_power_density(exponent):
    g = torch.Generator().manual_seed(0)
    t = sample_times(200_000, exponent, g, torch.float64)
    assert float(t.min()) >= 0.0 and float(t.max()) <= 1.0
    # t ~ Beta(exponent, 1): closed-form mean, variance and CDF t^exponent
    mean = exponent / (exponent + 1)
    var = exponent / ((exponent + 1) ** 2 * (exponent + 2))
    se = (var / t.numel()) ** 0.5
    assert abs(float(t.mean()) - mean) < 5 * se
    assert abs(float(t.var()) - var) < 0.02 * var
    for q in (0.3, 0.7, 0.95):
        assert abs(float((t <= q).double().mean()) - q**exponent) < 0.005
    with pytest.raises(ValueError, match="exponent"):
        sample_times(4, 0.0, g)
    with pytest.raises(ValueError, match="t_exponent"):
        samplers.DiKL(t_exponent=-1.0)


def test_dikl_run_counts_evaluations_and_fits_a_gaussian():
    calls = {"rows": 0}
    base = Gaussian(torch.tensor([3.0, -2.0]))

    def fn(x):
        calls["rows"] += x.shape[0]
        return base.log_prob(x)

    target = from_log_prob(fn, 2)
    s = samplers.DiKL(
        n_iters=150,
        data_scale=3.0,
        gen_hidden=32,
        gen_layers=2,
        score_hidden=32,
        score_layers=2,
        batch_size=64,
        n_is=16,
        n_mcmc=2,
        n_posterior=2,
        sigma_min=0.05,
        sigma_max=1.5,
        lr=3e-3,
        score_lr=3e-3,
        target_precision=9.0,
    )
    res = s.run(target, 2000, seed=0)
    assert res.n_evals == calls["rows"] == 150 * s.evals_per_iteration()
    assert res.samples.shape == (2000, 2)
    assert torch.allclose(res.samples.mean(0), torch.tensor([3.0, -2.0]), atol=0.5)
    with pytest.raises(ValueError, match="budget"):
        samplers.DiKL(budget=1e-6).run(target, 10, seed=0)
    with pytest.raises(ValueError, match="n_chains"):
        samplers.DiKL(n_chains=4)


@pytest.mark.parametrize("n_mcmc", [0, 2])
def test_rows_outside_a_bounded_support_cost_no_second_evaluation(n_mcmc):
    """A row whose proposals all fall outside the target's support gets the kernel-only score;
    the other rows reuse the proposals already evaluated (they were drawn and evaluated a
    second time: 3 x 16 rows instead of 2 x 16) and still match the Gaussian's noisy score."""
    from samplers.diffusion import CountingTarget

    base = _target()

    def fn(x):
        lp = base.log_prob(x)
        return torch.where(x[:, 0] > -10.0, lp, torch.full_like(lp, -float("inf")))

    def grad_fn(x):
        return base.log_prob_and_grad(x)[1]

    target = CountingTarget(from_log_prob(fn, 2, grad_fn=grad_fn))
    g = torch.Generator().manual_seed(0)
    n_live, n_is, n_post = 200, 16, 2
    u_t = torch.cat(
        [MU + 0.5 * torch.randn(n_live, 2, generator=g, dtype=torch.float64),
         torch.tensor([[-50.0, 0.0]], dtype=torch.float64)]
    )  # fmt: skip
    alpha = torch.ones(n_live + 1, dtype=torch.float64)
    sigma = torch.full((n_live + 1,), 0.3, dtype=torch.float64)
    est, stats = noisy_target_score(
        target, u_t, alpha, sigma, g, n_is=n_is, n_mcmc=n_mcmc, n_posterior=n_post,
        target_precision=2.0,
    )  # fmt: skip
    assert target.n_log_prob == (n_live + 1) * n_is
    assert target.n_grad == (n_live * n_post * (n_mcmc + 1) if n_mcmc else 0)
    truth = _true_noisy_score(u_t[:n_live], alpha[:n_live], sigma[:n_live])
    err = est[:n_live] - truth  # centred on 0 (self-normalised IS: bias O(1 / n_is))
    se = err.std(0) / n_live**0.5
    assert bool((err.mean(0).abs() < 4 * se + 0.05).all()), (err.mean(0), se)
    assert bool(torch.isfinite(est).all()) and 0 < stats["is_ess_fraction"] <= 1
