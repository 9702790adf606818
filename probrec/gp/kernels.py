"""Covariance functions for the GP heads, as batched pure functions and gpytorch modules.

The pure functions take hyperparameters as tensors, so the batched inner loop can fit them by
Newton steps and the implicit hypergradient can differentiate through them; their values equal
gpytorch's ``MaternKernel(nu=2.5)`` / ``RBFKernel`` (checked in the tests). The Tanimoto
(MinMax) kernel on non-negative count vectors, used by the GP-ST baseline of FS-Mol
(Stanley et al., NeurIPS 2021; Ralaivola et al., Neural Networks 2005), is also given as a
gpytorch :class:`TanimotoKernel` for use in gpytorch / BoTorch models.

Shapes: ``x1`` is ``[..., n, d]``, ``x2`` is ``[..., m, d]``, ``lengthscale`` broadcasts
against ``[..., 1, 1]``; results are ``[..., n, m]``.
"""

from __future__ import annotations

import math

import gpytorch
import torch

KERNELS = ("matern52", "rbf", "tanimoto")
_SQ_EPS = 1e-20


def squared_distance(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Squared Euclidean distances ``[..., n, m]``, centred for accuracy and clamped at 0.

    Uses the inner-product expansion (memory ``O(nm)``, not ``O(nmd)``); inputs are centred on
    the mean of ``x1`` first, which keeps cancellation error small, as gpytorch does.
    """
    mu = x1.mean(dim=-2, keepdim=True)
    same = x2 is x1
    a = x1 - mu
    b = a if same else x2 - mu
    a2 = a.pow(2).sum(-1, keepdim=True)
    b2 = a2 if same else b.pow(2).sum(-1, keepdim=True)
    # in-place accumulation: one [.., n, m] buffer instead of four temporaries
    sq = (a @ b.transpose(-1, -2)).mul_(-2.0).add_(a2).add_(b2.transpose(-1, -2))
    return sq.clamp_min(0.0)


def matern52_from_sqdist(sq: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matern-5/2 correlation ``(1 + a + a^2 / 3) exp(-a)``, ``a = sqrt(5) r / lengthscale``.

    Takes squared distances; the gradient at ``r = 0`` is its limit, zero (no NaN on the
    diagonal).
    """
    r = torch.sqrt(sq.clamp_min(_SQ_EPS)) * (sq > _SQ_EPS)
    a = math.sqrt(5.0) * r / lengthscale
    return (1.0 + a + a.pow(2) / 3.0) * torch.exp(-a)


def rbf_from_sqdist(sq: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Squared-exponential correlation ``exp(-r^2 / (2 lengthscale^2))`` from ``r^2``."""
    return torch.exp(-0.5 * sq / lengthscale.pow(2))


def matern52(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matern-5/2 correlation between point sets (see :func:`matern52_from_sqdist`)."""
    return matern52_from_sqdist(squared_distance(x1, x2), lengthscale)


def rbf(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """RBF correlation between point sets (see :func:`rbf_from_sqdist`)."""
    return rbf_from_sqdist(squared_distance(x1, x2), lengthscale)


def tanimoto(
    x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor | None = None
) -> torch.Tensor:
    """MinMax (Tanimoto) similarity ``sum_i min(x_i, y_i) / sum_i max(x_i, y_i)``.

    For non-negative inputs (fingerprint counts); equals the Jaccard index on binary vectors.
    ``lengthscale`` is ignored (the kernel has none); two all-zero rows get similarity 1.

    Raises:
        ValueError: an input has negative entries.
    """
    if bool((x1 < 0).any()) or bool((x2 < 0).any()):
        raise ValueError("the tanimoto kernel needs non-negative inputs (fingerprint counts)")
    s1 = x1.sum(-1, keepdim=True)
    s2 = x2.sum(-1, keepdim=True).transpose(-1, -2)
    l1 = torch.cdist(x1, x2, p=1.0)
    smin = 0.5 * (s1 + s2 - l1)
    smax = s1 + s2 - smin
    return torch.where(smax > 0, smin / smax.clamp_min(1e-12), torch.ones_like(smax))


def correlation(
    name: str, x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor | None
) -> torch.Tensor:
    """Dispatches to :func:`matern52`, :func:`rbf` or :func:`tanimoto` by ``name``."""
    if name == "matern52":
        return matern52(x1, x2, lengthscale)
    if name == "rbf":
        return rbf(x1, x2, lengthscale)
    if name == "tanimoto":
        return tanimoto(x1, x2)
    raise ValueError(f"unknown kernel {name!r}; expected one of {list(KERNELS)}")


def has_lengthscale(name: str) -> bool:
    """Whether the named kernel has a lengthscale hyperparameter."""
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; expected one of {list(KERNELS)}")
    return name != "tanimoto"


class TanimotoKernel(gpytorch.kernels.Kernel):
    """gpytorch kernel computing :func:`tanimoto` (wrap in ``ScaleKernel`` for an outputscale).

    Example:
        >>> k = gpytorch.kernels.ScaleKernel(TanimotoKernel())
        >>> x = torch.tensor([[1.0, 0.0, 2.0], [1.0, 1.0, 0.0]])
        >>> k(x).to_dense().shape
        torch.Size([2, 2])
    """

    has_lengthscale = False

    def forward(
        self, x1: torch.Tensor, x2: torch.Tensor, diag: bool = False, **params
    ) -> torch.Tensor:
        if diag:
            return torch.ones(x1.shape[:-1], dtype=x1.dtype, device=x1.device)
        return tanimoto(x1, x2)


def gpytorch_kernel(name: str, batch_shape: torch.Size | None = None) -> gpytorch.kernels.Kernel:
    """The gpytorch equivalent of a named kernel, with an outputscale (``ScaleKernel``)."""
    batch_shape = torch.Size() if batch_shape is None else torch.Size(batch_shape)
    if name == "matern52":
        base = gpytorch.kernels.MaternKernel(nu=2.5, batch_shape=batch_shape)
    elif name == "rbf":
        base = gpytorch.kernels.RBFKernel(batch_shape=batch_shape)
    elif name == "tanimoto":
        base = TanimotoKernel(batch_shape=batch_shape)
    else:
        raise ValueError(f"unknown kernel {name!r}; expected one of {list(KERNELS)}")
    return gpytorch.kernels.ScaleKernel(base, batch_shape=batch_shape)
