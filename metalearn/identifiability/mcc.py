"""Mean correlation coefficients between true and recovered latents.

Strong MCC measures identifiability up to permutation and scaling (and sign): the absolute
Pearson correlations between every true and every recovered coordinate, matched one-to-one by
the Hungarian algorithm, averaged over the matched pairs. Weak MCC measures identifiability up
to an invertible linear map: canonical correlation analysis (CCA) first aligns the two sets
linearly, then the canonical correlations are averaged (Chen, Horwood, Heo & Hernandez-Lobato,
"Leveraging Task Structures for Improved Identifiability in Neural Network Representations",
TMLR 2024; Khemakhem et al., AISTATS 2020).
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

from probrec.checks import ArrayLike, check_positive_int, host_array

__all__ = ["correlation_matrix", "strong_mcc", "weak_mcc"]


def _as_2d(value: ArrayLike, name: str) -> np.ndarray:
    try:
        arr = host_array(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"{name} must be a numeric [n, d] array") from exc
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d], got {arr.shape}")
    if arr.shape[0] < 3 or arr.shape[1] < 1:
        raise ValueError(f"{name} needs at least 3 rows and 1 column, got {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _pair(z_true: ArrayLike, z_hat: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    a, b = _as_2d(z_true, "z_true"), _as_2d(z_hat, "z_hat")
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"z_true has {a.shape[0]} rows but z_hat has {b.shape[0]}")
    return a, b


def correlation_matrix(z_true: ArrayLike, z_hat: ArrayLike) -> np.ndarray:
    """Absolute Pearson correlations ``|corr(z_true[:, i], z_hat[:, j])|``.

    Args:
        z_true: ``[n, d]`` true latents.
        z_hat: ``[n, k]`` recovered latents.

    Returns:
        ``[d, k]`` array in ``[0, 1]`` (a constant column correlates 0 with everything).
    """
    a, b = _pair(z_true, z_hat)
    a, const_a = _unit_spread(a)
    b, const_b = _unit_spread(b)
    na, nb = np.linalg.norm(a, axis=0), np.linalg.norm(b, axis=0)
    c = (a.T @ b) / np.maximum(np.outer(na, nb), 1e-300)
    c[const_a, :] = 0.0
    c[:, const_b] = 0.0
    return np.clip(np.abs(c), 0.0, 1.0)


def _unit_spread(a: np.ndarray, rel_tol: float = 1e-12) -> tuple[np.ndarray, np.ndarray]:
    """Centred columns scaled to a largest deviation of 1 (no overflow or underflow in their
    norms), and which columns are constant: spread within ``rel_tol`` of their magnitude
    (centring a constant column such as 0.1 leaves rounding residue, not an exact 0)."""
    level = np.abs(a).max(0)
    c = a - a.mean(0)
    spread = np.abs(c).max(0)
    const = spread <= rel_tol * level
    return c / np.where(const, 1.0, spread), const


def strong_mcc(z_true: ArrayLike, z_hat: ArrayLike, *, return_matching: bool = False):
    """Strong MCC: mean absolute correlation after the best one-to-one matching.

    Invariant to permutations, rescalings, sign flips and shifts of the recovered coordinates;
    equal to 1 exactly when each true latent is an affine function of its own recovered one.

    Args:
        z_true: ``[n, d]`` true latents.
        z_hat: ``[n, k]`` recovered latents (``k >= d``: the best ``d`` are matched;
            ``k < d``: only ``k`` true latents can be matched and the mean is over ``d``, so
            missing latents count as 0).
        return_matching: also return ``(rows, cols)`` of the matching.

    Returns:
        The MCC in ``[0, 1]``, or ``(mcc, (rows, cols))``.
    """
    c = correlation_matrix(z_true, z_hat)
    rows, cols = linear_sum_assignment(-c)
    mcc = float(c[rows, cols].sum() / c.shape[0])
    return (mcc, (rows, cols)) if return_matching else mcc


def _whitener(a: np.ndarray, level: float, rel_tol: float = 1e-10) -> np.ndarray:
    """``W [d, r]`` with ``(a W)^T (a W) = I`` for centred ``a`` (rank-deficient directions
    dropped: singular values within ``rel_tol`` of the largest or of ``level``, the size of the
    data before centring, whose rounding residue a constant column leaves)."""
    _, sv, vt = np.linalg.svd(a, full_matrices=False)
    floor = rel_tol * max(sv[0] if sv.size else 0.0, level)
    keep = sv > floor if floor > 0 else np.zeros_like(sv, dtype=bool)
    return vt[keep].T / sv[keep]


def weak_mcc(z_true: ArrayLike, z_hat: ArrayLike, *, n_fit: int | None = None) -> float:
    """Weak MCC: mean canonical correlation between ``z_true`` and ``z_hat`` (linear alignment).

    Canonical correlation analysis, solved exactly (SVD of the whitened cross-covariance),
    finds ``min(d, k)`` pairs of linear projections with maximal correlation; the weak MCC is
    the sum of the correlations of the projected pairs divided by the ``d`` true dimensions.
    It equals 1 when ``z_hat`` is an invertible affine map of ``z_true``.

    Args:
        z_true: ``[n, d]`` true latents.
        z_hat: ``[n, k]`` recovered latents.
        n_fit: fit the projections on the first ``n_fit`` rows and score the rest (held-out
            score); ``None`` fits and scores on all rows.

    Returns:
        The weak MCC in ``[0, 1]``.
    """
    a, b = _pair(z_true, z_hat)
    n = a.shape[0]
    if n_fit is not None and not 3 <= check_positive_int(n_fit, "n_fit") <= n - 3:
        raise ValueError(f"n_fit must be in [3, n - 3] = [3, {n - 3}], got {n_fit}")
    fit = slice(0, n) if n_fit is None else slice(0, n_fit)
    test = slice(0, n) if n_fit is None else slice(n_fit, n)
    mu_a, mu_b = a[fit].mean(0), b[fit].mean(0)
    wa = _whitener(a[fit] - mu_a, float(np.linalg.norm(a[fit])))
    wb = _whitener(b[fit] - mu_b, float(np.linalg.norm(b[fit])))
    if wa.shape[1] == 0 or wb.shape[1] == 0:  # a constant side: no canonical pair
        return 0.0
    u, _, vt = np.linalg.svd(((a[fit] - mu_a) @ wa).T @ ((b[fit] - mu_b) @ wb))
    k = min(u.shape[1], vt.shape[0])
    pa = (a[test] - mu_a) @ wa @ u[:, :k]
    pb = (b[test] - mu_b) @ wb @ vt[:k].T
    r = np.diag(correlation_matrix(pa, pb))
    return float(r.sum() / a.shape[1])
