"""Bayesian optimisation over a finite pool of candidates (e.g. a library of molecules).

The protocol of Chen, Tripp & Hernandez-Lobato (ICLR 2023, Section 5.3): start from
``n_init`` random points of the pool, then for ``n_iter`` iterations refit the surrogate on
everything observed, score every unobserved candidate with an acquisition function and observe
the best one (batch size 1). The record is the best value found so far after each iteration.
The surrogate is any BoTorch ``Model`` built by a user function, so the same loop runs GP heads
on meta-learned features, GPs on fingerprints, forests and random search.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from botorch.acquisition import (
    ExpectedImprovement,
    LogExpectedImprovement,
    UpperConfidenceBound,
)
from botorch.models.model import Model

from probrec.checks import (
    as_float_tensor,
    check_choice,
    check_positive_int,
    check_real,
    check_seed,
)
from probrec.seeding import numpy_rng, wrap_seed

ACQUISITIONS = ("logei", "ei", "ucb")

ModelFactory = Callable[[torch.Tensor, torch.Tensor, int], Model]
"""``(X_observed [n, d], Y_observed [n, 1], seed) -> fitted BoTorch model``."""


@dataclass
class PoolBOTrace:
    """One Bayesian-optimisation run over a pool.

    Attributes:
        order: ``[n_init + n_iter]`` pool indices in the order they were observed.
        values: ``[n_init + n_iter]`` objective values (to maximise) in that order.
        best_so_far: ``[n_iter + 1]`` best value after the initial design and each iteration.
        seconds: wall time of the run.
    """

    order: np.ndarray
    values: np.ndarray
    best_so_far: np.ndarray
    seconds: float


def _acquisition(name: str, model: Model, best_f: torch.Tensor, beta: float):
    if name == "logei":
        return LogExpectedImprovement(model, best_f=best_f)
    if name == "ei":
        return ExpectedImprovement(model, best_f=best_f)
    return UpperConfidenceBound(model, beta=beta)


def score_pool(acq, X: torch.Tensor, chunk: int = 4096) -> torch.Tensor:
    """Acquisition values ``[m]`` of each row of ``X [m, d]`` as a batch-size-1 candidate.

    Equals ``optimize_acqf_discrete(acq, q=1, choices=X)``'s internal scores; returning all of
    them lets the caller map the maximiser back to a pool index.
    """
    with torch.no_grad():
        return torch.cat([acq(X[i : i + chunk].unsqueeze(-2)) for i in range(0, len(X), chunk)])


def pool_bo(
    X: torch.Tensor,
    y: torch.Tensor,
    make_model: ModelFactory | None,
    *,
    n_init: int = 16,
    n_iter: int = 30,
    seed: int = 0,
    acquisition: str = "logei",
    beta: float = 2.0,
) -> PoolBOTrace:
    """Runs batch-size-1 Bayesian optimisation (maximisation) over the rows of a pool.

    Args:
        X: ``[N, d]`` candidate inputs.
        y: ``[N]`` objective values to maximise (negate a quantity to minimise).
        make_model: builds the surrogate from the observed points; ``None`` is random search.
        n_init: random initial points (drawn with ``seed``; the same seed gives every
            surrogate the same initial design).
        n_iter: acquisitions after the initial design.
        seed: int seed in ``[0, 2**63)`` of the initial design (and of random search;
            surrogate ``it`` is built with ``(seed * 1000 + it) mod 2**63``).
        acquisition: ``"logei"`` (log expected improvement; the same maximiser as EI wherever
            EI is representable, and it still ranks candidates where EI underflows to 0),
            ``"ei"`` or ``"ucb"`` (with ``beta``).
        beta: UCB exploration weight.

    Returns:
        A :class:`PoolBOTrace`.

    Raises:
        ValueError: shapes disagree, ``y`` is not finite, or the pool is smaller than
            ``n_init + n_iter``.
        TypeError: ``n_init``, ``n_iter`` or ``seed`` is not an int.
    """
    x = as_float_tensor(X, "X", dtype=torch.float64)
    t = as_float_tensor(y, "y", dtype=torch.float64, device=x.device)
    check_positive_int(n_init, "n_init")
    check_choice(acquisition, "acquisition", ACQUISITIONS)
    check_real(beta, "beta")  # NaN failed after a model fit; a negative weight is not UCB
    check_positive_int(n_iter, "n_iter", minimum=0)  # 2.5 failed in range(), True ran once
    # an int: it seeds the design and, as seed * 1000 + iteration, each surrogate (None or a
    # Generator passed numpy_rng and failed at the first surrogate with a bare TypeError)
    check_seed(seed)
    if x.dim() != 2 or t.shape != (x.shape[0],):
        raise ValueError(f"X must be [N, d] and y [N]; got {tuple(x.shape)} and {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError("y contains NaN or infinite values")
    if x.shape[0] < n_init + n_iter:
        raise ValueError(f"the pool has {x.shape[0]} points, fewer than n_init + n_iter")
    t0 = time.perf_counter()
    rng = numpy_rng(seed)
    order = [int(i) for i in rng.choice(x.shape[0], size=n_init, replace=False)]
    observed = np.zeros(x.shape[0], dtype=bool)
    observed[order] = True
    for it in range(n_iter):
        remaining = np.flatnonzero(~observed)
        if make_model is None:
            pick = int(rng.choice(remaining))
        else:
            idx = torch.as_tensor(order, device=x.device)
            # within [0, 2**63), the seeds check_seed takes (seeds from ~9.2e15 on gave
            # surrogate seeds past it; smaller seeds keep theirs)
            model = make_model(x[idx], t[idx, None], wrap_seed(seed * 1_000 + it))
            acq = _acquisition(acquisition, model, t[idx].max(), beta)
            scores = score_pool(acq, x[torch.as_tensor(remaining, device=x.device)])
            if not bool(torch.isfinite(scores).any()):
                raise FloatingPointError(f"every acquisition value is non-finite at iteration {it}")
            pick = int(remaining[int(torch.nan_to_num(scores, nan=-torch.inf).argmax())])
        order.append(pick)
        observed[pick] = True
    values = t[torch.as_tensor(order, device=x.device)].cpu().numpy()
    best = np.maximum.accumulate(values)[n_init - 1 :]
    return PoolBOTrace(np.asarray(order), values, best, time.perf_counter() - t0)
