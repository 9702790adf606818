"""Gaussian mixtures with diagonal covariances, and the MoG-40 benchmark of the DiGS paper.

Log-density and gradient are closed-form and batched as matrix products (two when all components
share one isotropic scale, as in MoG-40), so a step over 10,000 chains costs a few fused kernels:

.. math::
    \\ell_k(x) = \\log w_k - \\tfrac12 \\sum_j P_{kj} (x_j - \\mu_{kj})^2 - \\tfrac12 \\sum_j
    \\log(2\\pi / P_{kj}), \\quad \\log p(x) = \\operatorname{logsumexp}_k \\ell_k(x),
    \\quad \\nabla \\log p(x) = \\sum_k r_k(x) P_k \\odot (\\mu_k - x),

with precisions ``P = 1 / scale**2`` and responsibilities ``r = softmax(l)``.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from probrec.checks import as_float_tensor, check_positive_int, check_seed

from .base import LOG_2PI, Target, _generator

__all__ = ["GaussianMixture", "MoG40", "mog40_means"]


class GaussianMixture(Target):
    """Mixture of Gaussians with diagonal covariances.

    Args:
        means: a ``K x d`` tensor of component means.
        scales: standard deviations: a float, a ``K``-dim tensor (isotropic per component) or a
            ``K x d`` tensor.
        weights: a ``K``-dim tensor of non-negative weights (normalised here); equal if ``None``.
        name: name in reports.

    Example:
        >>> mix = GaussianMixture(torch.tensor([[-2.0], [2.0]]), 0.5)
        >>> mix.log_prob(torch.zeros(3, 1)).shape
        torch.Size([3])
    """

    analytic_grad = True
    log_normalizer = 0.0
    # MALA on MoG-40, 10,000 chains, one CPU thread: 0.53 us per row eager, 0.28 compiled, and
    # 9 s to compile with a warm TorchInductor cache (DiGS: 47 s cold): pays from ~36M rows
    cpu_compile_min_row_evals = 100_000_000

    def __init__(
        self,
        means: Tensor,
        scales: float | Tensor = 1.0,
        weights: Tensor | None = None,
        name: str = "gaussian_mixture",
    ) -> None:
        means = as_float_tensor(means, "means", ndim=2)
        k, d = means.shape
        super().__init__(d)
        self.name = name
        if isinstance(scales, (int, float)):
            scales = torch.tensor(float(scales))
        s = as_float_tensor(scales, "scales", dtype=means.dtype, device=means.device)
        if s.dim() == 0:
            s = s.expand(k, d)
        elif s.dim() == 1:
            if s.shape[0] != k:
                raise ValueError(
                    f"scales must have {k} entries (one per component), got {s.shape[0]}"
                )
            s = s[:, None].expand(k, d)
        elif s.shape != (k, d):
            raise ValueError(f"scales must have shape ({k}, {d}), got {tuple(s.shape)}")
        if bool((s <= 0).any()):
            raise ValueError("scales must be positive")
        if weights is None:
            w = torch.full((k,), 1.0 / k, dtype=means.dtype, device=means.device)
        else:
            w = as_float_tensor(weights, "weights", ndim=1, dtype=means.dtype, device=means.device)
            if w.shape[0] != k or bool((w < 0).any()) or float(w.sum()) <= 0:
                raise ValueError(f"weights must be {k} non-negative numbers with a positive sum")
            w = w / w.sum()
        self.register_buffer("means", means.clone())
        self.register_buffer("scales", s.contiguous().clone())
        self.register_buffer("weights", w)
        self._derive()

    def _derive(self) -> None:
        """Constants of the log-density, computed in float64 and kept twice: in float64 (used
        for float64 inputs, so they get float64 accuracy even when the parameters are float32
        numbers) and in the parameters' dtype (used otherwise, no conversion per call)."""
        s, means, w = self.scales, self.means, self.weights
        s64, m64 = s.double(), means.double()
        prec = 1.0 / s64**2
        const = (
            torch.log(w.double())
            - 0.5 * (m64**2 * prec).sum(-1)
            - torch.log(s64).sum(-1)
            - 0.5 * self.dim * LOG_2PI
        )
        for name, val in (("_prec", prec), ("_mean_prec", m64 * prec), ("_const", const)):
            self.register_buffer(name + "64", val.contiguous(), persistent=False)
            self.register_buffer(name, val.to(means.dtype).contiguous(), persistent=False)
        # one shared isotropic scale (MoG-40): the quadratic term ||x||^2 / (2 s^2) is the same
        # for every component, so it leaves the logsumexp and the logits are one matrix product
        self._shared_prec = float(prec[0, 0]) if bool((s == s[0, 0]).all()) else None

    @property
    def n_components(self) -> int:
        return self.means.shape[0]

    def _buf(self, name: str, x: Tensor) -> Tensor:
        b = getattr(self, name + "64") if x.dtype == torch.float64 else getattr(self, name)
        return b.to(dtype=x.dtype, device=x.device)

    def _linear_logits(self, x: Tensor) -> Tensor:
        """``log w_k + log N_k(x)`` without the quadratic term of ``x`` (``n x K``)."""
        return torch.addmm(self._buf("_const", x), x, self._buf("_mean_prec", x).T)

    def _logits(self, x: Tensor) -> Tensor:
        """Per-component log joint ``log w_k + log N_k(x)`` (``n x K``)."""
        quad = (x * x) @ self._buf("_prec", x).T  # n x K
        return self._linear_logits(x) - 0.5 * quad

    def log_prob(self, x: Tensor) -> Tensor:
        p = self._shared_prec
        m, _, tot = _shifted_exp(self._linear_logits(x) if p is not None else self._logits(x))
        lp = (m + torch.log(tot)).squeeze(-1)
        return lp - 0.5 * p * (x * x).sum(-1) if p is not None else lp

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        p = self._shared_prec
        # (a form with the products over the d coordinates written out, faster under
        # torch.compile, was miscompiled by TorchInductor inside the fused MALA transition of
        # torch 2.13 on CPU -- non-finite log-densities --, so the BLAS form is used everywhere)
        mp = self._buf("_mean_prec", x)
        logits = self._linear_logits(x) if p is not None else self._logits(x)
        m, e, tot = _shifted_exp(logits)
        lp = (m + torch.log(tot)).squeeze(-1)
        pull = (e @ mp) / tot  # sum_k r_k P_k mu_k
        if p is not None:
            return lp - 0.5 * p * (x * x).sum(-1), pull - p * x
        return lp, pull - x * ((e @ self._buf("_prec", x)) / tot)

    def responsibilities(self, x: Tensor) -> Tensor:
        """Posterior component probabilities ``r_k(x)`` (``n x K``)."""
        return torch.softmax(self._logits(x), dim=-1)

    def assign(self, x: Tensor) -> Tensor:
        """Most responsible component of each row (``n``, int64)."""
        return self._logits(x).argmax(-1)

    def sample(self, n: int, seed: int | torch.Generator | None = None) -> Tensor:
        n = check_positive_int(n, "n")
        g = _generator(seed, self.means.device)
        comp = torch.multinomial(self.weights, n, replacement=True, generator=g)
        eps = torch.randn(
            n, self.dim, generator=g, dtype=self.means.dtype, device=self.means.device
        )
        return self.means[comp] + self.scales[comp] * eps

    def expected_squared_norm(self) -> float:
        """``E ||x||^2`` under the mixture (closed form)."""
        per = (self.means**2).sum(-1) + (self.scales**2).sum(-1)
        return float((self.weights * per).sum())

    def mean(self) -> Tensor:
        return self.weights @ self.means

    def covariance(self) -> Tensor:
        """Covariance of the mixture (``d x d``)."""
        mu = self.mean()
        centred = self.means - mu
        within = torch.diag((self.weights[:, None] * self.scales**2).sum(0))
        return within + (self.weights[:, None] * centred).T @ centred


