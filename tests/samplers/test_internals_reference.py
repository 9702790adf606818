"""Sampler internals against computations written independently of the library.

- targets: the Many-Well normaliser by adaptive quadrature (and the published constant), exact
  samplers against their densities (chi-square, Kolmogorov-Smirnov on 1-D marginals and
  projections), DW-4 / LJ energies by explicit loops over particle pairs, closed-form gradients
  against autograd and central finite differences (float64);
- diffusion: VP / VE schedules against their formulas, the SDE coefficients against finite
  differences of ``log alpha`` and ``sigma^2``, the DSM loss of the Bayes-optimal denoiser of
  Gaussian data against quadrature over ``t``, the ODE log-density with an exact Gaussian score
  against the exact Gaussian flow map, reverse-SDE moments, Hutchinson's estimator against the
  exact trace (mean and variance over all Rademacher probes);
- parallel tempering: swap probabilities and decisions against the closed form and a loop, the
  tempered marginals of a Gaussian kept from exact starts, the swap rate against its closed form;
- DiGS: one sweep (initialisation, MALA, both) keeps a Gaussian and a 1-D mixture invariant from
  exact starts at several noise levels, and the levels cycle and adapt as documented;
- dual averaging against the Hoffman & Gelman (2014) recursion.
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest
import scipy.integrate as si
import scipy.stats as ss
import torch

import samplers
from samplers.adaptation import DualAveraging
from samplers.base import RunPlan
from samplers.diffusion import (
    DiffusionModel,
    Normalizer,
    VESchedule,
    VPSchedule,
    _velocity_div,
    ode_log_prob,
    ode_sample,
    sde_sample,
)
from samplers.digs import digs_sweep
from samplers.dikl import noisy_target_score
from samplers.kernels import ChainState
from samplers.targets import (
    DoubleWell4,
    Gaussian,
    GaussianMixture,
    LennardJones,
    ManyWell,
    MoG40,
)
from samplers.tempering import ParallelTempering, geometric_ladder, swap_step
from tests.samplers.test_targets import _loop_energy_dw4, _loop_energy_lj

F64 = torch.float64


def _z_mean_var(x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> tuple:
    """z-scores of the sample mean and variance of ``n`` independent draws per coordinate."""
    n = x.shape[0]
    zm = (x.mean(0) - mean) / torch.sqrt(var / n)
    zv = (x.var(0) - var) / (var * math.sqrt(2 / (n - 1)))
    return zm, zv


# ------------------------------------------------------------------------------ targets
def _well(d: float) -> float:
    return math.exp(0.5 * d + 6 * d * d - d**4)


def _well_mass(lo: float, hi: float) -> float:
    return si.quad(_well, lo, hi, epsabs=0, epsrel=1e-13, limit=200)[0]


def test_manywell_pair_normaliser_matches_quadrature_and_the_anchor():
    z_d = _well_mass(-np.inf, 0.0) + _well_mass(0.0, np.inf)
    assert z_d == pytest.approx(11784.50927, rel=1e-9)  # the published constant (ANCHORS)
    per_pair = math.log(z_d) + 0.5 * math.log(2 * math.pi)
    for dim in (2, 32):
        mw = ManyWell(dim)
        assert mw.log_normalizer == pytest.approx(dim // 2 * per_pair, abs=1e-9 * dim)


def test_manywell_exact_samples_follow_the_double_well_density():
    n = 300_000
    x = ManyWell(2).sample(n, seed=5).double()
    d, v = x[:, 0].numpy(), x[:, 1].numpy()
    z = _well_mass(-np.inf, 0.0) + _well_mass(0.0, np.inf)
    # the heavier (right) well's share: binomial z-score
    p = _well_mass(0.0, np.inf) / z
    k = float((d > 0).sum())
    assert abs(k - n * p) / math.sqrt(n * p * (1 - p)) < 4
    # chi-square over 40 bins whose probabilities come from quadrature
    edges = np.linspace(-2.6, 2.6, 41)
    cdf = np.array([_well_mass(-np.inf, e) / z for e in edges])
    probs = np.diff(np.concatenate([[0.0], cdf, [1.0]]))
    counts = np.histogram(d, np.concatenate([[-np.inf], edges, [np.inf]]))[0]
    keep = probs * n > 5
    chi2 = float(((counts[keep] - n * probs[keep]) ** 2 / (n * probs[keep])).sum())
    assert ss.chi2.sf(chi2, int(keep.sum()) - 1) > 1e-3
    assert ss.kstest(v, "norm").pvalue > 1e-3


def _mixture_cdf(w, mu, s):
    return lambda q: (w[None] * ss.norm.cdf((q[:, None] - mu[None]) / s[None])).sum(1)


@pytest.mark.parametrize(
    "target",
    [
        MoG40().double(),
        GaussianMixture(
            torch.tensor([[-3.0, 1.0], [2.0, 0.0], [0.0, 5.0]], dtype=F64),
            torch.tensor([[0.5, 1.0], [1.5, 0.3], [1.0, 2.0]], dtype=F64),
            torch.tensor([0.2, 0.5, 0.3], dtype=F64),
        ),
    ],
    ids=["mog40", "weighted_diagonal"],
)
def test_mixture_exact_samples_have_the_mixture_marginals(target):
    x = target.sample(50_000, seed=1).numpy()
    w, mu, s = (t.numpy() for t in (target.weights, target.means, target.scales))
    for j in range(target.dim):
        assert ss.kstest(x[:, j], _mixture_cdf(w, mu[:, j], s[:, j])).pvalue > 1e-3


def test_gaussian_exact_samples_have_the_gaussian_marginals_and_projections():
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    cov = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=F64)
    x = Gaussian(mean, cov).sample(50_000, seed=0)
    dirs = torch.cat([torch.eye(3, dtype=F64), torch.tensor([[0.3, -1.0, 2.0]], dtype=F64)])
    for a in dirs:
        sd = math.sqrt(float(a @ cov @ a))
        assert ss.kstest((x @ a).numpy(), "norm", args=(float(a @ mean), sd)).pvalue > 1e-3


def test_particle_energies_match_the_pair_loops():
    """DW-4 and LJ-5 / LJ-13 energies against the pair loops of test_targets (ANCHORS: LJ counts
    each pair twice, plus the harmonic term), and LJ log_prob = -energy - the COM term."""
    rng = np.random.default_rng(0)
    x = 2.0 * rng.normal(size=(20, 8))
    e = DoubleWell4().energy(torch.tensor(x)).numpy()
    np.testing.assert_allclose(e, [_loop_energy_dw4(r) for r in x], rtol=1e-12, atol=1e-10)
    for n in (5, 13):
        lj = LennardJones(n)
        g = torch.Generator().manual_seed(n)
        x = lj.init_positions(10, g).double() + 0.1 * torch.randn(10, 3 * n, generator=g, dtype=F64)
        e = lj.energy(x).numpy()
        np.testing.assert_allclose(e, [_loop_energy_lj(r, n) for r in x.numpy()], rtol=1e-12)
        # log_prob adds only the centre-of-mass Gaussian (com_scale 1)
        c = x.reshape(10, n, 3).mean(1)
        lp = lj.log_prob(x)
        torch.testing.assert_close(lp, -torch.as_tensor(e) - 0.5 * n * (c * c).sum(-1))


def _points(name: str) -> tuple:
    g = torch.Generator().manual_seed(3)
    if name == "dw4":
        return DoubleWell4(), 2.0 * torch.randn(6, 8, generator=g, dtype=F64)
    if name == "lj13":
        lj = LennardJones(13)
        x = lj.init_positions(6, g).double() + 0.1 * torch.randn(6, 39, generator=g, dtype=F64)
        return lj, x
    if name == "manywell":
        return ManyWell(8), 1.5 * torch.randn(6, 8, generator=g, dtype=F64)
    if name == "mog40":
        return MoG40().double(), 20.0 * torch.randn(6, 2, generator=g, dtype=F64)
    if name == "mixture":
        mix = GaussianMixture(
            torch.tensor([[-3.0, 1.0], [2.0, 0.0]], dtype=F64),
            torch.tensor([[0.5, 1.0], [1.5, 0.3]], dtype=F64),
            torch.tensor([0.3, 0.7], dtype=F64),
        )
        return mix, 3.0 * torch.randn(6, 2, generator=g, dtype=F64)
    cov = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=F64)
    gauss = Gaussian(torch.tensor([1.0, -2.0, 0.5], dtype=F64), cov)
    return gauss, torch.randn(6, 3, generator=g, dtype=F64)


@pytest.mark.parametrize("name", ["dw4", "lj13", "manywell", "mog40", "mixture", "gaussian"])
def test_closed_form_gradients_match_autograd_and_finite_differences(name):
    target, x = _points(name)
    lp, grad = target.log_prob_and_grad(x)
    xr = x.clone().requires_grad_(True)
    lp_a = target.log_prob(xr)
    (grad_a,) = torch.autograd.grad(lp_a.sum(), xr)
    torch.testing.assert_close(lp, lp_a.detach(), rtol=1e-13, atol=1e-12)
    scale = float(grad.abs().max().clamp_min(1.0))
    assert float((grad - grad_a).abs().max()) < 1e-12 * scale
    h = 1e-6
    fd = torch.empty_like(x)
    for j in range(x.shape[1]):
        e = torch.zeros_like(x)
        e[:, j] = h
        fd[:, j] = (target.log_prob(x + e) - target.log_prob(x - e)) / (2 * h)
    assert float((grad - fd).abs().max()) < 1e-6 * scale


# ------------------------------------------------------------------------------ diffusion
SCHEDULES = [
    VPSchedule(0.1, 20.0),
    VPSchedule(0.5, 7.0),
    VESchedule(0.01, 3.0),
    VESchedule(0.05, 50),
]


@pytest.mark.parametrize("sch", SCHEDULES, ids=repr)
def test_schedules_match_their_formulas_and_sde_coefficients(sch):
    t = torch.linspace(0.01, 0.99, 25, dtype=F64)
    if isinstance(sch, VPSchedule):
        b = sch.beta_min * t + 0.5 * (sch.beta_max - sch.beta_min) * t * t
        alpha, sigma = torch.exp(-b / 2), torch.sqrt(1 - torch.exp(-b))
        assert sch.prior_std() == pytest.approx(1.0, abs=1e-12)
    else:
        alpha = torch.ones_like(t)
        sigma = sch.sigma_min * (sch.sigma_max / sch.sigma_min) ** t
        assert sch.prior_std() == pytest.approx(math.sqrt(1 + sch.sigma_max**2), rel=1e-12)
    torch.testing.assert_close(sch.alpha(t), alpha, rtol=1e-13, atol=1e-15)
    torch.testing.assert_close(sch.sigma(t), sigma, rtol=1e-13, atol=1e-15)
    # f = d log alpha / dt and g^2 = d sigma^2 / dt - 2 f sigma^2, by central differences
    h = 1e-6
    f = (torch.log(sch.alpha(t + h)) - torch.log(sch.alpha(t - h))) / (2 * h)
    g2 = (sch.sigma(t + h) ** 2 - sch.sigma(t - h) ** 2) / (2 * h) - 2 * f * sigma**2
    torch.testing.assert_close(sch.drift(t), f, rtol=1e-7, atol=1e-8)
    torch.testing.assert_close(sch.diffusion2(t), g2, rtol=1e-7, atol=1e-8)


DATA_SD = torch.tensor([0.5, 1.0, 2.0], dtype=F64)


class _OptimalDenoiser(torch.nn.Module):
    """``E[eps | z_t]`` for data ``N(0, diag(DATA_SD^2))``:
    ``sigma z / (alpha^2 s^2 + sigma^2)``."""

    dim = 3

    def __init__(self, sch):
        super().__init__()
        self.sch = sch
        self.unused = torch.nn.Parameter(torch.zeros(()))

    def forward(self, z, t):
        a, s = self.sch.alpha(t)[:, None], self.sch.sigma(t)[:, None]
        return s * z / (a * a * DATA_SD**2 + s * s)


@pytest.mark.parametrize("sch", [VPSchedule(), VESchedule(0.01, 3.0)], ids=repr)
def test_dsm_loss_of_the_optimal_denoiser_equals_its_expected_value(sch):
    # E||eps_hat - eps||^2 at the Bayes-optimal eps_hat is sum_j a^2 s_j^2 / (a^2 s_j^2 + sig^2)
    # averaged over t ~ U[t_min, 1]: a wrong target (e.g. the score, or z0) or noising breaks it
    t_min = 1e-3
    model = DiffusionModel(_OptimalDenoiser(sch), sch, Normalizer(torch.zeros(3), 1.0), t_min)
    g = torch.Generator().manual_seed(0)
    z0 = DATA_SD * torch.randn(400_000, 3, generator=g, dtype=F64)

    def per_t(t):
        a, s = (float(f(torch.tensor(t, dtype=F64))) for f in (sch.alpha, sch.sigma))
        return sum(a * a * v * v / (a * a * v * v + s * s) for v in DATA_SD.tolist())

    ref = si.quad(per_t, t_min, 1.0)[0] / (1 - t_min)
    loss = float(model.dsm_loss(z0, g))
    # the per-sample loss has a standard deviation below 3 here: 0.005 is > 3 standard errors
    assert loss == pytest.approx(ref, abs=0.005)
    # the score is -eps_hat / sigma: the exact score of the noisy Gaussian
    t = torch.full((5,), 0.3, dtype=F64)
    z = torch.randn(5, 3, generator=g, dtype=F64)
    a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
    torch.testing.assert_close(model.score(z, t), -z / (a * a * DATA_SD**2 + s * s))


MEAN = torch.tensor([0.7, -0.4], dtype=F64)
SD = torch.tensor([0.6, 1.3], dtype=F64)


def _gauss_score(sch):
    def score(z, t):
        a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
        return -(z - a * MEAN) / (a * a * SD**2 + s * s)

    return score


def _log_normal(z, m, v):
    v = torch.as_tensor(v, dtype=F64)
    return (-0.5 * (z - m) ** 2 / v - 0.5 * torch.log(2 * math.pi * v)).sum(-1)


@pytest.mark.parametrize("sch", [VPSchedule(), VESchedule(0.01, 20.0)], ids=repr)
def test_ode_log_density_equals_the_exact_gaussian_flow(sch):
    """With the exact score of ``p_t = N(a m, a^2 S^2 + s^2)`` the flow keeps each coordinate's
    standardised value, so ``z_1 = a_1 m + sqrt(v_1 / v_0) (x - a_0 m)`` and the model density
    is ``log p_tmin(x) + log N(z_1; 0, prior_std^2) - log p_1(z_1)`` (the prior replaces
    ``p_1``); Heun's error must shrink as ``1 / n_steps^2``."""
    t_min = 1e-3
    one, t0 = torch.tensor(1.0, dtype=F64), torch.tensor(t_min, dtype=F64)
    a1, s1, a0, s0 = sch.alpha(one), sch.sigma(one), sch.alpha(t0), sch.sigma(t0)
    v1, v0 = a1**2 * SD**2 + s1**2, a0**2 * SD**2 + s0**2
    x = MEAN + SD * torch.randn(200, 2, generator=torch.Generator().manual_seed(1), dtype=F64)
    z1 = a1 * MEAN + torch.sqrt(v1 / v0) * (x - a0 * MEAN)
    ref = (
        _log_normal(x, a0 * MEAN, v0)
        + _log_normal(z1, 0.0, sch.prior_std() ** 2)
        - _log_normal(z1, a1 * MEAN, v1)
    )
    errs = []
    for n_steps in (100, 400):
        lq = ode_log_prob(_gauss_score(sch), sch, x, n_steps, t_min)
        errs.append(float((lq - ref).abs().max()))
    assert errs[1] < 3e-3 and errs[1] < errs[0] / 10, errs
    # forwards from the exact z_1 the ODE lands on x with the same log-density
    z, lq = ode_sample(_gauss_score(sch), sch, z1, 400, t_min, log_prob=True)
    assert float((z - x).abs().max()) < 2e-3
    assert float((lq - ref).abs().max()) < 2e-3
    if isinstance(sch, VPSchedule):  # and, for VP, it is the data density at time 0
        assert float((lq - _log_normal(x, MEAN, SD**2)).abs().max()) < 0.03


