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
    the mean of ``x1`` first, which keeps cancellation error small, as gpytorch does. The
    backward pass is written out (:class:`_SquaredDistance`): one batched product per input
    instead of autograd's chain through the expansion, and twice differentiable.
    """
    return _SquaredDistance.apply(x1, None if x2 is x1 else x2)


def _centred(x1: torch.Tensor, x2: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    mu = x1.mean(dim=-2, keepdim=True)
    a = x1 - mu
    return a, a if x2 is None else x2 - mu


class _SquaredDistance(torch.autograd.Function):
    """``|x1_i - x2_j|^2`` with the gradient ``2 sum_j G_ij (a_i - b_j)`` written out.

    ``x2=None`` means ``x2 is x1`` (the gradient then combines both roles: ``G + G^T``). The
    clamp at zero is treated as the identity in the backward pass; it only acts on
    coincident points, where ``a_i - b_j = 0`` (up to rounding) makes the term vanish anyway.
    The backward recomputes the centred inputs from the saved ones with differentiable
    operations, so double backward (``create_graph=True``) is exact.
    """

    @staticmethod
    def forward(ctx, x1: torch.Tensor, x2: torch.Tensor | None) -> torch.Tensor:
        a, b = _centred(x1, x2)
        a2 = a.pow(2).sum(-1, keepdim=True)
        b2 = a2 if x2 is None else b.pow(2).sum(-1, keepdim=True)
        # in-place accumulation: one [.., n, m] buffer instead of four temporaries
        sq = (a @ b.transpose(-1, -2)).mul_(-2.0).add_(a2).add_(b2.transpose(-1, -2))
        ctx.save_for_backward(x1, x2)
        return sq.clamp_min_(0.0)

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        x1, x2 = ctx.saved_tensors
        a, b = _centred(x1, x2)
        if x2 is None:
            s = g + g.transpose(-1, -2)
            return 2.0 * (s.sum(-1, keepdim=True) * a - s @ a), None
        g1 = g2 = None
        if ctx.needs_input_grad[0]:
            g1 = 2.0 * (g.sum(-1, keepdim=True) * a - g @ b)
        if ctx.needs_input_grad[1]:
            g2 = 2.0 * (g.sum(-2).unsqueeze(-1) * b - g.transpose(-1, -2) @ a)
        return g1, g2


def matern52_from_sqdist(sq: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matern-5/2 correlation ``(1 + a + a^2 / 3) exp(-a)``, ``a = sqrt(5) r / lengthscale``.

    Takes squared distances. Fused forward and backward (:class:`_Matern52`) with
    ``dC / d(r^2) = -5 (1 + a) e^-a / (6 l^2)`` and ``dC / dl = a^2 (1 + a) e^-a / (3 l)``,
    both finite at ``r = 0``; twice differentiable.
    """
    return _Matern52.apply(sq, lengthscale)


