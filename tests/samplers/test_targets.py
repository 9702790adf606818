"""Targets against independent implementations: torch.distributions, autograd, quadrature,
explicit loops over particle pairs."""

from __future__ import annotations

import math
import pickle

import numpy as np
import pytest
import torch
from scipy import integrate, stats
from torch.distributions import (
    Categorical,
    Independent,
    MixtureSameFamily,
    MultivariateNormal,
    Normal,
)

from samplers.targets import (
    BNNPosterior,
    DoubleWell4,
    Gaussian,
    GaussianMixture,
    LennardJones,
    ManyWell,
    MoG40,
    Target,
    from_log_prob,
    interatomic_distances,
    load_reference_samples,
)


def autograd_grad(target: Target, x: torch.Tensor) -> torch.Tensor:
    xr = x.clone().requires_grad_(True)
    (g,) = torch.autograd.grad(target.log_prob(xr).sum(), xr)
    return g


# ------------------------------------------------------------------------------ mixtures
def test_mog40_means_are_the_published_ones_and_leave_global_rng_alone():
    state = torch.get_rng_state()
    target = MoG40()
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(0)
    expected = (torch.rand(40, 2) - 0.5) * 2 * 40
    assert torch.equal(target.means, expected)
    assert target.scales.shape == (40, 2)
    assert torch.allclose(target.scales, torch.full((40, 2), math.log1p(math.e)))
    torch.set_rng_state(state)


def test_mog40_log_prob_and_grad_match_torch_distributions():
    target = MoG40().double()
    mix = MixtureSameFamily(
        Categorical(torch.ones(40, dtype=torch.float64)),
        Independent(Normal(target.means, target.scales), 1),
    )
    x = torch.randn(64, 2, dtype=torch.float64, generator=torch.Generator().manual_seed(1)) * 25
    lp, g = target.log_prob_and_grad(x)
    assert torch.allclose(lp, mix.log_prob(x), atol=1e-9)
    assert torch.allclose(target.log_prob(x), mix.log_prob(x), atol=1e-9)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(mix.log_prob(xr).sum(), xr)
    assert torch.allclose(g, g_ref, atol=1e-9)


def test_general_mixture_with_weights_and_diagonal_scales():
    g = torch.Generator().manual_seed(0)
    means = torch.randn(5, 3, generator=g, dtype=torch.float64) * 3
    scales = torch.rand(5, 3, generator=g, dtype=torch.float64) + 0.3
    weights = torch.rand(5, generator=g, dtype=torch.float64) + 0.1
    target = GaussianMixture(means, scales, weights)
    ref = MixtureSameFamily(Categorical(weights), Independent(Normal(means, scales), 1))
    x = torch.randn(40, 3, generator=g, dtype=torch.float64) * 4
    lp, grad = target.log_prob_and_grad(x)
    assert torch.allclose(lp, ref.log_prob(x), atol=1e-10)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(ref.log_prob(xr).sum(), xr)
    assert torch.allclose(grad, g_ref, atol=1e-10)
    s = target.sample(40_000, seed=3)
    assert torch.allclose(s.mean(0), target.mean(), atol=0.08)
    assert torch.allclose(torch.cov(s.T), target.covariance(), rtol=0.05, atol=0.1)
    assert target.expected_squared_norm() == pytest.approx(
        float(torch.trace(target.covariance()) + target.mean().pow(2).sum())
    )


def test_mixture_negligible_components_change_nothing_and_autograd_stays_right():
    # the log-sum-exp raises terms below exp(-80) relative to the largest to exp(-80) (a CPU
    # speed-up): a zero-weight component, even at the query point, must still contribute
    # nothing visible, the rest must match torch.distributions, and autograd through log_prob
    # (the out-of-place branch) the closed form
    means = torch.tensor([[0.0, 0.0], [30.0, 0.0], [0.0, 30.0]], dtype=torch.float64)
    weights = torch.tensor([0.5, 0.5, 0.0], dtype=torch.float64)
    target = GaussianMixture(means, 1.0, weights)
    kept = MixtureSameFamily(
        Categorical(weights[:2]), Independent(Normal(means[:2], torch.ones(2, 2).double()), 1)
    )
    x = torch.tensor([[0.0, 30.0], [15.0, 0.0], [-3.0, 1.0], [200.0, -90.0]], dtype=torch.float64)
    lp, grad = target.log_prob_and_grad(x)
    assert torch.allclose(lp, kept.log_prob(x), rtol=1e-13, atol=0)
    assert torch.allclose(target.log_prob(x), lp, rtol=1e-13, atol=0)
    assert torch.allclose(autograd_grad(target, x), grad, rtol=1e-12, atol=1e-12)
    xr = x.clone().requires_grad_(True)
    (g_ref,) = torch.autograd.grad(kept.log_prob(xr).sum(), xr)
    assert torch.allclose(grad, g_ref, rtol=1e-12, atol=1e-12)
    lp32, g32 = target.float().log_prob_and_grad(x.float())
    assert torch.allclose(lp32.double(), lp, rtol=1e-6)
    assert torch.allclose(g32.double(), grad, rtol=1e-5, atol=1e-3)  # (15, 0): 15 - 15 in fp32