@pytest.mark.parametrize("sch", [VPSchedule(), VESchedule(0.01, 5.0)], ids=repr)
def test_reverse_sde_with_the_exact_score_gives_the_gaussian_moments(sch):
    mean = torch.tensor([0.7, -0.4, 1.5], dtype=F64)
    sd = torch.tensor([0.6, 1.3, 0.2], dtype=F64)

    def score(z, t):
        a, s = sch.alpha(t)[:, None], sch.sigma(t)[:, None]
        return -(z - a * mean) / (a * a * sd**2 + s * s)

    t_min, n = 1e-3, 20_000
    one, t0 = torch.tensor(1.0, dtype=F64), torch.tensor(t_min, dtype=F64)
    g = torch.Generator().manual_seed(2)
    a1, s1 = sch.alpha(one), sch.sigma(one)
    z1 = a1 * mean + torch.sqrt(a1**2 * sd**2 + s1**2) * torch.randn(n, 3, generator=g, dtype=F64)
    z = sde_sample(score, sch, z1, 1000, t_min, g)
    a0, s0 = sch.alpha(t0), sch.sigma(t0)
    zm, zv = _z_mean_var(z, a0 * mean, a0**2 * sd**2 + s0**2)
    assert bool((zm.abs() < 4.5).all()) and bool((zv.abs() < 4.5).all()), (zm, zv)


