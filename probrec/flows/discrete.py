"""Probability mass of an interval under a continuous 1-D distribution, computed stably.

An ordinal label ``k`` with cut points ``c_{k-1} < c_k`` has mass ``F(c_k) - F(c_{k-1})``
under a distribution with CDF ``F``. Every ordinal model of :mod:`probrec.flows` (the
conditional integer flow, the discretised Gaussian head, the cumulative-link head) reduces to
this after mapping the cut points through its (conditional, monotone) transform into the base
distribution's coordinates. Taking the outermost cut points as ``-inf`` / ``+inf`` folds the
tails into the end labels, so the masses telescope to exactly one.

The log mass is computed in whichever tail keeps it accurate:
``log(F(b) - F(a)) = log F(b) + log(1 - exp(log F(a) - log F(b)))`` when the interval lies
left of the median, and the same with the survival function ``1 - F`` (by symmetry,
``F(-x)`` for the symmetric bases here) otherwise, so that neither ``1 - 1e-9`` minus ``1``
nor ``log(0)`` ever occurs for finite, distinct ``a < b``.
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.nn import functional as F

from probrec.checks import check_choice

__all__ = ["BASES", "base_cdf", "base_icdf", "base_log_cdf", "interval_log_mass", "log1mexp"]

BASES = ("logistic", "normal")


def log1mexp(x: Tensor) -> Tensor:
    """``log(1 - exp(-x))`` for ``x >= 0``, accurate for small and large ``x``.

    (Maechler, "Accurately computing log(1 - exp(-|a|))", 2012.)
    """
    return torch.where(x < math.log(2.0), torch.log(-torch.expm1(-x)), torch.log1p(-torch.exp(-x)))


def base_log_cdf(z: Tensor, base: str) -> Tensor:
    """``log F(z)`` of the standard logistic or standard normal distribution."""
    if base == "logistic":
        return F.logsigmoid(z)
    return torch.special.log_ndtr(z)


def base_cdf(z: Tensor, base: str) -> Tensor:
    """``F(z)`` of the standard logistic or standard normal distribution."""
    if base == "logistic":
        return torch.sigmoid(z)
    return torch.special.ndtr(z)


def base_icdf(u: Tensor, base: str) -> Tensor:
    """``F^{-1}(u)`` for ``u`` in ``(0, 1)``."""
    if base == "logistic":
        return torch.logit(u)
    return torch.special.ndtri(u)


def interval_log_mass(lower: Tensor, upper: Tensor, base: str = "logistic") -> Tensor:
    """``log(F(upper) - F(lower))`` for a standard symmetric base distribution.

    Args:
        lower: ``[...]`` lower ends (may be ``-inf``).
        upper: ``[...]`` upper ends (may be ``+inf``), ``upper > lower`` elementwise.
        base: ``"logistic"`` or ``"normal"``.

    Returns:
        ``[...]`` log masses; ``0`` for ``(-inf, inf)``.
    """
    check_choice(base, "base", BASES)
    # work in the left tail: reflect intervals centred right of 0 (F(-x) = 1 - F(x));
    # (-inf, inf) has a NaN centre, compares False and stays put
    flip = (lower + upper) > 0
    a = torch.where(flip, -upper, lower)
    b = torch.where(flip, -lower, upper)
    # infinite ends are evaluated at a harmless finite point and masked, so that no
    # 0 * inf appears in the backward pass (d log Phi(z) / dz -> inf as z -> -inf)
    a_inf, b_inf = torch.isneginf(a), torch.isposinf(b)
    la = base_log_cdf(torch.where(a_inf, torch.zeros_like(a), a), base)
    lb = torch.where(
        b_inf, torch.zeros_like(b), base_log_cdf(torch.where(b_inf, torch.zeros_like(b), b), base)
    )
    gap = torch.where(
        a_inf, torch.full_like(lb, math.inf), (lb - la).clamp_min(torch.finfo(lb.dtype).tiny)
    )  # > 0 when b > a
    return lb + log1mexp(gap)