def test_mixture_rejects_bad_parameters():
    with pytest.raises(ValueError, match="scales"):
        GaussianMixture(torch.zeros(3, 2), torch.ones(4))
    with pytest.raises(ValueError, match="positive"):
        GaussianMixture(torch.zeros(3, 2), -1.0)
    with pytest.raises(ValueError, match="weights"):
        GaussianMixture(torch.zeros(3, 2), 1.0, torch.tensor([1.0, -1.0, 1.0]))


def test_gaussian_target_matches_multivariate_normal():
    cov = torch.tensor([[2.0, 0.6, 0.0], [0.6, 1.0, -0.3], [0.0, -0.3, 0.5]], dtype=torch.float64)
    mean = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    target = Gaussian(mean, cov)
    ref = MultivariateNormal(mean, cov)
    x = torch.randn(30, 3, dtype=torch.float64)
    lp, g = target.log_prob_and_grad(x)
    assert torch.allclose(lp, ref.log_prob(x), atol=1e-10)
    assert torch.allclose(g, autograd_grad(target, x), atol=1e-10)
    s = target.sample(50_000, seed=0)
    assert torch.allclose(torch.cov(s.T), cov, atol=0.04)
    with pytest.raises(ValueError, match="positive definite"):
        Gaussian(torch.zeros(2), torch.tensor([[1.0, 2.0], [2.0, 1.0]]))


# ------------------------------------------------------------------------------ Many-Well
def test_manywell_normaliser_matches_quadrature_and_the_published_constant():
    z, _ = integrate.quad(lambda d: math.exp(0.5 * d + 6 * d * d - d**4), -8, 8, epsabs=1e-12)
    assert z == pytest.approx(11784.50927, rel=1e-8)
    target = ManyWell(32)
    assert target.log_normalizer == pytest.approx(
        16 * (math.log(z) + 0.5 * math.log(2 * math.pi)), rel=1e-9
    )


def test_manywell_log_prob_grad_and_layout():
    target = ManyWell(6).double()
    x = torch.randn(20, 6, dtype=torch.float64) * 2
    lp, g = target.log_prob_and_grad(x)
    d, v = x[:, 0::2], x[:, 1::2]
    ref = (0.5 * d + 6 * d**2 - d**4 - 0.5 * v**2).sum(-1)
    assert torch.allclose(lp, ref)
    assert torch.allclose(g, autograd_grad(target, x))
    with pytest.raises(ValueError, match="even"):
        ManyWell(5)


def test_manywell_exact_sampler_matches_the_one_dimensional_cdf():
    target = ManyWell(4)
    s = target.sample(20_000, seed=1).double()
    grid = np.linspace(-5, 5, 200_001)
    dens = np.exp(0.5 * grid + 6 * grid**2 - grid**4 - 10.0)
    cdf_grid = integrate.cumulative_trapezoid(dens, grid, initial=0.0)
    cdf_grid /= cdf_grid[-1]
    d = s[:, 0::2].reshape(-1).numpy()
    ks = stats.kstest(d, lambda t: np.interp(t, grid, cdf_grid))
    assert ks.pvalue > 1e-3
    v = s[:, 1::2].reshape(-1).numpy()
    assert stats.kstest(v, "norm").pvalue > 1e-3
    assert torch.equal(target.sample(10, seed=5), target.sample(10, seed=5))


# ------------------------------------------------------------------------------ particles
def _loop_energy_dw4(x: np.ndarray) -> float:
    p = x.reshape(4, 2)
    e = 0.0
    for i in range(4):
        for j in range(i + 1, 4):
            r = np.linalg.norm(p[i] - p[j])
            e += 0.9 * (r - 4) ** 4 - 4 * (r - 4) ** 2
    return e


def _loop_energy_lj(x: np.ndarray, n: int) -> float:
    p = x.reshape(n, 3)
    e = 0.0
    for i in range(n):
        for j in range(n):
            if i != j:
                r = np.linalg.norm(p[i] - p[j])
                e += r**-12 - 2 * r**-6
    return e + 0.5 * ((p - p.mean(0)) ** 2).sum()


