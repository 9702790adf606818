"""Pool Bayesian optimisation against an independent loop, and its seed arithmetic.

The reference loop below is written from the protocol (Chen, Tripp & Hernandez-Lobato, ICLR
2023, Section 5.3): NumPy's ``default_rng(seed)`` draws the initial design, each iteration
refits the surrogate on everything observed and BoTorch's ``optimize_acqf_discrete`` picks the
next candidate among the unobserved ones; the record is the running maximum.
"""

import warnings

import numpy as np
import pytest
import torch
from botorch.acquisition import ExpectedImprovement, UpperConfidenceBound
from botorch.optim import optimize_acqf_discrete
from sklearn.ensemble import RandomForestRegressor

from probrec.gp.bo_models import DeepKernelGP, ForestModel
from probrec.gp.pool_bo import pool_bo


def _pool(n=80, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 2, generator=g, dtype=torch.float64)
    y = torch.sin(6 * x[:, 0]) * torch.cos(4 * x[:, 1]) + 0.1 * x.sum(-1)
    return x, y


@pytest.mark.filterwarnings("ignore:ExpectedImprovement has known numerical issues")
@pytest.mark.parametrize("acquisition", ["ei", "ucb"])
def test_pool_bo_equals_the_protocol_written_out(acquisition):
    x, y = _pool()
    n_init, n_iter, seed = 6, 5, 7
    trace = pool_bo(
        x,
        y,
        lambda a, b, s: DeepKernelGP.fit(a, b),
        n_init=n_init,
        n_iter=n_iter,
        seed=seed,
        acquisition=acquisition,
        beta=1.5,
    )
    order = list(np.random.default_rng(seed).choice(len(x), size=n_init, replace=False))
    for _ in range(n_iter):
        obs = torch.as_tensor(order)
        model = DeepKernelGP.fit(x[obs], y[obs, None])
        acq = (
            ExpectedImprovement(model, best_f=y[obs].max())
            if acquisition == "ei"
            else UpperConfidenceBound(model, beta=1.5)
        )
        rest = np.setdiff1d(np.arange(len(x)), order)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            cand, _ = optimize_acqf_discrete(acq, q=1, choices=x[rest])
        order.append(int(rest[int(torch.where((x[rest] == cand).all(-1))[0][0])]))
    np.testing.assert_array_equal(trace.order, order)
    assert len(set(order)) == n_init + n_iter  # no candidate observed twice
    np.testing.assert_array_equal(trace.values, y[order].numpy())
    best = [float(y[order[: n_init + i]].max()) for i in range(n_iter + 1)]
    np.testing.assert_array_equal(trace.best_so_far, best)


def test_every_seed_that_pool_bo_accepts_runs_and_small_seeds_keep_their_draws():
    """Surrogate ``it`` was built with ``seed * 1000 + it``, past ``2**63`` for seeds from
    ~9.2e15 (accepted by pool_bo), and the forest passed it to scikit-learn, which takes seeds
    below ``2**32``: seed 5,000,000 failed at the first refit ('random_state ... must be an int
    in the range [0, 4294967295] ... Got 5000000000'). Surrogate seeds are now reduced into
    ``[0, 2**63)`` and the forest's into scikit-learn's range; small seeds are unchanged."""
    x, y = _pool(40)
    seen = []

    def forest(a, b, s):
        seen.append(s)
        return ForestModel.fit(a, b, n_estimators=8, seed=s)

    for seed, want in (
        (3, [3000, 3001]),
        (5_000_000, [5_000_000_000, 5_000_000_001]),
        (2**63 - 1, [(2**63 - 1) * 1000 % 2**63, ((2**63 - 1) * 1000 + 1) % 2**63]),
    ):
        seen.clear()
        a = pool_bo(x, y, forest, n_init=4, n_iter=2, seed=seed)
        assert seen == want and all(0 <= s < 2**63 for s in seen)
        b = pool_bo(x, y, forest, n_init=4, n_iter=2, seed=seed)
        np.testing.assert_array_equal(a.order, b.order)


def test_forest_seed_is_scikit_learns_random_state_modulo_2_32():
    x, y = _pool(30)
    X, Y = x.numpy(), y.numpy()
    q = x[:7, None]
    for seed, state in ((11, 11), (2**32 + 11, 11), (2**63 - 1, (2**63 - 1) % 2**32)):
        model = ForestModel.fit(x, y[:, None], n_estimators=10, seed=seed)
        ref = RandomForestRegressor(10, random_state=state, oob_score=True, n_jobs=1).fit(X, Y)
        np.testing.assert_allclose(
            model.posterior(q).mean.reshape(-1).numpy(), ref.predict(X[:7]), rtol=1e-6
        )
    with pytest.raises(ValueError, match="seed"):
        ForestModel.fit(x, y[:, None], seed=-1)
    with pytest.raises(TypeError, match="seed"):
        ForestModel.fit(x, y[:, None], seed=1.5)
