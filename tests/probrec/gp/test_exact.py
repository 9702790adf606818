"""The GP head against independent exact GPs (scikit-learn, gpytorch, torch.distributions)."""

import math

import gpytorch
import numpy as np
import pytest
import torch
from sklearn.gaussian_process import GaussianProcessRegressor
from sklearn.gaussian_process.kernels import RBF, ConstantKernel, Matern

from probrec.gp import (
    GPConfig,
    GPHead,
    NotPositiveDefiniteError,
    gaussian_nll,
    geometry,
    inner_objective,
    inner_objective_derivatives,
    inner_objective_grad,
    neg_log_marginal_likelihood,
    posterior,
    predictive_nll,
    prior_centres,
    robust_cholesky,
)
from probrec.gp.exact import initial_theta
from probrec.gp.kernels import matern52, matern52_from_sqdist, rbf, squared_distance, tanimoto
from probrec.gp.newton import batched_newton, value_grad_hessian


@pytest.fixture(autouse=True)
def _float64():
    """These checks compare against closed forms and finite differences: work in float64."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)


def _data(seed=0, n=25, d=3):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    y = torch.sin(x[:, 0]) + 0.3 * x[:, 1] + 0.05 * torch.randn(n, generator=g, dtype=torch.float64)
    return x, y


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_posterior_matches_sklearn(kernel):
    x, y = _data()
    xq = torch.randn(7, 3, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    head = GPHead(GPConfig(kernel=kernel, kind="regression"))
    gp = head.fit(x, y)
    assert (
        gp.fit.all_converged if hasattr(gp.fit, "all_converged") else bool(gp.fit.converged.all())
    )
    h = {k: float(v) for k, v in gp.hyperparameters().items()}
    base = (
        Matern(h["lengthscale"], "fixed", nu=2.5)
        if kernel == "matern52"
        else RBF(h["lengthscale"], "fixed")
    )
    sk = GaussianProcessRegressor(
        ConstantKernel(h["outputscale"], "fixed") * base, alpha=h["noise"], optimizer=None
    ).fit(x.numpy(), gp.targets[0].numpy())
    mu, sd = sk.predict(xq.numpy(), return_std=True)
    lm, lv = gp.latent(xq)
    np.testing.assert_allclose(lm.numpy(), mu, atol=1e-5)
    np.testing.assert_allclose(lv.numpy(), sd**2, atol=1e-5)
    # predictive in original units: mean * scale + shift, variance (latent + noise) * scale^2
    m, v = gp.predict(xq)
    np.testing.assert_allclose(m.numpy(), mu * float(gp.scale[0]) + float(gp.shift[0]), atol=1e-5)
    np.testing.assert_allclose(v.numpy(), (sd**2 + h["noise"]) * float(gp.scale[0]) ** 2, atol=1e-5)


@pytest.mark.parametrize(
    "kernel,mean", [("matern52", "constant"), ("tanimoto", "zero"), ("rbf", "zero")]
)
def test_posterior_matches_gpytorch(kernel, mean):
    x, y = _data(2)
    if kernel == "tanimoto":
        x = x.abs().round()
    xq = x[:5] + 0.5
    gp = GPHead(GPConfig(kernel=kernel, mean=mean, kind="regression")).fit(x, y)
    model, lik = gp.to_gpytorch()
    with torch.no_grad(), gpytorch.settings.fast_computations(False, False, False):
        pred = model(xq)
    lm, lv = gp.latent(xq)
    np.testing.assert_allclose(lm.numpy(), pred.mean.numpy(), atol=1e-5)
    np.testing.assert_allclose(lv.numpy(), pred.variance.numpy(), atol=1e-5)


def test_kernels_match_gpytorch():
    x1, x2 = torch.randn(6, 4), torch.randn(5, 4)
    ls = torch.tensor(1.3)
    km = gpytorch.kernels.MaternKernel(nu=2.5)
    km.lengthscale = ls
    kr = gpytorch.kernels.RBFKernel()
    kr.lengthscale = ls
    with torch.no_grad():
        np.testing.assert_allclose(
            matern52(x1, x2, ls).numpy(), km(x1, x2).to_dense().numpy(), atol=1e-10
        )
        np.testing.assert_allclose(
            rbf(x1, x2, ls).numpy(), kr(x1, x2).to_dense().numpy(), atol=1e-10
        )


@pytest.mark.parametrize("same", [True, False])
def test_written_out_kernel_derivatives_match_finite_differences(same):
    """Distances and Matern-5/2 have hand-written backward passes: first and second
    derivatives are checked against central finite differences (torch.autograd.gradcheck)."""
    g = torch.Generator().manual_seed(3)
    x1 = torch.randn(2, 5, 3, dtype=torch.float64, generator=g).requires_grad_()
    x2 = x1 if same else torch.randn(2, 4, 3, dtype=torch.float64, generator=g).requires_grad_()
    ls = (0.5 + torch.rand(2, 1, 1, dtype=torch.float64, generator=g)).requires_grad_()

    def dist(a, b):
        return squared_distance(a, a if same else b)

    def kern(a, b, l):
        return matern52_from_sqdist(dist(a, b), l)

    inputs = (x1, x2, ls) if not same else (x1, x1, ls)
    assert torch.autograd.gradcheck(dist, inputs[:2])
    assert torch.autograd.gradgradcheck(dist, inputs[:2])
    assert torch.autograd.gradcheck(kern, inputs)
    assert torch.autograd.gradgradcheck(kern, inputs)
    # values: the closed form on torch.cdist distances
    with torch.no_grad():
        r = torch.cdist(x1, x2)
        a = math.sqrt(5.0) * r / ls
        torch.testing.assert_close(
            kern(x1, x2, ls), (1 + a + a**2 / 3) * torch.exp(-a), atol=1e-12, rtol=0
        )
    # the diagonal (r = 0) has a finite, zero gradient, also with duplicate points
    xd = torch.cat([x1[:, :2], x1[:, :1]], dim=1).detach().requires_grad_()
    matern52_from_sqdist(squared_distance(xd, xd), ls.detach()).sum().backward()
    assert bool(torch.isfinite(xd.grad).all())


def test_newton_reuses_closed_form_derivatives_without_changing_iterates():
    """With closed-form derivatives the full Newton step is scored by them; the iterates equal
    those of the autograd path (which scores it with a separate objective evaluation)."""
    cfg = GPConfig(kind="classification")
    g = torch.Generator().manual_seed(5)
    z = torch.randn(4, 24, 5, dtype=torch.float64, generator=g)
    y = torch.where(torch.rand(4, 24, generator=g) > 0.6, 1.0, -1.0).double()
    geom = geometry(cfg, z, z)
    cen = prior_centres(cfg, z, geom=geom)
    th0 = initial_theta(cfg, y, None, cen)

    def fn(th):
        return inner_objective(th, cfg, geom, y, None, cen)

    def derivs(th):
        return inner_objective_derivatives(th, cfg, geom, y, None, cen)

    fast = batched_newton(fn, th0, derivatives=derivs, tol=1e-9)
    slow = batched_newton(fn, th0, tol=1e-9)
    assert bool(fast.converged.all())
    torch.testing.assert_close(fast.theta, slow.theta, atol=1e-9, rtol=0)
    assert torch.equal(fast.n_iter, slow.n_iter)


def test_tanimoto_is_jaccard_on_bits_and_minmax_on_counts():
    from rdkit import DataStructs

    rng = np.random.default_rng(0)
    bits = rng.integers(0, 2, size=(5, 64))
    k = tanimoto(
        torch.as_tensor(bits, dtype=torch.float64), torch.as_tensor(bits, dtype=torch.float64)
    )
    for i in range(5):
        for j in range(5):
            a, b = DataStructs.ExplicitBitVect(64), DataStructs.ExplicitBitVect(64)
            a.SetBitsFromList([int(t) for t in np.flatnonzero(bits[i])])
            b.SetBitsFromList([int(t) for t in np.flatnonzero(bits[j])])
            assert abs(float(k[i, j]) - DataStructs.TanimotoSimilarity(a, b)) < 1e-12
    c = torch.tensor([[2.0, 0.0, 1.0], [1.0, 3.0, 1.0]])
    assert abs(float(tanimoto(c, c)[0, 1]) - (1 + 0 + 1) / (2 + 3 + 1)) < 1e-12
    with pytest.raises(ValueError, match="non-negative"):
        tanimoto(-c, c)
    for bad in (float("nan"), float("inf")):  # NaN used to give similarity 1
        with pytest.raises(ValueError, match="finite, non-negative"):
            tanimoto(c, torch.full_like(c, bad))


def test_gp_settings_are_checked_where_they_are_given():
    from probrec.gp.head import GPHead

    for kw, match in (
        ({"noise_mode": 0.0}, "noise_mode"),
        ({"noise_mode": float("nan")}, "noise_mode"),
        ({"min_noise": -1.0}, "min_noise"),
    ):
        with pytest.raises(ValueError, match=match):
            GPConfig(**kw)
    with pytest.raises(TypeError, match="lengthscale_prior must be a bool"):
        GPConfig(lengthscale_prior="no")
    assert GPConfig(noise_mode=0.05, min_noise=0.0).noise_prior_mode == 0.05
    with pytest.raises(TypeError, match="config must be a GPConfig"):
        GPHead("rbf")
    for kw, err in (
        ({"tol": float("nan")}, ValueError),
        ({"tol": 0.0}, ValueError),
        ({"max_iter": 0}, ValueError),
        ({"max_iter": 2.5}, TypeError),
    ):
        with pytest.raises(err, match=next(iter(kw))):
            GPHead(GPConfig(), **kw)


def test_functional_api_refuses_mixed_dtypes_and_a_theta_of_other_tasks():
    cfg = GPConfig()
    g = torch.Generator().manual_seed(0)
    z_s = torch.randn(2, 5, 3, generator=g, dtype=torch.float64)
    z_q = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 5, generator=g, dtype=torch.float64)
    theta = torch.zeros(2, cfg.n_params, dtype=torch.float64)
    with pytest.raises(ValueError, match="share a dtype and device"):  # bare RuntimeError before
        posterior(theta, cfg, z_s.float(), y, z_q)
    with pytest.raises(ValueError, match="share a dtype and device"):
        geometry(cfg, z_s, z_q.float())
    for call in (  # a [1, p] theta was broadcast over both tasks without a word
        lambda t: posterior(t, cfg, z_s, y, z_q),
        lambda t: neg_log_marginal_likelihood(t, cfg, geometry(cfg, z_s, z_s), y),
    ):
        with pytest.raises(ValueError, match=r"theta must have one row per task \(2\)"):
            call(theta[:1])
        call(theta[:1].expand(2, -1))  # the explicit form


def test_nlml_matches_multivariate_normal_and_masking_is_exact():
    x, y = _data(3, n=12)
    cfg = GPConfig(kind="regression", mean="constant")
    theta = torch.tensor([[0.2, -0.1, -2.0, 0.3]])
    geom = geometry(cfg, x[None], x[None])
    nlml = neg_log_marginal_likelihood(theta, cfg, geom, y[None])
    k = torch.exp(theta[0, 1]) * matern52(x, x, theta[0, 0].exp()) + (
        theta[0, 2].exp() + cfg.min_noise
    ) * torch.eye(12)
    ref = -torch.distributions.MultivariateNormal(torch.full((12,), 0.3), k).log_prob(y)
    assert abs(float(nlml[0] - ref)) < 1e-9
    # padding a second, shorter task gives that task's exact value
    xp = torch.cat([x[:8], torch.randn(4, 3) * 100])
    yp = torch.cat([y[:8], torch.randn(4) * 100])
    mask = torch.tensor([[True] * 12, [True] * 8 + [False] * 4])
    zz = torch.stack([x, xp])
    both = neg_log_marginal_likelihood(
        theta.repeat(2, 1), cfg, geometry(cfg, zz, zz), torch.stack([y, yp]), mask
    )
    single = neg_log_marginal_likelihood(
        theta, cfg, geometry(cfg, x[None, :8], x[None, :8]), y[None, :8]
    )
    assert abs(float(both[0] - nlml[0])) < 1e-9 and abs(float(both[1] - single[0])) < 1e-9


@pytest.mark.parametrize("kernel", ["matern52", "rbf", "tanimoto"])
@pytest.mark.parametrize("mean", ["zero", "constant"])
def test_closed_form_derivatives_equal_autograd(kernel, mean):
    cfg = GPConfig(kernel=kernel, mean=mean, kind="regression")
    g = torch.Generator().manual_seed(0)
    z = torch.randn(3, 10, 5, generator=g)
    if kernel == "tanimoto":
        z = z.abs()
    y = torch.randn(3, 10, generator=g)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    geom = geometry(cfg, z, z)
    cen = prior_centres(cfg, z, mask)
    th = 0.3 * torch.randn(3, cfg.n_params, generator=g)
    f1, g1, h1 = inner_objective_derivatives(th, cfg, geom, y, mask, cen)
    f2, g2, h2 = value_grad_hessian(lambda t: inner_objective(t, cfg, geom, y, mask, cen), th)
    torch.testing.assert_close(f1, f2, atol=1e-10, rtol=0)
    torch.testing.assert_close(g1, g2, atol=1e-10, rtol=0)
    torch.testing.assert_close(h1, h2, atol=1e-10, rtol=0)


@pytest.mark.parametrize("kernel", ["matern52", "rbf", "tanimoto"])
@pytest.mark.parametrize("mean", ["zero", "constant"])
def test_closed_form_gradient_gives_the_mixed_derivative_of_autograd(kernel, mean):
    """inner_objective_grad equals autograd's gradient, and differentiating it once with
    respect to the features equals autograd's double backward (the IFT mixed term)."""
    cfg = GPConfig(kernel=kernel, mean=mean, kind="regression")
    g = torch.Generator().manual_seed(1)
    z0 = torch.randn(3, 10, 5, generator=g, dtype=torch.float64)
    z0 = z0.abs() if kernel == "tanimoto" else z0
    y = torch.randn(3, 10, generator=g, dtype=torch.float64)
    mask = torch.ones(3, 10, dtype=torch.bool)
    mask[1, 7:] = False
    cen = prior_centres(cfg, z0, mask)
    th = 0.3 * torch.randn(3, cfg.n_params, generator=g, dtype=torch.float64)
    w = torch.randn(3, cfg.n_params, generator=g, dtype=torch.float64)

    z = z0.clone().requires_grad_()
    closed = inner_objective_grad(th, cfg, geometry(cfg, z, z), y, mask, cen)
    (dz_closed,) = torch.autograd.grad((closed * w).sum(), z)
    z2 = z0.clone().requires_grad_()
    t = th.clone().requires_grad_()
    (auto,) = torch.autograd.grad(
        inner_objective(t, cfg, geometry(cfg, z2, z2), y, mask, cen).sum(), t, create_graph=True
    )
    (dz_auto,) = torch.autograd.grad((auto * w).sum(), z2)
    torch.testing.assert_close(closed.detach(), auto.detach(), atol=1e-10, rtol=0)
    torch.testing.assert_close(dz_closed, dz_auto, atol=1e-9, rtol=1e-7)