def test_hutchinson_divergence_averages_to_the_exact_trace_over_all_probes():
    sch = VPSchedule()
    a_mat = torch.tensor([[1.0, 0.4, -0.3], [0.4, 2.0, 0.5], [-0.3, 0.5, 0.7]], dtype=F64)

    def score(z, t):  # nonlinear, with a non-symmetric Jacobian part
        return -(z @ a_mat.T) * (1 + t[:, None]) + torch.sin(z.roll(1, -1))

    z = torch.randn(5, 3, generator=torch.Generator().manual_seed(0), dtype=F64)
    t = torch.tensor(0.3, dtype=F64)

    def velocity(q):
        return sch.drift(t) * q - 0.5 * sch.diffusion2(t) * score(q[None], t.expand(1))[0]

    jac = torch.stack([torch.autograd.functional.jacobian(velocity, zi) for zi in z])
    _, exact = _velocity_div(score, sch, z, t, None)
    torch.testing.assert_close(exact, jac.diagonal(dim1=1, dim2=2).sum(-1))
    probes = torch.tensor(list(itertools.product([-1.0, 1.0], repeat=3)), dtype=F64)
    est = torch.stack([_velocity_div(score, sch, z, t, p.expand(5, 3))[1] for p in probes])
    torch.testing.assert_close(est.mean(0), exact)
    # Rademacher variance: sum_{i != j} J_ij (J_ij + J_ji)
    off = jac * (jac + jac.transpose(1, 2))
    var = off.sum((1, 2)) - 2 * (jac.diagonal(dim1=1, dim2=2) ** 2).sum(-1)
    torch.testing.assert_close(est.var(0, unbiased=False), var)


