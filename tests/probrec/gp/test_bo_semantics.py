"""DeepKernelGP against BoTorch's own SingleTaskGP with the same fixed hyperparameters.

The reference is a ``SingleTaskGP`` on the same inputs, with a gpytorch kernel, mean and
Gaussian likelihood holding the fitted hyperparameters and BoTorch's ``Standardize`` holding the
same shift and scale: posteriors (every batch shape, with and without observation noise,
posterior transforms), conditioning, fantasies, acquisition values and their gradients must
agree to rounding. Closed forms check what both should compute.
"""

import warnings

import gpytorch
import numpy as np
import pytest
import torch
from botorch.acquisition import (
    ExpectedImprovement,
    LogExpectedImprovement,
    PosteriorMean,
    UpperConfidenceBound,
    qExpectedImprovement,
    qKnowledgeGradient,
    qLogNoisyExpectedImprovement,
    qNoisyExpectedImprovement,
)
from botorch.acquisition.objective import ScalarizedPosteriorTransform
from botorch.models import SingleTaskGP
from botorch.models.transforms.outcome import Standardize
from botorch.sampling import SobolQMCNormalSampler

from probrec.gp import GPConfig
from probrec.gp.bo_models import DeepKernelGP
from probrec.gp.pool_bo import pool_bo

F64 = torch.float64


@pytest.fixture(autouse=True)
def _quiet():
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # BoTorch's advice to prefer LogEI over EI
        yield


def _data(n=25, d=3, seed=0, dtype=F64):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, d, generator=g, dtype=F64)
    y = (3 * x[:, :1]).sin() + x[:, 1:2] ** 2 + 0.05 * torch.randn(n, 1, generator=g, dtype=F64)
    return x.to(dtype), (10 * y + 3).to(dtype)


def _reference(model: DeepKernelGP, x: torch.Tensor, y: torch.Tensor) -> SingleTaskGP:
    """SingleTaskGP with ``model``'s kernel, lengthscale, outputscale, mean, noise and outcome
    standardisation (BoTorch's ``Standardize`` with the statistics fixed)."""
    dtype = x.dtype
    if isinstance(model.covar_module.base_kernel, gpytorch.kernels.MaternKernel):
        base = gpytorch.kernels.MaternKernel(nu=2.5)
    else:
        base = gpytorch.kernels.RBFKernel()
    covar = gpytorch.kernels.ScaleKernel(base).to(dtype)
    covar.outputscale = model.covar_module.outputscale.detach().clone()
    covar.base_kernel.lengthscale = model.covar_module.base_kernel.lengthscale.detach().clone()
    lik = gpytorch.likelihoods.GaussianLikelihood(
        noise_constraint=gpytorch.constraints.GreaterThan(1e-12)
    ).to(dtype)
    lik.noise = model.likelihood.noise.detach().clone()
    mean = gpytorch.means.ConstantMean().to(dtype)
    mean.constant.data.fill_(float(model.mean_module.constant))
    shift = model.outcome_transform.means.detach().clone()
    scale = model.outcome_transform.stdvs.detach().clone()
    ref = SingleTaskGP(
        x, (y - shift) / scale, likelihood=lik, covar_module=covar, mean_module=mean,
        outcome_transform=None,
    )  # fmt: skip
    standardize = Standardize(m=1)
    standardize.means, standardize.stdvs, standardize._stdvs_sq = shift, scale, scale**2
    standardize._is_trained = torch.tensor(True)
    ref.outcome_transform = standardize.eval()
    return ref.eval()


def _pair(kernel="matern52", dtype=F64, seed=0):
    x, y = _data(seed=seed, dtype=dtype)
    config = GPConfig(kernel=kernel, mean="constant", kind="regression")
    model = DeepKernelGP.fit(x, y, config=config)
    return model, _reference(model, x, y), x, y


def _close(ours, ref, rtol=1e-9, atol=1e-10):
    assert ours.shape == ref.shape
    torch.testing.assert_close(ours, ref, rtol=rtol, atol=atol)


def _posteriors_agree(ours, ref):
    _close(ours.mean, ref.mean)
    _close(ours.variance, ref.variance)
    _close(ours.distribution.covariance_matrix, ref.distribution.covariance_matrix)