def test_batched_fit_equals_one_by_one_and_reaches_tolerance():
    cfg = GPConfig(kind="classification")
    g = torch.Generator().manual_seed(4)
    z = torch.randn(5, 16, 6, generator=g)
    y = (torch.rand(5, 16, generator=g) > 0.6).double()
    y[:, 0], y[:, 1] = 1.0, 0.0
    gp = GPHead(cfg, tol=1e-8).fit(z, y)
    assert bool(gp.fit.converged.all()) and float(gp.fit.grad_norm.max()) < 1e-8
    for t in range(5):
        one = GPHead(cfg, tol=1e-8).fit(z[t], y[t])
        torch.testing.assert_close(one.theta[0], gp.theta[t], atol=1e-6, rtol=0)


def test_fit_matches_botorch_map():
    """Our Newton optimum is the MAP that botorch's L-BFGS finds for the same model + priors."""
    from botorch.fit import fit_gpytorch_mll

    x, y = _data(5, n=30)
    cfg = GPConfig(kind="regression")
    gp = GPHead(cfg, tol=1e-9).fit(x, y)
    from botorch.models import SingleTaskGP

    t = gp.targets[0]
    lik = gpytorch.likelihoods.GaussianLikelihood(
        noise_prior=gpytorch.priors.LogNormalPrior(np.log(0.01) + 0.0625, 0.25)
    )
    mode = float(prior_centres(cfg, x[None]).lengthscale_mode[0])
    base = gpytorch.kernels.MaternKernel(
        nu=2.5, lengthscale_prior=gpytorch.priors.LogNormalPrior(np.log(mode) + 0.0625, 0.25)
    )
    base.lengthscale = mode
    model = SingleTaskGP(
        x,
        t[:, None],
        likelihood=lik,
        covar_module=gpytorch.kernels.ScaleKernel(base),
        mean_module=gpytorch.means.ZeroMean(),
        outcome_transform=None,
    )
    mll = gpytorch.mlls.ExactMarginalLogLikelihood(lik, model)
    with gpytorch.settings.fast_computations(False, False, False):
        fit_gpytorch_mll(mll)
    ours = gp.hyperparameters()
    assert (
        abs(
            float(model.covar_module.base_kernel.lengthscale.detach()) / float(ours["lengthscale"])
            - 1
        )
        < 2e-2
    )
    assert (
        abs(float(model.covar_module.outputscale.detach()) / float(ours["outputscale"]) - 1) < 2e-2
    )
    assert abs(float(lik.noise.detach()) / (float(ours["noise"]) - cfg.min_noise) - 1) < 5e-2