def test_dw4_energy_gradient_and_com_term():
    target = DoubleWell4().double()
    g = torch.Generator().manual_seed(0)
    x = target.init_positions(6, g).double()
    e = target.energy(x)
    ref = torch.tensor([_loop_energy_dw4(r) for r in x.numpy()], dtype=torch.float64)
    assert torch.allclose(e, ref)
    lp, grad = target.log_prob_and_grad(x)
    com = x.reshape(6, 4, 2).mean(1)
    assert torch.allclose(lp, -ref - 0.5 * 4 * (com**2).sum(-1))
    assert torch.allclose(grad, autograd_grad(target, x))
    shifted = x + torch.tensor([3.0, -1.0], dtype=torch.float64).repeat(4)
    assert torch.allclose(target.energy(shifted), e)


def test_lennard_jones_energy_counts_ordered_pairs_and_gradient_is_exact():
    target = LennardJones(13).double()
    x = target.init_positions(3, torch.Generator().manual_seed(2)).double()
    ref = torch.tensor([_loop_energy_lj(r, 13) for r in x.numpy()], dtype=torch.float64)
    assert torch.allclose(target.energy(x), ref)
    lp, grad = target.log_prob_and_grad(x)
    assert torch.allclose(grad, autograd_grad(target, x), rtol=1e-8, atol=1e-8)
    r = interatomic_distances(x, 13, 3)
    assert r.shape == (3, 78)
    assert bool((r > 0.8).all())  # the lattice start has no overlapping particles
    assert LennardJones(55).dim == 165


def test_reference_samples_load_and_have_sensible_energies(shared_data):
    root = shared_data / "samplers"
    dw4 = DoubleWell4(reference_path=root / "dw4_reference_10000.npy")
    ref = dw4.reference_samples()
    assert ref.shape == (10000, 8)
    assert bool(torch.isfinite(dw4.energy(ref)).all())
    lj = LennardJones(13)
    ref = lj.reference_samples(root / "lj13_reference_10000.npy")
    e = lj.energy(ref)
    assert ref.shape == (10000, 39) and bool(torch.isfinite(e).all())
    assert float(e.median()) < 0  # bound clusters
    mw = load_reference_samples(root / "mw32_reference_1888.npy", 32)
    assert mw.shape == (1888, 32)
    with pytest.raises(ValueError, match="dimension"):
        load_reference_samples(root / "mw32_reference_1888.npy", 8)
    with pytest.raises(ValueError, match="reference"):
        LennardJones(13).reference_samples()


# ------------------------------------------------------------------------------ BNN
def test_bnn_closed_form_gradient_matches_autograd_and_data_is_seeded():
    target = BNNPosterior(n_train=50, n_test=40, seed=3).double()
    assert target.dim == 550
    theta = target.init_positions(4, torch.Generator().manual_seed(0)).double()
    lp, g = target.log_prob_and_grad(theta)
    assert torch.allclose(lp, target.log_prob(theta))
    assert torch.allclose(g, autograd_grad(target, theta), rtol=1e-9, atol=1e-9)
    again = BNNPosterior(n_train=50, n_test=40, seed=3)
    assert torch.equal(again.y_train, BNNPosterior(n_train=50, n_test=40, seed=3).y_train)
    assert not torch.equal(again.y_train, BNNPosterior(n_train=50, n_test=40, seed=4).y_train)


def test_bnn_test_nll_definitions():
    target = BNNPosterior(n_train=30, n_test=200, seed=0)
    teacher = target.teacher[None]
    # at the teacher, residuals are the pure noise: NLL ~ 0.5 log(2 pi s^2) + 0.5
    nll = target.test_nll(teacher)
    assert nll == pytest.approx(0.5 * math.log(2 * math.pi * 0.01) + 0.5, abs=0.15)
    two = torch.cat([teacher, teacher])
    assert target.test_nll(two, "predictive") == pytest.approx(target.test_nll(two), abs=1e-9)
    noisy = teacher + 0.3 * torch.randn(8, 550, generator=torch.Generator().manual_seed(0))
    assert target.test_nll(noisy, "predictive") <= target.test_nll(noisy) + 1e-9  # Jensen


