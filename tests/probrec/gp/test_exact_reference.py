"""Exact-GP pieces against independent references (scipy distances, exact medians)."""

import numpy as np
import pytest
import torch
from scipy.spatial.distance import pdist

from probrec.gp import GPConfig, geometry, prior_centres
from probrec.gp.exact import median_lengthscale


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