def test_classification_head_probabilities_and_errors():
    x, _ = _data(6, n=20)
    y = (x[:, 0] > 0).double()
    gp = GPHead(GPConfig()).fit(x, y)
    p = gp.predict_proba(x)
    assert ((p > 0.5) == (y == 1)).double().mean() > 0.9
    with pytest.raises(ValueError, match="single-class"):
        GPHead(GPConfig()).fit(x, torch.ones(20))
    with pytest.raises(ValueError, match="non-finite"):
        GPHead(GPConfig()).fit(x, torch.full((20,), float("nan")))
    with pytest.raises(ValueError, match="y_s must have shape"):
        GPHead(GPConfig()).fit(x, y[:5])


def test_regression_with_degenerate_support_keeps_the_prior_scale():
    # one point, or equal values: the label standardisation used to divide by a floored
    # std of 1e-6, so the predictive variance came back ~1e-14 (times the floor squared)
    x, _ = _data(6, n=10)
    xq = x[:3] + 0.5
    cfg = GPConfig(kind="regression")
    for xs, ys in ((x[:1], torch.tensor([2.5])), (x, torch.full((10,), 2.5))):
        gp = GPHead(cfg).fit(xs, ys)
        mean, var = gp.predict(xq)
        torch.testing.assert_close(mean, torch.full((3,), 2.5, dtype=mean.dtype))
        assert gp.scale.item() == 1.0
        # the encoded targets are zero: the latent posterior variance plus the noise, unscaled
        latent_var = gp.latent(xq)[1]
        noise = gp.theta[0, -1].exp() + cfg.min_noise
        torch.testing.assert_close(var, latent_var + noise)
        assert bool((var > 1e-3).all())