def matern_a(sq: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """``a = sqrt(5 r^2) / l`` from squared distances, with a zero (not infinite) derivative
    below ``r^2 = 1e-20``."""
    return torch.sqrt(sq.clamp_min(_SQ_EPS)) * (sq > _SQ_EPS) * (math.sqrt(5.0) / lengthscale)


class _Matern52(torch.autograd.Function):
    """Matern-5/2 correlation from squared distances, with its derivatives written out.

    Forward and first-order backward reuse ``a`` and ``e^-a`` (a handful of passes over the
    ``[..., n, m]`` matrix instead of autograd's two dozen). Under ``create_graph=True`` the
    backward recomputes them from the saved inputs with differentiable operations, so second
    derivatives (Hessian-vector products of the inner loop, unrolled optimisers) are exact.
    """

    @staticmethod
    def forward(ctx, sq: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
        a = sq.clamp_min(0.0).sqrt_()
        scale = math.sqrt(5.0) / lengthscale
        a = a.mul_(scale) if torch.broadcast_shapes(a.shape, scale.shape) == a.shape else a * scale
        e = a.neg().exp_()
        c = (a + 1.0).addcmul_(a, a, value=1.0 / 3.0).mul_(e)
        ctx.save_for_backward(sq, lengthscale, a, e)
        return c

    @staticmethod
    def backward(ctx, g: torch.Tensor) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        sq, ls, a, e = ctx.saved_tensors
        if torch.is_grad_enabled():  # double backward: rebuild a, e on the graph
            a = matern_a(sq, ls)
            e = torch.exp(-a)
            gt = g * (a + 1.0) * e
        else:
            gt = torch.addcmul(e, a, e).mul_(g)  # g (1 + a) e^-a
        g_sq = g_ls = None
        if ctx.needs_input_grad[0]:
            g_sq = gt * (-5.0 / 6.0 / ls.pow(2))
            g_sq = g_sq.sum_to_size(sq.shape) if g_sq.shape != sq.shape else g_sq
        if ctx.needs_input_grad[1]:
            g_ls = (gt * a * a / (3.0 * ls)).sum_to_size(ls.shape)
        return g_sq, g_ls


def rbf_from_sqdist(sq: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Squared-exponential correlation ``exp(-r^2 / (2 lengthscale^2))`` from ``r^2``."""
    return torch.exp(-0.5 * sq / lengthscale.pow(2))


def matern52(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """Matern-5/2 correlation between point sets (see :func:`matern52_from_sqdist`)."""
    return matern52_from_sqdist(squared_distance(x1, x2), lengthscale)


def rbf(x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor) -> torch.Tensor:
    """RBF correlation between point sets (see :func:`rbf_from_sqdist`)."""
    return rbf_from_sqdist(squared_distance(x1, x2), lengthscale)


def _check_counts(x: torch.Tensor) -> None:
    """Refuses inputs the Tanimoto kernel is not defined on, saying what to do instead.

    Raises:
        ValueError: ``x`` has negative or non-finite entries (NaN would give similarity 1).
    """
    if bool(((x >= 0) & torch.isfinite(x)).all()):
        return
    n_neg = int((x < 0).sum())
    n_bad = int((~torch.isfinite(x)).sum())
    raise ValueError(
        "the tanimoto kernel needs finite, non-negative inputs (fingerprint counts), got "
        f"{n_neg} negative and {n_bad} non-finite entries: give it only the fingerprint-count "
        "columns (e.g. GPST(columns=(start, stop)) when standardised descriptors follow the "
        "counts), or use kernel='matern52' or 'rbf' for real-valued features (such as the "
        "output of an encoder's linear layer)"
    )


def tanimoto(
    x1: torch.Tensor, x2: torch.Tensor, lengthscale: torch.Tensor | None = None
) -> torch.Tensor:
    """MinMax (Tanimoto) similarity ``sum_i min(x_i, y_i) / sum_i max(x_i, y_i)``.

    For non-negative inputs (fingerprint counts); equals the Jaccard index on binary vectors.
    ``lengthscale`` is ignored (the kernel has none); two all-zero rows get similarity 1.

    Raises:
        ValueError: an input has negative or non-finite entries.
    """
    for x in (x1, x2):
        _check_counts(x)
    s1 = x1.sum(-1, keepdim=True)
    s2 = x2.sum(-1, keepdim=True).transpose(-1, -2)
    l1 = torch.cdist(x1, x2, p=1.0)
    smin = 0.5 * (s1 + s2 - l1)
    smax = s1 + s2 - smin
    return torch.where(smax > 0, smin / smax.clamp_min(1e-12), torch.ones_like(smax))


def tanimoto_diag(x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """Row-by-row MinMax similarity ``[..., n]`` of ``x1 [..., n, d]`` and ``x2 [..., n, d]``.

    The diagonal of :func:`tanimoto` without the ``[n, n]`` matrix (1 where ``x1 is x2``).

    Raises:
        ValueError: an input has negative or non-finite entries.
    """
    for x in (x1, x2):
        _check_counts(x)
    smin = torch.minimum(x1, x2).sum(-1)
    smax = torch.maximum(x1, x2).sum(-1)
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
        if diag:  # k(x1, x2).diagonal() too: the pairs (x1_i, x2_i), not always 1
            return tanimoto_diag(x1, x2)
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
