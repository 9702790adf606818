"""Pool Bayesian optimisation: bookkeeping, the acquisition's argmax, and finding an optimum."""

import warnings

import numpy as np
import pytest
import torch
from botorch.acquisition import LogExpectedImprovement
from botorch.optim import optimize_acqf_discrete

from probrec.gp.bo_models import DeepKernelGP
from probrec.gp.pool_bo import pool_bo


def _pool(n=150, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    y = -((x - torch.tensor([0.3, 0.7], dtype=torch.float64)) ** 2).sum(-1)
    return x, y


def _gp(x, y, seed):
    return DeepKernelGP.fit(x, y)


def test_random_search_bookkeeping():
    x, y = _pool()
    tr = pool_bo(x, y, None, n_init=5, n_iter=20, seed=3)
    assert len(tr.order) == 25 and len(set(tr.order.tolist())) == 25
    np.testing.assert_array_equal(tr.values, y[tr.order].numpy())
    np.testing.assert_array_equal(tr.best_so_far, np.maximum.accumulate(tr.values)[4:])
    again = pool_bo(x, y, None, n_init=5, n_iter=20, seed=3)
    np.testing.assert_array_equal(tr.order, again.order)


def test_initial_design_is_shared_and_acquisition_picks_the_argmax():
    x, y = _pool()
    rand = pool_bo(x, y, None, n_init=6, n_iter=1, seed=1)
    bo = pool_bo(x, y, _gp, n_init=6, n_iter=1, seed=1)
    np.testing.assert_array_equal(rand.order[:6], bo.order[:6])
    obs = torch.as_tensor(bo.order[:6])
    model = _gp(x[obs], y[obs, None], 0)
    rest = np.setdiff1d(np.arange(len(x)), bo.order[:6])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cand, _ = optimize_acqf_discrete(
            LogExpectedImprovement(model, best_f=y[obs].max()), q=1, choices=x[rest]
        )
    torch.testing.assert_close(x[bo.order[6]], cand[0])


def test_expected_improvement_finds_the_optimum_of_a_smooth_function():
    x, y = _pool()
    bo = pool_bo(x, y, _gp, n_init=5, n_iter=12, seed=0)
    rand = pool_bo(x, y, None, n_init=5, n_iter=12, seed=0)
    assert bo.best_so_far[-1] == pytest.approx(float(y.max()))
    assert bo.best_so_far[-1] > rand.best_so_far[-1]


def test_bad_arguments():
    x, y = _pool(20)
    with pytest.raises(ValueError, match="pool"):
        pool_bo(x, y, None, n_init=10, n_iter=11)
    with pytest.raises(ValueError, match="y"):
        pool_bo(x, torch.full_like(y, float("nan")), None, n_init=2, n_iter=2)
    with pytest.raises(ValueError, match="acquisition"):
        pool_bo(x, y, None, n_init=2, n_iter=2, acquisition="pi")
    with pytest.raises(ValueError, match="X must"):
        pool_bo(x, y[:-1], None, n_init=2, n_iter=2)