def test_bad_masks_and_fixed_hyperparameters_are_named():
    x, y = _data(6, n=10)
    head = GPHead(GPConfig(kind="regression"))
    with pytest.raises(ValueError, match="mask must have the shape of y_s"):
        head.fit(x, y, mask=torch.ones(9, dtype=torch.bool))
    with pytest.raises(ValueError, match="without points"):
        head.fit(x, y, mask=torch.zeros(10, dtype=torch.bool))
    p = head.config.n_params
    with pytest.raises(ValueError, match="one row per task"):
        head.fit(x, y, theta=torch.zeros(2, p))  # one task: row 0 was used silently
    with pytest.raises(ValueError, match="one row per task"):
        head.fit(torch.stack([x, x]), torch.stack([y, y]), theta=torch.zeros(3, p))


def test_robust_cholesky_jitter_float64_and_clear_errors():
    v = torch.randn(6, 2, dtype=torch.float32)
    k = (v @ v.T)[None]  # rank 2: singular
    chol = robust_cholesky(k)
    assert bool(torch.isfinite(chol).all())
    with pytest.raises(ValueError, match="NaN"):
        robust_cholesky(torch.full((1, 3, 3), float("nan")))
    with pytest.raises(NotPositiveDefiniteError, match="batch index"):
        robust_cholesky(-torch.eye(3)[None] * 100)


