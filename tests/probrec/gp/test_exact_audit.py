"""Audit checks of the exact GP head: fits without the lengthscale prior."""

import math

import numpy as np
import pytest
import scipy.optimize
import torch

from probrec.gp import GPConfig, GPHead


@pytest.mark.parametrize("kernel", ["matern52", "rbf"])
def test_fit_without_lengthscale_prior_reaches_the_map(kernel):
    """``GPConfig(lengthscale_prior=False)`` (an ADKF-IFT config key) raised 'initial_theta
    needs prior centres' for every kernel with a lengthscale; the fit now starts at the median
    heuristic and reaches the MAP of the marginal likelihood and the noise prior alone,
    checked against Nelder-Mead on an independent torch.distributions objective."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(30, 2, generator=g, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + 0.1 * torch.randn(30, generator=g, dtype=torch.float64)
    cfg = GPConfig(kernel=kernel, kind="regression", lengthscale_prior=False)
    gp = GPHead(cfg, tol=1e-9).fit(x, y)
    assert bool(gp.fit.converged.all())
    t = gp.targets[0]
    d2 = torch.cdist(x, x).pow(2)

    def objective(th: np.ndarray) -> float:
        ls, out, noise = (float(np.exp(v)) for v in th)
        noise += cfg.min_noise
        r2 = d2 / ls**2
        if kernel == "rbf":
            k = torch.exp(-0.5 * r2)
        else:
            a = torch.sqrt(5 * r2)
            k = (1 + a + a**2 / 3) * torch.exp(-a)
        cov = out * k + noise * torch.eye(30, dtype=torch.float64)
        mvn = torch.distributions.MultivariateNormal(torch.zeros(30, dtype=torch.float64), cov)
        s = cfg.prior_scale
        prior = torch.distributions.LogNormal(math.log(cfg.noise_prior_mode) + s**2, s)
        value = -mvn.log_prob(t) - prior.log_prob(torch.tensor(noise, dtype=torch.float64))
        return float(value) / 30

    res = scipy.optimize.minimize(
        objective,
        gp.theta[0].numpy() + 0.3,
        method="Nelder-Mead",
        options={"xatol": 1e-10, "fatol": 1e-14, "maxiter": 20000},
    )
    assert objective(gp.theta[0].numpy()) <= res.fun + 1e-9
    np.testing.assert_allclose(gp.theta[0].numpy(), res.x, atol=1e-3)


def test_fit_without_lengthscale_prior_starts_at_the_median_heuristic_of_valid_points():
    """The start without a prior is the prior's mode would it be there (padding excluded)."""
    from probrec.gp.exact import PriorCentres, initial_theta, median_lengthscale
    from probrec.gp.kernels import squared_distance

    g = torch.Generator().manual_seed(1)
    z = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[1, 5:] = False
    y = torch.zeros(2, 8, dtype=torch.float64)
    cfg = GPConfig(kind="regression", lengthscale_prior=False)
    th = initial_theta(cfg, y, mask, PriorCentres(None), geom=squared_distance(z, z))
    expected = [float(median_lengthscale(z[0:1])[0]), float(median_lengthscale(z[1:2, :5])[0])]
    np.testing.assert_allclose(th[:, 0].exp().numpy(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="prior centres or the support geometry"):
        initial_theta(cfg, y, mask, PriorCentres(None))
