"""Exact-GP pieces against independent references (scipy distances, exact medians)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from probrec.gp import (
    GPConfig,
    encode_labels,
    fit_hyperparameters,
    geometry,
    inner_objective_derivatives,
    neg_log_marginal_likelihood,
    posterior,
    predictive_nll,
    prior_centres,
)
from probrec.gp.exact import median_lengthscale, unpack
from probrec.gp.kernels import correlation


def _reference_median(z: np.ndarray) -> float:
    """``sqrt(median / 2)`` of the squared distances of distinct points (scipy, float64).

    The lower middle value for an even count, as ``torch.nanmedian``; 1 without any pair.
    """
    d = pdist(z.astype(np.float64), "sqeuclidean")
    d = np.sort(d[d > 0])
    return float(np.sqrt(0.5 * d[(len(d) - 1) // 2])) if len(d) else 1.0


def _features(seed: int, n: int, d: int = 256) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return 2.0 * torch.relu(torch.randn(n, d, generator=g))  # ReLU-encoder-like, float32


@pytest.mark.parametrize("n_copies", [0, 3, 8])
def test_median_lengthscale_leaves_out_coincident_rows_in_float32(n_copies):
    # duplicated molecules encode to identical feature rows; in float32 the inner-product
    # expansion gives such pairs a squared distance of ~1e-4, not 0, and they entered the median
    z = _features(0, 16)
    if n_copies:
        z[16 - n_copies :] = z[0]
    z = z[None]
    expected = _reference_median(z[0].numpy())
    got = median_lengthscale(z)
    np.testing.assert_allclose(got.numpy(), [expected], rtol=1e-5)
    # the fitting path: the prior's mode from the support geometry computed once
    c = GPConfig()
    mode = prior_centres(c, z, geom=geometry(c, z, z)).lengthscale_mode
    np.testing.assert_allclose(mode.numpy(), [expected], rtol=1e-5)


def test_median_lengthscale_on_collapsed_features():
    # all support points but one coincide: the only distinct pairs are those with the last point
    g = torch.Generator().manual_seed(1)
    z = (3.0 * torch.relu(torch.randn(1, 256, generator=g))).expand(12, 256).clone()
    z[-1] += 0.5
    expected = _reference_median(z.numpy())  # sqrt(0.25 * 256 / 2) = 5.657
    assert expected == pytest.approx(np.sqrt(0.5 * 0.25 * 256))
    np.testing.assert_allclose(median_lengthscale(z[None]).numpy(), [expected], rtol=1e-5)


def test_median_lengthscale_with_padding_and_duplicates_per_task():
    # a batch of tasks with padding and duplicates equals the reference on each task's points
    zs = [_features(s, n) for s, n in ((2, 10), (3, 16), (4, 7))]
    zs[0][5:] = zs[0][0]
    zs[2][3:] = zs[2][1]
    z = torch.zeros(3, 16, 256)
    mask = torch.zeros(3, 16, dtype=torch.bool)
    for t, zt in enumerate(zs):
        z[t, : len(zt)] = zt
        mask[t, : len(zt)] = True
    expected = [_reference_median(zt.numpy()) for zt in zs]
    np.testing.assert_allclose(median_lengthscale(z, mask).numpy(), expected, rtol=1e-5)
    for t, zt in enumerate(zs):  # task by task, no padding: the same values
        np.testing.assert_allclose(median_lengthscale(zt[None]).numpy(), [expected[t]], rtol=1e-5)


def _ragged(seed: int = 0):
    """Two regression tasks of 5 and 8 support / 2 and 4 query points, padded with NaN labels."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(2, 8, 3, generator=g, dtype=torch.float64)
    y = torch.randn(2, 8, generator=g, dtype=torch.float64)
    zq = torch.randn(2, 4, 3, generator=g, dtype=torch.float64)
    yq = torch.randn(2, 4, generator=g, dtype=torch.float64)
    mask = torch.ones(2, 8, dtype=torch.bool)
    mask[0, 5:] = False
    mask_q = torch.ones(2, 4, dtype=torch.bool)
    mask_q[0, 2:] = False
    y[~mask] = float("nan")  # missing labels at the padded points
    yq[~mask_q] = float("nan")
    return z, y, mask, zq, yq, mask_q