def test_duplicate_points_do_not_give_nan():
    x = torch.ones(10, 3)  # every point identical
    y = torch.tensor([1.0, 0.0] * 5)
    gp = GPHead(GPConfig()).fit(x, y)
    assert bool(torch.isfinite(gp.predict_proba(x)).all())


def test_joint_and_marginal_predictive_nll():
    x, y = _data(7, n=20)
    cfg = GPConfig(kind="regression")
    theta = initial_theta(cfg, y[None], None, prior_centres(cfg, x[None]))
    post = posterior(theta, cfg, x[None, :12], y[None, :12], x[None, 12:], full_cov=True)
    joint = predictive_nll(post, y[None, 12:])
    cov = post.cov[0] + post.noise[0] * torch.eye(8)
    ref = -torch.distributions.MultivariateNormal(post.mean[0], cov).log_prob(y[12:])
    assert abs(float(joint[0] - ref)) < 1e-8
    marg = predictive_nll(post, y[None, 12:], joint=False)
    ref_m = (
        -torch.distributions.Normal(post.mean[0], (post.var[0] + post.noise[0]).sqrt())
        .log_prob(y[12:])
        .sum()
    )
    assert abs(float(marg[0] - ref_m)) < 1e-8
    with pytest.raises(ValueError, match=r"y_q must have the posterior's shape \(1, 8\)"):
        predictive_nll(post, y[12:])  # [m] would broadcast over the tasks
    with pytest.raises(ValueError, match="mask_q must have"):
        predictive_nll(post, y[None, 12:], torch.ones(8, dtype=torch.bool))


