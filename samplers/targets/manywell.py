"""Many-Well: independent copies of a 2-D double well (Midgley et al., FAB, ICLR 2023).

For ``dim = 2m`` the state is ``m`` pairs ``(d_i, v_i) = (x[2i], x[2i+1])`` with

.. math::
    \\log p(x) = \\sum_i 0.5 d_i + 6 d_i^2 - d_i^4 - v_i^2 / 2,

so each pair has two wells in ``d`` (the right one heavier) and ``2^m`` modes overall
(``2^16`` for Many-Well-32). Per pair ``log Z = log 11784.50927 + 0.5 log(2 pi)``.

Exact samples: ``v ~ N(0, 1)``, and ``d`` by rejection sampling from a Gaussian-mixture envelope
(a component on each well from the Laplace approximation, widened, and a broad one over the
barrier) whose bound ``M`` is the maximum of ``log p(d) - log q(d)`` over a fine grid plus a
margin; outside the grid the quartic decays faster than the Gaussian envelope, so the bound holds
everywhere and the samples are exact.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from torch import Tensor

from probrec.checks import check_positive_int

from .base import Target, _generator

__all__ = ["ManyWell"]

_A, _B, _C = 0.5, 6.0, -1.0  # log p(d) = A d + B d^2 + C d^4 (up to a constant)


def _logp_d(d: np.ndarray) -> np.ndarray:
    return _A * d + _B * d**2 + _C * d**4


class _DoubleWellSampler:
    """Rejection sampler of the 1-D density ``exp(0.5 d + 6 d^2 - d^4)`` (numbers in float64)."""

    def __init__(
        self,
        widen: float = 1.3,
        broad_weight: float = 0.05,
        grid_halfwidth: float = 6.0,
        grid_size: int = 200_001,
    ) -> None:
        roots = np.roots([4 * _C, 0.0, 2 * _B, _A])  # d/dd log p = 0
        roots = np.sort(roots[np.abs(roots.imag) < 1e-9].real)
        centres = np.array([roots[0], roots[-1]])  # the two maxima (middle root is the barrier)
        curv = -(2 * _B + 12 * _C * centres**2)
        var = widen**2 / curv
        logmass = _logp_d(centres) + 0.5 * np.log(2 * np.pi * var)
        w = np.exp(logmass - logmass.max())
        w = (1 - broad_weight) * w / w.sum()
        # a broad third component covers the barrier between the wells
        self.centres = np.append(centres, 0.0)
        self.std = np.append(np.sqrt(var), 1.0)
        self.weights = np.append(w, broad_weight)
        grid = np.linspace(-grid_halfwidth, grid_halfwidth, grid_size)
        ratio = _logp_d(grid) - self._log_q(grid)
        self.log_m = float(ratio.max()) + 1e-3
        # exact log-normaliser by quadrature on the same grid (the tails are below 1e-300)
        lp = _logp_d(grid)
        mx = lp.max()
        self.log_z = float(mx + np.log(np.trapezoid(np.exp(lp - mx), grid)))
        self.accept_rate = math.exp(self.log_z - self.log_m)

    def _log_q(self, d: np.ndarray) -> np.ndarray:
        comp = (
            np.log(self.weights)[None]
            - 0.5 * ((d[:, None] - self.centres[None]) / self.std[None]) ** 2
            - np.log(self.std)[None]
            - 0.5 * np.log(2 * np.pi)
        )
        mx = comp.max(1)
        return mx + np.log(np.exp(comp - mx[:, None]).sum(1))

    def sample(
        self, n: int, g: torch.Generator, dtype: torch.dtype, device: torch.device
    ) -> Tensor:
        centres = torch.tensor(self.centres, dtype=torch.float64, device=device)
        std = torch.tensor(self.std, dtype=torch.float64, device=device)
        w = torch.tensor(self.weights, dtype=torch.float64, device=device)
        out: list[Tensor] = []
        have = 0
        while have < n:
            m = int((n - have) / self.accept_rate * 1.1) + 16
            comp = torch.multinomial(w, m, replacement=True, generator=g)
            d = centres[comp] + std[comp] * torch.randn(
                m, generator=g, dtype=torch.float64, device=device
            )
            dd = d.cpu().numpy()
            log_ratio = _logp_d(dd) - self._log_q(dd) - self.log_m
            u = torch.rand(m, generator=g, dtype=torch.float64, device=device)
            keep = torch.log(u) < torch.as_tensor(log_ratio, device=device)
            out.append(d[keep])
            have += int(keep.sum())
        return torch.cat(out)[:n].to(dtype)


class ManyWell(Target):
    """Many-Well target of any even dimension (32 by default, ``2^(dim/2)`` modes).

    Args:
        dim: even dimension ``2m``.

    Attributes:
        log_normalizer: ``log Z`` of ``exp(log_prob)`` (exact, by quadrature).
    """

    analytic_grad = True
    # MALA on MW-32, 10,000 chains, one CPU thread: 1.44 us per row eager, 0.42 compiled, 8 s
    # to compile with a warm cache (about 47 s cold): pays from ~8M rows (warm) to ~46M (cold)
    cpu_compile_min_row_evals = 20_000_000
    _sampler: _DoubleWellSampler | None = None

    def __init__(self, dim: int = 32) -> None:
        dim = check_positive_int(dim, "dim", minimum=2)
        if dim % 2:
            raise ValueError(f"dim must be even (pairs of coordinates), got {dim}")
        super().__init__(dim)
        self.name = f"manywell{dim}"
        self.n_pairs = dim // 2
        self.register_buffer("_dummy", torch.zeros(()), persistent=False)
        self.log_normalizer = self.n_pairs * (self._well().log_z + 0.5 * math.log(2 * math.pi))

    @classmethod
    def _well(cls) -> _DoubleWellSampler:
        if cls._sampler is None:
            cls._sampler = _DoubleWellSampler()
        return cls._sampler

    def log_prob(self, x: Tensor) -> Tensor:
        d, v = x[:, 0::2], x[:, 1::2]
        d2 = d * d
        return (_A * d + _B * d2 + _C * d2 * d2 - 0.5 * v * v).sum(-1)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        d, v = x[:, 0::2], x[:, 1::2]
        d2 = d * d
        lp = (_A * d + _B * d2 + _C * d2 * d2 - 0.5 * v * v).sum(-1)
        gd = _A + 2 * _B * d + 4 * _C * d2 * d
        grad = torch.stack([gd, -v], dim=-1).reshape(x.shape)
        return lp, grad

    def sample(self, n: int, seed: int | torch.Generator | None = None) -> Tensor:
        n = check_positive_int(n, "n")
        dev = self._dummy.device
        g = _generator(seed, dev)
        dtype = self._dummy.dtype
        d = self._well().sample(n * self.n_pairs, g, dtype, dev).reshape(n, self.n_pairs)
        v = torch.randn(n, self.n_pairs, generator=g, dtype=dtype, device=dev)
        return torch.stack([d, v], dim=-1).reshape(n, self.dim)

    def mode_index(self, x: Tensor) -> Tensor:
        """Which well each pair sits in, as a ``n x m`` bool tensor (``True``: right well)."""
        return x[:, 0::2] > 0