def _exact_gp(c, theta, x, y, xq):
    """NLML, posterior mean and covariance of one task on its valid points (dense solves)."""
    h = unpack(theta[None], c)
    ls = h.lengthscale[0] if h.lengthscale is not None else None
    k = h.outputscale[0] * correlation(c.kernel, x, x, ls)
    cov = k + h.noise[0] * torch.eye(len(x), dtype=x.dtype)
    mu = h.mean[0]
    nlml = -torch.distributions.MultivariateNormal(mu.expand(len(x)), cov).log_prob(y)
    k_sq = h.outputscale[0] * correlation(c.kernel, x, xq, ls)
    k_qq = h.outputscale[0] * correlation(c.kernel, xq, xq, ls)
    mean = mu + k_sq.T @ torch.linalg.solve(cov, y - mu)
    pcov = k_qq - k_sq.T @ torch.linalg.solve(cov, k_sq)
    return nlml, mean, pcov, h.noise[0]


@pytest.mark.parametrize("mean", ["zero", "constant"])
def test_nan_labels_at_padded_points_change_nothing(mean):
    # the padding contract: masked points drop out whatever their label holds (NaN gave NaN)
    c = GPConfig(kind="regression", mean=mean)
    z, y, mask, zq, yq, mask_q = _ragged()
    theta = torch.tensor([[0.2, 0.3, -2.0, 0.1][: c.n_params]] * 2, dtype=torch.float64)
    geom = geometry(c, z, z)
    nlml = neg_log_marginal_likelihood(theta, c, geom, y, mask)
    centres = prior_centres(c, z, mask)
    value, grad, hess = inner_objective_derivatives(theta, c, geom, y, mask, centres)
    post = posterior(theta, c, z, y, zq, mask, full_cov=True)
    joint = predictive_nll(post, yq, mask_q)
    marginal = predictive_nll(post, yq, mask_q, joint=False)
    for t in range(2):
        n, m = int(mask[t].sum()), int(mask_q[t].sum())
        ref_nlml, ref_mean, ref_cov, noise = _exact_gp(c, theta[t], z[t, :n], y[t, :n], zq[t])
        assert float(nlml[t]) == pytest.approx(float(ref_nlml), rel=1e-10)
        np.testing.assert_allclose(post.mean[t].numpy(), ref_mean.numpy(), atol=1e-10)
        cq = ref_cov[:m, :m] + noise * torch.eye(m, dtype=torch.float64)
        ref_joint = -torch.distributions.MultivariateNormal(ref_mean[:m], cq).log_prob(yq[t, :m])
        ref_marg = -torch.distributions.Normal(ref_mean[:m], cq.diagonal().sqrt()).log_prob(
            yq[t, :m]
        )
        assert float(joint[t]) == pytest.approx(float(ref_joint), rel=1e-10)
        assert float(marginal[t]) == pytest.approx(float(ref_marg.sum()), rel=1e-10)
        # closed-form derivatives equal those of the unpadded task
        zt = z[t : t + 1, :n]
        v1, g1, h1 = inner_objective_derivatives(
            theta[t : t + 1], c, geometry(c, zt, zt), y[t : t + 1, :n], None, prior_centres(c, zt)
        )
        np.testing.assert_allclose(value[t].numpy(), v1[0].numpy(), rtol=1e-10)
        np.testing.assert_allclose(grad[t].numpy(), g1[0].numpy(), atol=1e-10)
        np.testing.assert_allclose(hess[t].numpy(), h1[0].numpy(), atol=1e-10)
    # the fit (its start uses the label mean for a constant mean) equals task-by-task fits
    fit = fit_hyperparameters(c, geom, y, mask, centres)
    for t in range(2):
        n = int(mask[t].sum())
        zt = z[t : t + 1, :n]
        one = fit_hyperparameters(
            c, geometry(c, zt, zt), y[t : t + 1, :n], None, prior_centres(c, zt)
        )
        np.testing.assert_allclose(fit.theta[t].numpy(), one.theta[0].numpy(), atol=1e-8)


@pytest.mark.parametrize("kind", ["classification", "regression"])
def test_encode_labels_ignores_nan_at_padded_points(kind):
    y = torch.tensor([[0.0, 1.0, 1.0, float("nan")], [1.0, 0.0, float("nan"), float("nan")]])
    mask = ~torch.isnan(y)
    targets, shift, scale = encode_labels(y, kind, mask)
    for t in range(2):
        n = int(mask[t].sum())
        ref_t, ref_shift, ref_scale = encode_labels(y[t : t + 1, :n], kind)
        np.testing.assert_array_equal(targets[t, :n].numpy(), ref_t[0].numpy())
        assert (float(shift[t]), float(scale[t])) == (float(ref_shift[0]), float(ref_scale[0]))
        assert bool((targets[t, n:] == 0).all())
    if kind == "regression":  # against numpy's population standard deviation
        np.testing.assert_allclose(scale.numpy(), [np.std([0, 1, 1]), np.std([1, 0])], rtol=1e-6)