def test_gaussian_nll_value_and_closed_form_backward():
    g = torch.Generator().manual_seed(3)
    a = torch.randn(4, 7, 7, dtype=torch.float64, generator=g)
    cov = (a @ a.transpose(-1, -2) + 0.5 * torch.eye(7, dtype=torch.float64)).requires_grad_()
    r = torch.randn(4, 7, dtype=torch.float64, generator=g).requires_grad_()
    mvn = torch.distributions.MultivariateNormal(torch.zeros(7, dtype=torch.float64), cov)
    ref = -mvn.log_prob(r) - 0.5 * 7 * math.log(2 * math.pi)
    torch.testing.assert_close(gaussian_nll(cov, r), ref, rtol=1e-12, atol=1e-12)
    # the closed-form backward against autograd through the factorisation, and against
    # central finite differences along symmetric directions (the covariance stays symmetric)
    w = torch.randn(4, dtype=torch.float64, generator=g)
    got = torch.autograd.grad((gaussian_nll(cov, r) * w).sum(), (cov, r))
    want = torch.autograd.grad((ref * w).sum(), (cov, r))
    for x, y in zip(got, want, strict=True):
        torch.testing.assert_close(x, y, rtol=1e-10, atol=1e-10)
    d = torch.randn(4, 7, 7, dtype=torch.float64, generator=g)
    d = d + d.transpose(-1, -2)
    dr = torch.randn(4, 7, dtype=torch.float64, generator=g)
    eps = 1e-6
    with torch.no_grad():
        fd = (
            gaussian_nll(cov + eps * d, r + eps * dr) - gaussian_nll(cov - eps * d, r - eps * dr)
        ) / (2 * eps)
    analytic = (got[0] * d).sum((-1, -2)) / w + (got[1] * dr).sum(-1) / w
    torch.testing.assert_close(analytic, fd, rtol=1e-7, atol=1e-8)
    with pytest.raises(ValueError, match="cov must be"):
        gaussian_nll(cov, r[:, :5])