# ------------------------------------------------------------------------------ callables
def test_from_log_prob_wraps_functions_and_checks_shapes():
    t = from_log_prob(lambda x: -0.5 * (x**2).sum(-1), dim=3)
    x = torch.randn(5, 3)
    lp, g = t.log_prob_and_grad(x)
    assert torch.allclose(g, -x)
    calls = []

    def grad_fn(z):
        calls.append(1)
        return -z

    t2 = from_log_prob(lambda x: -0.5 * (x**2).sum(-1), dim=3, grad_fn=grad_fn)
    assert torch.allclose(t2.log_prob_and_grad(x)[1], -x) and calls
    bad = from_log_prob(lambda x: x.sum(-1, keepdim=True), dim=3)
    with pytest.raises(ValueError, match="shape"):
        bad.log_prob(x)
    flat = from_log_prob(lambda x: torch.zeros(x.shape[0]), dim=3)
    with pytest.raises(TypeError, match="differentiabl"):
        flat.log_prob_and_grad(x)
    with pytest.raises(NotImplementedError):
        t.sample(3)
    with pytest.raises(TypeError, match="callable"):
        from_log_prob(3, dim=2)


def test_tempered_mala_transition_on_mog40_compiled_equals_eager():
    """The compiled MALA transition (as parallel tempering and DiGS call it: tempered, many
    chains, the target's gradient inside the graph) takes the same step as the eager one.
    Regression test: a written-out MoG log-density was miscompiled inside this graph."""
    from samplers.compile import compile_available
    from samplers.kernels import mala_transition

    if not compile_available():
        pytest.skip("torch.compile needs a C++ compiler here")
    target = MoG40()
    g = torch.Generator().manual_seed(0)
    n = 2000
    x = torch.randn(n, 2, generator=g) * 20
    lp, grad = target.log_prob_and_grad(x)
    beta = 0.1 + 0.9 * torch.rand(n, generator=g)
    h = torch.full((n,), 0.5)
    noise, log_u = torch.randn(n, 2, generator=g), torch.rand(n, generator=g).log()
    args = (target.log_prob_and_grad, (), x, lp, grad, beta, h, noise, log_u, 0)
    eager = mala_transition(*args)
    compiled = torch.compile(mala_transition)(*args)
    assert bool(torch.isfinite(compiled[1]).all())
    torch.testing.assert_close(compiled[1], eager[1], rtol=1e-4, atol=1e-3)  # log-densities
    torch.testing.assert_close(compiled[3], eager[3], rtol=1e-3, atol=1e-3)  # accept probs
    assert float((compiled[0] - eager[0]).abs().max()) < 1e-3


def test_a_mixture_takes_a_numpy_scalar_scale():
    means = torch.zeros(3, 2)
    a = GaussianMixture(means, np.float32(0.5))
    b = GaussianMixture(means, 0.5)
    x = torch.randn(4, 2, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(a.log_prob(x), b.log_prob(x))


@pytest.mark.parametrize(
    "make",
    [
        lambda: ManyWell(4),
        lambda: Gaussian(torch.zeros(3)),
        lambda: MoG40(),
        lambda: DoubleWell4(),
        lambda: LennardJones(13),
        lambda: from_log_prob(lambda x: -(x * x).sum(-1), 3),
    ],
)
def test_a_batch_of_the_wrong_width_is_refused_not_broadcast(make):
    """ManyWell(4) gave finite densities for [n, 2] batches; every target checks the width."""
    target = make()
    good = target.init_positions(5, torch.Generator().manual_seed(0)).to(torch.float64)
    lp, grad = target.log_prob_and_grad(good)
    assert lp.shape == (5,) and grad.shape == good.shape
    for bad in (good[:, :-1], torch.cat([good, good[:, :1]], 1)):
        for fn in (target.log_prob, target.log_prob_and_grad):
            with pytest.raises(ValueError, match=rf"x must have shape \(n, {target.dim}\)"):
                fn(bad)


def test_a_loaded_state_dict_gives_the_saved_targets_densities():
    """Derived constants are recomputed on load (they were kept from the receiving target)."""
    x = torch.randn(6, 2, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    pairs = [
        (
            GaussianMixture(torch.tensor([[-2.0, 0.0], [2.0, 1.0]]), torch.tensor([0.5, 2.0])),
            GaussianMixture(torch.zeros(2, 2), 1.0),
        ),
        (
            Gaussian(torch.ones(2), torch.tensor([[2.0, 0.3], [0.3, 1.0]])),
            Gaussian(torch.zeros(2)),
        ),
    ]
    for saved, other in pairs:
        again = pickle.loads(pickle.dumps(saved))  # the load hook keeps targets picklable
        torch.testing.assert_close(again.log_prob(x), saved.log_prob(x), rtol=0, atol=0)
        other.load_state_dict(saved.state_dict())
        torch.testing.assert_close(other.log_prob(x), saved.log_prob(x), rtol=0, atol=0)
        torch.testing.assert_close(
            other.log_prob_and_grad(x)[1], saved.log_prob_and_grad(x)[1], rtol=0, atol=0
        )