def test_noisy_target_score_mix_is_exact_for_a_gaussian_target():
    """DiKL: with ``target_precision`` the Gaussian's precision, the mixed Tweedie / target-score
    estimate after MALA is the exact noisy score whatever the posterior samples."""
    prec = 4.0
    mu = torch.tensor([1.0, -2.0, 0.5], dtype=F64)
    target = Gaussian(mu, torch.eye(3, dtype=F64) / prec)
    g = torch.Generator().manual_seed(0)
    a = torch.tensor([0.99, 0.9, 0.7, 0.5, 0.2, 0.05], dtype=F64)
    s = torch.sqrt(1 - a * a)
    var_t = (a * a / prec + s * s)[:, None]
    u_t = a[:, None] * mu + var_t.sqrt() * torch.randn(6, 3, generator=g, dtype=F64)
    est, _ = noisy_target_score(target, u_t, a, s, g, n_is=16, n_mcmc=2, target_precision=prec)
    torch.testing.assert_close(est, -(u_t - a[:, None] * mu) / var_t)


# ------------------------------------------------------------------------------ tempering
def test_swap_step_matches_the_closed_form_and_a_loop():
    g = torch.Generator().manual_seed(0)
    k, n, d = 5, 7, 3
    x = torch.randn(k, n, d, generator=g, dtype=F64)
    lp = 5 * torch.randn(k, n, generator=g, dtype=F64)
    grad = torch.randn(k, n, d, generator=g, dtype=F64)
    betas = torch.tensor([1 / t for t in geometric_ladder(k, 50.0)], dtype=F64)
    log_u = torch.log(torch.rand(k - 1, n, generator=g, dtype=F64))
    for parity in (0, 1):
        x2, lp2, g2, prob = swap_step(x, lp, grad, betas, parity, log_u)
        xs, lps, gs = x.clone(), lp.clone(), grad.clone()
        for i in range(k - 1):
            for c in range(n):
                log_a = float((betas[i] - betas[i + 1]) * (lp[i + 1, c] - lp[i, c]))
                want = min(1.0, math.exp(log_a)) if i % 2 == parity else 0.0
                assert float(prob[i, c]) == pytest.approx(want, abs=1e-14)
                if i % 2 == parity and float(log_u[i, c]) < log_a:
                    for t, src in ((xs, x), (lps, lp), (gs, grad)):
                        t[i, c], t[i + 1, c] = src[i + 1, c].clone(), src[i, c].clone()
        assert torch.equal(x2, xs) and torch.equal(lp2, lps) and torch.equal(g2, gs)