SHAPES = [(1, 3), (4, 3), (5, 1, 3), (5, 4, 3), (2, 3, 1, 3), (2, 3, 4, 3)]


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_posterior_matches_single_task_gp_for_every_batch_shape(kernel):
    model, ref, _, _ = _pair(kernel)
    g = torch.Generator().manual_seed(5)
    weights = ScalarizedPosteriorTransform(weights=torch.tensor([2.0], dtype=F64), offset=1.0)
    for shape in SHAPES:
        X = torch.rand(*shape, generator=g, dtype=F64)
        for noise in (False, True):
            with torch.no_grad():
                ours = model.posterior(X, observation_noise=noise)
                want = ref.posterior(X, observation_noise=noise)
            assert ours.mean.shape == shape[:-1] + (1,)
            assert ours.batch_shape == want.batch_shape and ours.event_shape == want.event_shape
            _posteriors_agree(ours, want)
        with torch.no_grad():
            ours = model.posterior(X, posterior_transform=weights)
            want = ref.posterior(X, posterior_transform=weights)
        _close(ours.mean, want.mean)
        _close(ours.variance, want.variance)
        with torch.no_grad():  # output index 0 of the one output: the same posterior
            _close(model.posterior(X, output_indices=[0]).mean, model.posterior(X).mean)


@pytest.mark.parametrize("noise_shape", ["per_point", "per_point_flat", "shared"])
def test_tensor_observation_noise_is_independent_per_point(noise_shape):
    # fantasize passes a `... x 1 x 1` noise: GPyTorchModel's posterior added it to every
    # entry of the q x q covariance (fully correlated noise); SingleTaskGP adds it per point
    model, ref, _, _ = _pair()
    g = torch.Generator().manual_seed(6)
    scale2 = float(model.outcome_transform.stdvs) ** 2
    for shape in SHAPES:
        X = torch.rand(*shape, generator=g, dtype=F64)
        per_point = 0.01 + 0.1 * torch.rand(*shape[:-1], 1, generator=g, dtype=F64)
        noise = {
            "per_point": per_point,
            "per_point_flat": per_point[..., 0],
            "shared": torch.full((*shape[:-2], 1, 1), 0.02, dtype=F64),
        }[noise_shape]
        if noise_shape == "shared":
            per_point = noise.expand(*shape[:-1], 1)
        with torch.no_grad():
            ours = model.posterior(X, observation_noise=noise)
            latent = model.posterior(X).distribution.covariance_matrix
            if noise_shape != "per_point_flat" or shape[-2] > 1:  # SingleTaskGP: an error
                _posteriors_agree(ours, ref.posterior(X, observation_noise=noise))
        closed = latent + torch.diag_embed(per_point[..., 0]) * scale2  # noise in standard units
        _close(ours.distribution.covariance_matrix, closed)
    with pytest.raises(ValueError, match="observation_noise of shape"):
        model.posterior(torch.rand(4, 3, dtype=F64), observation_noise=torch.ones(3, 1, dtype=F64))
    with pytest.raises(ValueError, match="observation_noise must hold finite"):
        model.posterior(torch.rand(4, 3, dtype=F64), observation_noise=-torch.ones(4, 1, dtype=F64))


def test_output_indices_other_than_the_one_output_are_refused():
    model, _, _, _ = _pair()
    X = torch.rand(4, 3, dtype=F64)
    for bad in ([1], [0, 1]):  # BoTorch ignored them and returned output 0
        with pytest.raises(ValueError, match="output_indices"):
            model.posterior(X, output_indices=bad)
        with pytest.raises(ValueError, match="output_indices"):
            model.posterior(X[:, None], output_indices=bad)
    assert model.num_outputs == 1 and model.batch_shape == torch.Size()


def _sampler():
    return SobolQMCNormalSampler(torch.Size([128]), seed=0)


def _fantasies():
    return SobolQMCNormalSampler(torch.Size([4]), seed=0)