# exp(-80) = 1.8e-35: terms below it relative to the largest (exp(0) = 1) are raised to it. A
# sum holding 1 cannot resolve the difference (K terms change it by K x 1.8e-35, far below
# float64's 2.2e-16 resolution), and the clamp keeps every exp off the CPU's slow underflow
# path (PyTorch 2.13, AVX2: 10-30x slower per element for arguments below about -87)
_EXP_FLOOR = -80.0


def _shifted_exp(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(m, e, tot)`` with ``m`` the row max of ``logits`` (``n x K``; 0 where it is not
    finite), ``e = exp(max(logits - m, -80))`` (``n x K``) and ``tot = e.sum(-1)`` (``n x 1``;
    0 for rows whose logits are all ``-inf``): ``m + log(tot)`` is ``logsumexp(logits)`` and
    ``e / tot`` the softmax, to float64 resolution.

    On a multimodal target most components are far from a given point (MoG-40 at its own samples:
    84% of ``logits - m`` below -80). The floor, and working in place when autograd is not
    recording, make MoG-40's log-density and gradient 6x faster eagerly on one CPU thread
    (10,000 points: 2.8 against 16.7 ms) and its compiled MALA step 1.2x faster.
    """
    top = logits.detach().amax(-1, keepdim=True)
    m = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    d = logits - m
    if d.requires_grad:
        e = torch.exp(d.clamp(min=_EXP_FLOOR))
    else:  # in place: each fresh n x K buffer costs page faults comparable to the exp
        e = d.clamp_(min=_EXP_FLOOR).exp_()
    tot = e.sum(-1, keepdim=True)
    # all -inf (every component infinitely far): the clamp must not turn 0 into K exp(-80)
    return m, e, torch.where(top > -math.inf, tot, torch.zeros_like(tot))


def mog40_means(
    n_modes: int = 40, dim: int = 2, loc_scaling: float = 40.0, seed: int = 0
) -> Tensor:
    """Means of MoG-40: ``(torch.rand(n_modes, dim) - 0.5) * 2 * loc_scaling`` under torch seed
    ``seed`` (a private generator, so global random state is untouched)."""
    g = torch.Generator().manual_seed(check_seed(seed))
    n_modes, dim = check_positive_int(n_modes, "n_modes"), check_positive_int(dim, "dim")
    return (torch.rand(n_modes, dim, generator=g) - 0.5) * 2 * loc_scaling


class MoG40(GaussianMixture):
    """MoG-40: 40 equal-weight Gaussians in 2-D (Chen et al., *Diffusive Gibbs Sampling*, 2024).

    Means are uniform in ``[-40, 40]^2``, drawn as ``(torch.rand(40, 2) - 0.5) * 2 * 40`` with
    torch seed 0 (the published benchmark; identical to ``torch.manual_seed(0);
    torch.rand(40, 2)``); every component has diagonal scale ``softplus(1) = 1.3133``.
    Chains start at the origin by default, as in the paper.

    Args:
        n_modes: number of components.
        dim: dimension.
        loc_scaling: half-width of the box of the means.
        scale: component standard deviation (default ``softplus(1)``).
        seed: torch seed of the means.
    """

    def __init__(
        self,
        n_modes: int = 40,
        dim: int = 2,
        loc_scaling: float = 40.0,
        scale: float | None = None,
        seed: int = 0,
    ) -> None:
        n_modes = check_positive_int(n_modes, "n_modes")
        if scale is None:
            scale = float(F.softplus(torch.tensor(1.0)))
        super().__init__(mog40_means(n_modes, dim, loc_scaling, seed), scale, name=f"mog{n_modes}")
        self.loc_scaling = float(loc_scaling)

    def extra_repr(self) -> str:
        return f"n_modes={self.n_components}, dim={self.dim}, scale={float(self.scales[0, 0]):.4f}"