@pytest.mark.parametrize("kernel", ["mala", "hmc", "rwm"])
def test_parallel_tempering_keeps_every_tempered_gaussian_from_exact_starts(kernel):
    cov = torch.tensor([[1.5, 0.6], [0.6, 0.8]], dtype=F64)
    mean = torch.tensor([1.0, -0.5], dtype=F64)
    target = Gaussian(mean, cov)
    n = 8000
    pt = ParallelTempering(
        kernel=kernel, n_temperatures=4, max_temperature=20.0, step_size=0.3, n_chains=n,
        compile=False, progress=False,
    )  # fmt: skip
    gen = torch.Generator().manual_seed(1)
    pt._gen, pt._n_lp, pt._n_grad = gen, 0, 0
    x0 = target.sample(n, seed=gen)
    lp0, g0 = target.log_prob_and_grad(x0)
    plan = RunPlan(n, 1, 10, 9, 1, 0, pt._cost(target))
    plan.compiled = False
    pt._start(target, x0, lp0, g0 if pt.kernel.needs_grad else None, plan)
    pt._end_warmup()
    # p^(1/T) of N(m, C) is N(m, T C): exact draws at every temperature
    chol = torch.linalg.cholesky(cov)
    temps = pt.temperatures
    xs = torch.cat(
        [mean + math.sqrt(T) * torch.randn(n, 2, generator=gen, dtype=F64) @ chol.T for T in temps]
    )
    lp, g = target.log_prob_and_grad(xs)
    state = ChainState(xs, lp, g if pt.kernel.needs_grad else None)
    for t in range(1, 21):
        state = pt._transition(state, t, False)
    x = state.position.reshape(len(temps), n, 2)
    for i, T in enumerate(temps):
        zm, zv = _z_mean_var(x[i], mean, T * torch.diagonal(cov))
        assert bool((zm.abs() < 4.5).all()) and bool((zv.abs() < 4.5).all()), (T, zm, zv)
    # swap rate at stationarity: with U, W ~ Exp(1) (chi^2_2 / 2) the log-ratio is
    # a U - b W, a = 1 - 1/r, b = r - 1 (r = T_{k+1} / T_k), so E[min(1, .)] =
    # 1 - b^2 / ((1 + b)(a + b))
    r = temps[1] / temps[0]
    a, b = 1 - 1 / r, r - 1
    want = 1 - b * b / ((1 + b) * (a + b))
    for rate in pt._diagnostics()["swap_rate_per_pair"]:
        assert rate == pytest.approx(want, abs=0.02)