ACQUISITIONS = {
    "ei": (lambda m, x, best: ExpectedImprovement(m, best), 1),
    "logei": (lambda m, x, best: LogExpectedImprovement(m, best), 1),
    "ucb": (lambda m, x, best: UpperConfidenceBound(m, beta=2.0), 1),
    "posterior_mean": (lambda m, x, best: PosteriorMean(m), 1),
    "qei": (lambda m, x, best: qExpectedImprovement(m, best, sampler=_sampler()), 3),
    "qei_q1": (lambda m, x, best: qExpectedImprovement(m, best - 5, sampler=_sampler()), 1),
    "qnei": (lambda m, x, best: qNoisyExpectedImprovement(m, x, sampler=_sampler()), 3),
    "qlognei": (lambda m, x, best: qLogNoisyExpectedImprovement(m, x, sampler=_sampler()), 2),
    "qlognei_q1": (lambda m, x, best: qLogNoisyExpectedImprovement(m, x, sampler=_sampler()), 1),
    # one point + 4 fantasies' maximisers: fantasize, and posteriors of the fantasy models
    "qkg": (lambda m, x, best: qKnowledgeGradient(m, num_fantasies=4, sampler=_fantasies()), 5),
}


@pytest.mark.parametrize("name", list(ACQUISITIONS))
def test_acquisition_values_and_gradients_match_single_task_gp(name):
    model, ref, x, y = _pair()
    make, q = ACQUISITIONS[name]
    X = torch.rand(6, q, 3, generator=torch.Generator().manual_seed(7), dtype=F64)
    X = torch.cat([X, x[:2, None].expand(2, q, 3)])  # candidates at observed points too
    ours_x, ref_x = X.clone().requires_grad_(True), X.clone().requires_grad_(True)
    ours, want = make(model, x, y.max())(ours_x), make(ref, x, y.max())(ref_x)
    ours.sum().backward()
    want.sum().backward()
    _close(ours, want, rtol=1e-8, atol=1e-10)
    assert float(ref_x.grad.abs().max()) > 0
    _close(ours_x.grad, ref_x.grad, rtol=1e-7, atol=1e-9)


def test_q1_gradients_match_finite_differences():
    model, _, _, y = _pair()
    X = torch.rand(3, 1, 3, generator=torch.Generator().manual_seed(3), dtype=F64)
    for acq in (UpperConfidenceBound(model, beta=2.0), LogExpectedImprovement(model, y.max())):
        xg = X.clone().requires_grad_(True)
        acq(xg).sum().backward()
        fd = torch.zeros_like(X)
        for j in range(3):
            e = torch.zeros_like(X)
            e[..., j] = 1e-6
            with torch.no_grad():
                fd[..., j] = ((acq(X + e) - acq(X - e)) / 2e-6)[:, None]
        torch.testing.assert_close(xg.grad, fd, rtol=1e-5, atol=1e-6)


def _conditioned(model, ref, kwargs):
    g = torch.Generator().manual_seed(11)
    X_new = torch.rand(3, 3, generator=g, dtype=F64)
    Y_new = 10 * torch.rand(3, 1, generator=g, dtype=F64)
    ref.posterior(X_new)  # gpytorch's fantasy updates need its caches (ours builds them)
    return (
        model.condition_on_observations(X_new, Y_new, **kwargs),
        ref.condition_on_observations(X_new, Y_new, **kwargs),
    )


@pytest.mark.parametrize("noise", [None, 0.05])
def test_condition_on_observations_matches_single_task_gp(noise):
    # with per-observation noise, q = 1 went through the direct path with the likelihood's
    # homoscedastic noise: other variances than gpytorch's path on the same conditioned model
    model, ref, _, _ = _pair()
    kwargs = {} if noise is None else {"noise": torch.full((3, 1), noise, dtype=F64)}
    cond, cond_ref = _conditioned(model, ref, kwargs)
    _close(cond.train_targets, cond_ref.train_targets)
    Xq = torch.rand(5, 3, generator=torch.Generator().manual_seed(12), dtype=F64)
    for X in (Xq, Xq[:, None], Xq[None, :2]):
        for obs in (False, True):
            with torch.no_grad():
                _posteriors_agree(
                    cond.posterior(X, observation_noise=obs),
                    cond_ref.posterior(X, observation_noise=obs),
                )
    with torch.no_grad():  # q = 1 and the joint path agree on the conditioned model
        _close(cond.posterior(Xq[:, None]).variance.reshape(-1), cond.posterior(Xq).variance[:, 0])


