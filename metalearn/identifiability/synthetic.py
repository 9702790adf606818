"""Synthetic multi-task regression problems with known latents and a causal graph per task.

Each task ``t`` has binary causal indicators ``c_t`` over ``d`` latents. The task's data follow
the graph ``z_C -> y -> z_S`` (Chen, Horwood, Heo & Hernandez-Lobato, TMLR 2024, Sec. 4):

* causal latents ``z_j ~ N(0, 1)`` for ``c_tj = 1``;
* the label ``y = w_t^T z_C + e``, ``e ~ N(0, noise^2)``;
* spurious latents ``z_j | y ~ N(gamma_tj * y, sigma_s^2)`` for ``c_tj = 0``;
* observations ``x = g(z)`` with a mixing ``g`` shared by all tasks: linear (``x = M z``)
  or nonlinear (an injective leaky-ReLU network).

Every task draws its own inputs, so the label matrix is block-structured: row ``i`` belongs to
task ``task_of_row[i]`` and its other labels are NaN (the masked format of
:func:`~metalearn.identifiability.multitask.fit_multitask`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from probrec.checks import check_choice, check_positive_int, check_real
from probrec.seeding import SeedLike, numpy_rng

__all__ = ["SyntheticTasks", "make_synthetic_tasks", "mixing_function"]


@dataclass
class SyntheticTasks:
    """A sampled multi-task problem.

    Attributes:
        x: ``[N, D]`` observations (``N = n_tasks * n_per_task``).
        y: ``[N, T]`` labels; ``y[i, t]`` is NaN unless row ``i`` belongs to task ``t``.
        z: ``[N, d]`` true latents.
        task_of_row: ``[N]`` task index of each row.
        causal: ``[T, d]`` bool causal indicators.
        weights: ``[T, d]`` label weights ``w_t`` (0 on spurious latents).
        gamma: ``[T, d]`` spurious coefficients (0 on causal latents).
        mixing: ``"linear"`` or ``"nonlinear"``.
    """

    x: np.ndarray
    y: np.ndarray
    z: np.ndarray
    task_of_row: np.ndarray
    causal: np.ndarray
    weights: np.ndarray
    gamma: np.ndarray
    mixing: str

    def subset(self, rows: np.ndarray) -> SyntheticTasks:
        """The same tasks restricted to ``rows`` (indices or a bool mask over ``N``)."""
        rows = np.asarray(rows)
        return SyntheticTasks(
            self.x[rows],
            self.y[rows],
            self.z[rows],
            self.task_of_row[rows],
            self.causal,
            self.weights,
            self.gamma,
            self.mixing,
        )

    def split(self, n_test_per_task: int) -> tuple[SyntheticTasks, SyntheticTasks]:
        """``(train, test)``: the last ``n_test_per_task`` rows of every task are the test set."""
        task = self.task_of_row
        n_per_task = np.bincount(task, minlength=len(self.causal))
        if n_per_task.min() < 2:
            raise ValueError(f"every task needs two rows to split; counts {n_per_task.tolist()}")
        if not 0 < n_test_per_task < n_per_task.min():
            raise ValueError(
                f"n_test_per_task must be in [1, {n_per_task.min() - 1}], got {n_test_per_task}"
            )
        # each row's position among its task's rows, in row order (the rows of a task need
        # not be contiguous, e.g. after subset with a permutation)
        order = np.argsort(task, kind="stable")
        rank = np.empty(len(task), dtype=np.int64)
        rank[order] = np.arange(len(task)) - np.repeat(
            np.cumsum(n_per_task) - n_per_task, n_per_task
        )
        test = rank >= n_per_task[task] - n_test_per_task
        return self.subset(~test), self.subset(test)

    def labels(self) -> np.ndarray:
        """``[N]`` the label of each row in its own task."""
        return self.y[np.arange(len(self.y)), self.task_of_row]


def mixing_function(
    latent_dim: int, obs_dim: int, kind: str, seed: SeedLike = None, *, n_layers: int = 2
):
    """A random injective map ``R^d -> R^D`` (``D >= d``).

    ``"linear"``: ``x = z M^T`` with Gaussian ``M [D, d]`` (full column rank almost surely).
    ``"nonlinear"``: ``n_layers`` blocks ``leaky_relu(W h + c)`` (slope 0.2, ``c ~ N(0, 0.25)``)
    with the first ``W`` of shape ``[D, d]`` and the others square and well conditioned
    (orthogonal times a diagonal in [0.5, 1.5]); injective because every block is.

    Returns:
        A function mapping ``[n, d]`` arrays to ``[n, D]`` arrays.
    """
    check_positive_int(latent_dim, "latent_dim")
    check_positive_int(obs_dim, "obs_dim")
    check_choice(kind, "mixing", ("linear", "nonlinear"))
    check_positive_int(n_layers, "n_layers")  # 0 or -3 built one layer
    if obs_dim < latent_dim:
        raise ValueError(f"obs_dim must be >= latent_dim = {latent_dim}, got {obs_dim}")
    rng = numpy_rng(seed)
    first = rng.standard_normal((obs_dim, latent_dim)) / np.sqrt(latent_dim)
    if kind == "linear":
        return lambda z: z @ first.T
    mats = [first]
    for _ in range(n_layers - 1):
        q, _ = np.linalg.qr(rng.standard_normal((obs_dim, obs_dim)))
        mats.append(q * rng.uniform(0.5, 1.5, obs_dim))
    biases = [0.5 * rng.standard_normal(obs_dim) for _ in mats]

    def g(z: np.ndarray) -> np.ndarray:
        h = z
        for m, c in zip(mats, biases):
            h = h @ m.T + c
            h = np.where(h > 0, h, 0.2 * h)
        return h

    return g


def make_synthetic_tasks(
    n_tasks: int = 50,
    n_per_task: int = 200,
    latent_dim: int = 5,
    obs_dim: int = 10,
    *,
    mixing: str = "linear",
    causal_prob: float = 0.5,
    label_noise: float = 0.1,
    sigma_s: float = 0.1,
    gamma_range: tuple[float, float] = (0.5, 1.5),
    seed: SeedLike = None,
    mixing_seed: SeedLike | None = None,
) -> SyntheticTasks:
    """Samples a multi-task regression problem with known latents (see the module docstring).

    Args:
        n_tasks: ``T``.
        n_per_task: rows per task.
        latent_dim: ``d``.
        obs_dim: ``D >= d``.
        mixing: ``"linear"`` or ``"nonlinear"``.
        causal_prob: probability that a latent is causal for a task (each task gets at least
            one causal and, for ``d > 1``, at least one spurious latent).
        label_noise: standard deviation of ``e``.
        sigma_s: standard deviation of spurious latents given ``y``.
        gamma_range: ``|gamma|`` is uniform on this range, with a random sign.
        seed: seed of the tasks and rows.
        mixing_seed: seed of the mixing (default: drawn from ``seed``); give the same value to
            draw new rows / tasks under the same mixing.

    Returns:
        A :class:`SyntheticTasks`.
    """
    t = check_positive_int(n_tasks, "n_tasks")
    n = check_positive_int(n_per_task, "n_per_task", minimum=2)
    d = check_positive_int(latent_dim, "latent_dim")
    check_positive_int(obs_dim, "obs_dim")
    check_choice(mixing, "mixing", ("linear", "nonlinear"))
    if not 0.0 < check_real(causal_prob, "causal_prob") < 1.0:
        raise ValueError(f"causal_prob must be in (0, 1), got {causal_prob}")
    label_noise = check_real(label_noise, "label_noise")
    sigma_s = check_real(sigma_s, "sigma_s", strict=True)
    if isinstance(gamma_range, (str, bytes)) or np.shape(gamma_range) != (2,):
        raise ValueError(f"gamma_range must be a pair (low, high), got {gamma_range!r}")
    lo, hi = (check_real(v, "gamma_range") for v in gamma_range)
    if not lo <= hi:
        raise ValueError(f"gamma_range must satisfy 0 <= low <= high, got {gamma_range}")
    rng = numpy_rng(seed)
    g = mixing_function(d, obs_dim, mixing, rng if mixing_seed is None else mixing_seed)

    causal = rng.random((t, d)) < causal_prob
    for k in range(t):  # at least one causal and one spurious latent per task
        if not causal[k].any():
            causal[k, rng.integers(d)] = True
        if d > 1 and causal[k].all():
            causal[k, rng.integers(d)] = False
    weights = rng.standard_normal((t, d)) * causal
    weights /= np.sqrt((weights**2).sum(1, keepdims=True))  # unit-norm signal per task
    gamma = rng.uniform(lo, hi, (t, d)) * rng.choice([-1.0, 1.0], (t, d)) * ~causal

    task_of_row = np.repeat(np.arange(t), n)
    c = causal[task_of_row]
    z = rng.standard_normal((t * n, d))
    y_own = (z * weights[task_of_row]).sum(1) + label_noise * rng.standard_normal(t * n)
    z = np.where(c, z, gamma[task_of_row] * y_own[:, None] + sigma_s * z)
    y = np.full((t * n, t), np.nan)
    y[np.arange(t * n), task_of_row] = y_own
    return SyntheticTasks(g(z), y, z, task_of_row, causal, weights, gamma, mixing)