# ------------------------------------------------------------------------------ DiGS
DIGS_GAUSS = Gaussian(
    torch.tensor([1.0, -0.5], dtype=F64), torch.tensor([[1.5, 0.6], [0.6, 0.8]], dtype=F64)
)
DIGS_MIX = GaussianMixture(
    torch.tensor([[-3.0], [2.0]], dtype=F64),
    torch.tensor([0.7, 0.5], dtype=F64),
    torch.tensor([0.3, 0.7], dtype=F64),
)


def _digs_sweeps(target, alpha, n_mala, mwg, step, n=20_000, sweeps=15, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = target.sample(n, seed=g)
    lp, grad = target.log_prob_and_grad(x)
    a = torch.tensor(alpha, dtype=F64)
    s, eps = torch.sqrt(1 - a * a), torch.tensor(step, dtype=F64)
    p0s, p1s = [], []
    for _ in range(sweeps):
        nr = torch.randn(2 + n_mala, n, target.dim, generator=g, dtype=F64)
        lu = torch.log(torch.rand(1 + n_mala, n, generator=g, dtype=F64))
        x, lp, grad, p0, p1 = digs_sweep(
            target.log_prob_and_grad, x, lp, grad, a, s, eps, nr[0], nr[1], lu[0], nr[2:],
            lu[1:], n_mala, mwg,
        )  # fmt: skip
        p0s.append(float(p0.mean()))
        p1s.append(float(p1.mean()))
    # the carried log-density and gradient are the target's at the new states
    lp_ref, g_ref = target.log_prob_and_grad(x)
    torch.testing.assert_close(lp, lp_ref)
    torch.testing.assert_close(grad, g_ref)
    return x, float(np.mean(p0s)), float(np.mean(p1s))


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
@pytest.mark.parametrize(
    "n_mala, mwg", [(0, True), (3, False), (3, True)], ids=["init", "mala", "both"]
)
def test_digs_sweep_keeps_the_target_from_exact_starts(alpha, n_mala, mwg):
    # seed 1: the starting draws' own z-scores are small, so a drift of the moments shows
    x, p0, p1 = _digs_sweeps(DIGS_GAUSS, alpha, n_mala, mwg, 0.5 * (1 - alpha**2), seed=1)
    assert (p0 > 0.005) == mwg and (p1 > 0.3) == (n_mala > 0)  # the moves are exercised
    zm, zv = _z_mean_var(x, DIGS_GAUSS.mean, torch.diagonal(DIGS_GAUSS.covariance))
    assert bool((zm.abs() < 4.5).all()) and bool((zv.abs() < 4.5).all()), (zm, zv)
    # 1-D mixture: the weight of the right mode and the whole distribution
    x, p0, _ = _digs_sweeps(DIGS_MIX, alpha, n_mala, mwg, 0.3 * (1 - alpha**2), seed=1)
    n = x.shape[0]
    w = float((x[:, 0] > -0.5).double().mean())
    assert abs(w - 0.7) / math.sqrt(0.21 / n) < 4.5
    cdf = _mixture_cdf(np.array([0.3, 0.7]), np.array([-3.0, 2.0]), np.array([0.7, 0.5]))
    assert ss.kstest(x[:, 0].numpy(), cdf).pvalue > 1e-3


@pytest.mark.parametrize("alpha", [0.1, 0.5, 0.9])
@pytest.mark.parametrize("n_mala, mwg", [(0, True), (3, False)], ids=["init", "mala"])
def test_digs_moves_keep_the_gaussian_denoising_posterior(alpha, n_mala, mwg):
    """With ``x~`` held fixed (the noising draw chosen so that ``alpha x + sigma eps = x~``),
    each move must keep ``p(x | x~)``, for a Gaussian ``N(m, C)`` the Gaussian of precision
    ``C^-1 + alpha^2 / sigma^2 I``. Sharper than the marginal check: with the noising step
    marginalised the initialisation is a symmetric random walk on ``x``, which keeps ``p(x)``
    whatever the scale of its proposal."""
    target = DIGS_GAUSS
    cov_inv = torch.linalg.inv(target.covariance)
    n = 20_000
    g = torch.Generator().manual_seed(0)
    a = torch.tensor(alpha, dtype=F64)
    s = torch.sqrt(1 - a * a)
    x_tilde = alpha * torch.tensor([0.8, 0.3], dtype=F64)
    cond_cov = torch.linalg.inv(cov_inv + alpha**2 / s**2 * torch.eye(2, dtype=F64))
    cond_mean = cond_cov @ (cov_inv @ target.mean + alpha / s**2 * x_tilde)
    x = cond_mean + torch.randn(n, 2, generator=g, dtype=F64) @ torch.linalg.cholesky(cond_cov).T
    lp, grad = target.log_prob_and_grad(x)
    for _ in range(10):
        nr = torch.randn(1 + n_mala, n, 2, generator=g, dtype=F64)
        lu = torch.log(torch.rand(1 + n_mala, n, generator=g, dtype=F64))
        x, lp, grad, p0, p1 = digs_sweep(
            target.log_prob_and_grad, x, lp, grad, a, s, 0.3 * (1 - a * a), (x_tilde - a * x) / s,
            nr[0], lu[0], nr[1:], lu[1:], n_mala, mwg,
        )  # fmt: skip
    assert float(p0.mean() if mwg else p1.mean()) > 0.01  # the move is exercised
    zm, zv = _z_mean_var(x, cond_mean, torch.diagonal(cond_cov))
    assert bool((zm.abs() < 4.5).all()) and bool((zv.abs() < 4.5).all()), (zm, zv)


def test_digs_initialisation_jumps_between_modes_at_small_alpha():
    # a chain started in the left mode only reaches the right one through the initialisation
    g = torch.Generator().manual_seed(4)
    n = 20_000
    x = -3.0 + 0.7 * torch.randn(n, 1, generator=g, dtype=F64)
    lp, grad = DIGS_MIX.log_prob_and_grad(x)
    a = torch.tensor(0.1, dtype=F64)
    s = torch.sqrt(1 - a * a)
    for _ in range(60):
        nr = torch.randn(2, n, 1, generator=g, dtype=F64)
        lu = torch.log(torch.rand(1, n, generator=g, dtype=F64))
        x, lp, grad, _, _ = digs_sweep(
            DIGS_MIX.log_prob_and_grad, x, lp, grad, a, s, a, nr[0], nr[1], lu[0], nr[2:],
            lu[1:], 0, True,
        )  # fmt: skip
    w = float((x[:, 0] > -0.5).double().mean())
    assert abs(w - 0.7) < 0.03


def test_digs_levels_cycle_and_adapt_per_level_as_documented():
    alphas = (0.2, 0.6, 0.9)
    gauss = DIGS_GAUSS
    d = samplers.DiGS(
        alphas=alphas, n_mala=2, sweeps_per_level=2, n_chains=None, burn_in=30, thin=1,
        init=lambda n, g: gauss.sample(n, seed=g), compile=False, progress=False,
    )  # fmt: skip
    seen = []
    sweep = d._sweep

    def spy(*args):
        seen.append(float(args[4]))
        return sweep(*args)

    d._sweep = spy
    res = d.run(gauss, 20_000, seed=0)
    plan = d.plan(gauss, 20_000)
    # sweeps_per_level consecutive sweeps at one level, levels in the given order, cycled
    want = [alphas[((t - 1) // 2) % 3] for t in range(1, plan.n_transitions + 1)]
    assert seen == pytest.approx(want)
    # sigma^2 = 1 - alpha^2 (variance preserving)
    assert all(float(s) ** 2 == pytest.approx(1 - a * a) for s, a in zip(d._sigma_t, alphas))
    # each level's step size adapted towards the target acceptance on its own sweeps
    assert [int(t) for t in d._adapter.t] == [
        sum(1 for t in range(1, plan.warmup + 1) if d._level(t) == lv) for lv in range(3)
    ]
    steps = res.diagnostics["step_size_per_level"]
    assert steps[0] > steps[1] > steps[2]  # larger alpha: stiffer denoising posterior
    zm, zv = _z_mean_var(res.samples, gauss.mean, torch.diagonal(gauss.covariance))
    assert bool((zm.abs() < 4.5).all()) and bool((zv.abs() < 4.5).all()), (zm, zv)


def test_digs_fused_block_follows_the_same_levels_and_draws_as_single_sweeps():
    gauss = DIGS_GAUSS
    d = samplers.DiGS(alphas=(0.2, 0.6, 0.9), n_mala=2, sweeps_per_level=2, compile=False)
    x0 = gauss.sample(50, seed=0)
    lp, grad = gauss.log_prob_and_grad(x0)
    d._gen = torch.Generator().manual_seed(7)
    d._n_lp = d._n_grad = 0
    state = d._start(gauss, x0, lp, grad, RunPlan(50, 1, 10, 9, 1, 0, d._cost(gauss)))
    d._end_warmup()
    one = state
    for t in range(3, 10):
        one = d._transition(one, t, False)
    d._gen = torch.Generator().manual_seed(7)
    block = d._advance(state, 3, 7)
    for a, b in zip(one, block):
        torch.testing.assert_close(a, b, rtol=0, atol=0)


# ------------------------------------------------------------------------------ adaptation
def test_dual_averaging_matches_the_hoffman_gelman_recursion():
    rng = np.random.default_rng(0)
    eps0 = [0.1, 0.5, 2.0]
    delta, gamma, t0, kappa = 0.65, 0.05, 10.0, 0.75
    da = DualAveraging(torch.tensor(eps0, dtype=F64), delta)
    ref = [{"mu": math.log(10 * e), "h": 0.0, "le": math.log(e), "leb": 0.0, "m": 0} for e in eps0]
    for acc in rng.uniform(size=(60, 3)):
        da.update(torch.tensor(acc))
        for r, a in zip(ref, acc):  # Algorithm 5 of Hoffman & Gelman (2014)
            r["m"] += 1
            m = r["m"]
            r["h"] = (1 - 1 / (m + t0)) * r["h"] + (delta - a) / (m + t0)
            r["le"] = r["mu"] - math.sqrt(m) / gamma * r["h"]
            r["leb"] = m**-kappa * r["le"] + (1 - m**-kappa) * r["leb"]
        np.testing.assert_allclose(da.step_size().numpy(), [math.exp(r["le"]) for r in ref])
        np.testing.assert_allclose(da.final_step_size().numpy(), [math.exp(r["leb"]) for r in ref])
    # one group at a time (DiGS levels) is the same recursion on that group alone
    one = DualAveraging(torch.tensor(eps0, dtype=F64), delta)
    for m, acc in enumerate(rng.uniform(size=40)):
        one.update(float(acc), group=m % 3)
    assert [int(t) for t in one.t] == [14, 13, 13]


def test_dual_averaging_skips_only_groups_without_a_value_and_names_bad_groups():
    da = DualAveraging(torch.tensor([0.1, 0.2], dtype=F64), 0.5)
    ref = DualAveraging(torch.tensor([0.1], dtype=F64), 0.5)
    da.update(torch.tensor([0.3, math.nan], dtype=F64))
    ref.update(0.3)
    # the group with a value is updated (one NaN group used to skip every group)
    assert [int(t) for t in da.t] == [1, 0]
    assert float(da.step_size()[0]) == pytest.approx(float(ref.step_size()[0]), rel=1e-15)
    assert float(da.step_size()[1]) == pytest.approx(0.2)
    for bad in (2, -1, 1.0, True):
        with pytest.raises(ValueError, match="group"):
            da.update(0.5, group=bad)
    with pytest.raises(ValueError, match="accept_rate"):
        da.update(torch.tensor([0.5, 0.5, 0.5]))
    assert [int(t) for t in da.t] == [1, 0]
