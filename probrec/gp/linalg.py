"""Batched Cholesky with jitter escalation and a float64 retry.

Kernel matrices of deep features can be numerically singular (duplicate molecules, collapsed
features, tiny noise). :func:`robust_cholesky` adds growing diagonal jitter to the failing
batch members only, retries in float64 when float32 is not enough, and raises
:class:`NotPositiveDefiniteError` naming the failing batch indices otherwise: it never
returns a factor with NaN.
"""

from __future__ import annotations

import torch

JITTERS = (0.0, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2)


class NotPositiveDefiniteError(RuntimeError):
    """A kernel matrix stayed non positive-definite after jitter and a float64 retry."""


def robust_cholesky(k: torch.Tensor, *, jitters: tuple[float, ...] = JITTERS) -> torch.Tensor:
    """Lower Cholesky factor of a batch of symmetric matrices ``[..., n, n]``.

    Jitter is relative to the mean diagonal of each matrix and added only to batch members
    whose factorisation failed. If float32 fails with the largest jitter, the computation is
    repeated in float64 and the factor is returned in float64 (callers keep working in the
    factor's dtype and cast results back).

    Raises:
        ValueError: ``k`` contains NaN or inf.
        NotPositiveDefiniteError: the matrix is not positive definite even in float64.
    """
    if not bool(torch.isfinite(k).all()):
        raise ValueError("kernel matrix contains NaN/inf (check the features and hyperparameters)")
    dtypes = [k.dtype] if k.dtype == torch.float64 else [k.dtype, torch.float64]
    for dtype in dtypes:
        kk = k.to(dtype)
        n = kk.shape[-1]
        eye = torch.eye(n, dtype=dtype, device=kk.device)
        scale = kk.diagonal(dim1=-2, dim2=-1).mean(-1).abs().clamp_min(1e-12)[..., None, None]
        chol, info = torch.linalg.cholesky_ex(kk)
        for jitter in jitters[1:]:
            failed = info > 0
            if not bool(failed.any()):
                break
            added = jitter * scale * eye * failed[..., None, None].to(dtype)
            chol_j, info_j = torch.linalg.cholesky_ex(kk + added)
            chol = torch.where(failed[..., None, None], chol_j, chol)
            info = torch.where(failed, info_j, info)
        if not bool((info > 0).any()):
            return chol
    bad = torch.nonzero(info > 0).flatten().tolist()
    raise NotPositiveDefiniteError(
        f"kernel matrix not positive definite for batch index(es) {bad[:10]} even with jitter "
        f"{jitters[-1]:g} x mean diagonal in float64; the features may be degenerate"
    )