@pytest.mark.parametrize("shape", [(2, 3), (1, 3), (4, 2, 3), (4, 1, 3)])
@pytest.mark.parametrize("with_noise", [False, True])
def test_fantasize_matches_single_task_gp(shape, with_noise):
    model, ref, _, _ = _pair()
    g = torch.Generator().manual_seed(13)
    X = torch.rand(*shape, generator=g, dtype=F64)
    kwargs = {}
    if with_noise:  # BoTorch's documented shape: model batch x 1 x m
        kwargs["observation_noise"] = torch.full((*shape[:-2], 1, 1), 0.02, dtype=F64)
    fant = model.fantasize(X, sampler=SobolQMCNormalSampler(torch.Size([8]), seed=0), **kwargs)
    fant_ref = ref.fantasize(X, sampler=SobolQMCNormalSampler(torch.Size([8]), seed=0), **kwargs)
    assert fant.batch_shape == fant_ref.batch_shape == torch.Size([8, *shape[:-2]])
    _close(fant.train_targets, fant_ref.train_targets)
    Xq = torch.rand(5, 3, generator=g, dtype=F64)
    for Xt in (Xq, Xq.expand(8, *shape[:-2], 5, 3)):
        with torch.no_grad():
            _posteriors_agree(fant.posterior(Xt), fant_ref.posterior(Xt))


def test_float32_model_matches_single_task_gp_in_float32():
    model, ref, _, _ = _pair(dtype=torch.float32)
    X = torch.rand(6, 2, 3)
    with torch.no_grad():
        for Xt in (X, X[:, :1]):
            ours, want = (
                model.posterior(Xt, observation_noise=True),
                ref.posterior(Xt, observation_noise=True),
            )
            assert ours.mean.dtype == torch.float32
            torch.testing.assert_close(ours.mean, want.mean, rtol=1e-5, atol=1e-5)
            torch.testing.assert_close(ours.variance, want.variance, rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="X has dtype torch.float64 but the model's is"):
        model.posterior(X.double())


def _hyperparameters_factory(reference: bool):
    """Surrogate factory for pool_bo: the DeepKernelGP, or SingleTaskGP with its hyperparameters."""

    def make(x, y, seed):
        model = DeepKernelGP.fit(x, y, config=GPConfig(mean="constant", kind="regression"))
        return _reference(model, x, y) if reference else model

    return make


def test_pool_bo_picks_as_with_single_task_gp_and_keeps_its_books():
    g = torch.Generator().manual_seed(2)
    x = torch.rand(120, 3, generator=g, dtype=F64)
    y = -((x - 0.4) ** 2).sum(-1) + 0.3 * (5 * x[:, 0]).sin()
    for acquisition in ("logei", "ucb"):
        ours = pool_bo(x, y, _hyperparameters_factory(False), n_init=5, n_iter=6, seed=4,
                       acquisition=acquisition)  # fmt: skip
        want = pool_bo(x, y, _hyperparameters_factory(True), n_init=5, n_iter=6, seed=4,
                       acquisition=acquisition)  # fmt: skip
        np.testing.assert_array_equal(ours.order, want.order)
        again = pool_bo(x, y, _hyperparameters_factory(False), n_init=5, n_iter=6, seed=4,
                        acquisition=acquisition)  # fmt: skip
        np.testing.assert_array_equal(ours.order, again.order)  # seeded: reproducible
        assert len(set(ours.order.tolist())) == len(ours.order) == 11  # no point twice
        np.testing.assert_array_equal(ours.values, y[ours.order].numpy())
        best = [float(y[ours.order[: 5 + i]].max()) for i in range(7)]
        np.testing.assert_array_equal(ours.best_so_far, best)


def test_pool_bo_names_a_seed_or_iteration_count_that_is_not_an_int():
    x = torch.rand(20, 2, generator=torch.Generator().manual_seed(0), dtype=F64)
    y = -(x**2).sum(-1)
    # seed=None passed the initial design and failed at the first surrogate (None * 1000)
    for seed in (None, np.random.default_rng(0), 1.5):
        with pytest.raises(TypeError, match="seed must be an int"):
            pool_bo(x, y, _hyperparameters_factory(False), n_init=3, n_iter=2, seed=seed)
    with pytest.raises(ValueError, match="seed must be in"):
        pool_bo(x, y, None, n_init=3, n_iter=2, seed=-1)
    for n_iter in (2.5, True):  # range(2.5) failed unnamed; True ran one iteration
        with pytest.raises(TypeError, match="n_iter must be an int"):
            pool_bo(x, y, None, n_init=3, n_iter=n_iter)
    with pytest.raises(ValueError, match="n_iter must be >= 0"):
        pool_bo(x, y, None, n_init=3, n_iter=-1)
