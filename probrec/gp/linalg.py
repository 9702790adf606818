"""Batched Cholesky with jitter escalation and a float64 retry.

Kernel matrices of deep features can be numerically singular (duplicate molecules, collapsed
features, tiny noise). :func:`robust_cholesky` adds growing diagonal jitter to the failing
batch members only, retries in float64 when float32 is not enough, and raises
:class:`NotPositiveDefiniteError` naming the failing batch indices otherwise: it never
returns a factor with NaN.
"""

from __future__ import annotations

import torch
from torch.autograd.function import once_differentiable

from probrec.checks import all_finite

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
    if not all_finite(k):
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
    where = (
        f" for batch index(es) {torch.nonzero(info > 0).flatten().tolist()[:10]}"
        if info.dim()
        else ""
    )
    raise NotPositiveDefiniteError(
        f"kernel matrix not positive definite{where} even with jitter "
        f"{jitters[-1]:g} x mean diagonal in float64; the features may be degenerate"
    )


class _GaussianNLL(torch.autograd.Function):
    """``0.5 r^T C^-1 r + 0.5 log det C`` per batch member, with a closed-form backward."""

    @staticmethod
    def forward(ctx, cov: torch.Tensor, r: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        chol = robust_cholesky(cov)
        alpha = torch.cholesky_solve(r.to(chol.dtype)[..., None], chol)[..., 0]
        logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        ctx.save_for_backward(chol, alpha)
        ctx.dtypes = (cov.dtype, r.dtype)
        return 0.5 * (r.to(chol.dtype) * alpha).sum(-1) + 0.5 * logdet

    @staticmethod
    @once_differentiable
    def backward(ctx, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:  # type: ignore[override]
        chol, alpha = ctx.saved_tensors
        g = grad.to(chol.dtype)
        # d/dC = (C^-1 - alpha alpha^T) / 2 and d/dr = alpha: one cholesky_inverse instead of
        # back-propagating through the factorisation and the triangular solves
        grad_cov = torch.cholesky_inverse(chol)
        grad_cov.sub_(alpha[..., :, None] * alpha[..., None, :]).mul_(0.5 * g[..., None, None])
        grad_r = g[..., None] * alpha
        return grad_cov.to(ctx.dtypes[0]), grad_r.to(ctx.dtypes[1])


def gaussian_nll(cov: torch.Tensor, r: torch.Tensor) -> torch.Tensor:
    """Negative log density of ``r`` under ``N(0, cov)`` without the ``n/2 log 2 pi`` term.

    ``0.5 r^T C^-1 r + 0.5 log det C`` per batch member, factorised by :func:`robust_cholesky`.
    The backward pass is the closed form ``dL/dC = (C^-1 - alpha alpha^T) / 2``,
    ``dL/dr = alpha = C^-1 r`` (Rasmussen & Williams, 2006, eq. 5.9), which costs one
    ``cholesky_inverse`` instead of differentiating through the factorisation. It is
    differentiable once (no double backward).

    Args:
        cov: ``[..., n, n]`` symmetric positive-definite covariances.
        r: ``[..., n]`` residuals.

    Returns:
        ``[...]`` values in the factor's dtype (float64 when float32 needed the retry).
    """
    if cov.shape[-1] != cov.shape[-2] or cov.shape[:-1] != r.shape:
        raise ValueError(
            f"cov must be [..., n, n] and r [..., n] with the same leading shape, got "
            f"{tuple(cov.shape)} and {tuple(r.shape)}"
        )
    return _GaussianNLL.apply(cov, r)
