"""A multivariate Gaussian target with closed-form gradient and exact samples.

Used as the reference case of the sampler tests (every kernel must leave it invariant) and as a
sanity target for users: ``log p(x) = -0.5 (x - m)^T P (x - m) - 0.5 log det(2 pi C)``.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probrec.checks import as_float_tensor, check_positive_int

from .base import LOG_2PI, Target, _generator

__all__ = ["Gaussian"]


class Gaussian(Target):
    """``N(mean, covariance)`` on ``R^d``.

    Args:
        mean: a ``d``-dim mean.
        covariance: a ``d x d`` symmetric positive-definite matrix, or ``None`` for the identity.

    Raises:
        ValueError: the covariance is not symmetric positive definite.
    """

    analytic_grad = True
    log_normalizer = 0.0
    # set as for GaussianMixture (not measured separately): a closed form whose eager step is
    # already fast on a CPU, where compiling pays only on long runs
    cpu_compile_min_row_evals = 100_000_000

    def __init__(
        self, mean: Tensor, covariance: Tensor | None = None, name: str = "gaussian"
    ) -> None:
        mean = as_float_tensor(mean, "mean", ndim=1)
        d = mean.shape[0]
        super().__init__(d)
        self.name = name
        if covariance is None:
            cov = torch.eye(d, dtype=mean.dtype, device=mean.device)
        else:
            cov = as_float_tensor(
                covariance, "covariance", ndim=2, dtype=mean.dtype, device=mean.device
            )
            if cov.shape != (d, d):
                raise ValueError(f"covariance must have shape ({d}, {d}), got {tuple(cov.shape)}")
            if not torch.allclose(cov, cov.T, atol=1e-6 * float(cov.abs().max())):
                raise ValueError("covariance must be symmetric")
        chol, info = torch.linalg.cholesky_ex(cov.double())
        if int(info) != 0:
            raise ValueError("covariance must be positive definite")
        prec = torch.cholesky_inverse(chol)
        self.register_buffer("mean", mean.clone())
        self.register_buffer("covariance", cov.clone())
        self.register_buffer("_chol", chol.to(mean.dtype))
        self.register_buffer("_prec", prec.to(mean.dtype))
        self._derive()

    def _derive(self) -> None:
        """The normalising constant, from the covariance in float64 (after ``load_state_dict``)."""
        chol = torch.linalg.cholesky(self.covariance.double())
        logdet = 2 * torch.log(torch.diagonal(chol)).sum()
        self._const = float(-0.5 * (self.dim * LOG_2PI + logdet))

    def log_prob(self, x: Tensor) -> Tensor:
        z = x - self.mean.to(x)
        return -0.5 * ((z @ self._prec.to(x)) * z).sum(-1) + self._const

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        z = x - self.mean.to(x)
        pz = z @ self._prec.to(x)
        return -0.5 * (pz * z).sum(-1) + self._const, -pz

    def sample(self, n: int, seed: int | torch.Generator | None = None) -> Tensor:
        n = check_positive_int(n, "n")
        g = _generator(seed, self.mean.device)
        eps = torch.randn(n, self.dim, generator=g, dtype=self.mean.dtype, device=self.mean.device)
        return self.mean + eps @ self._chol.T

    def expected_squared_norm(self) -> float:
        return float((self.mean**2).sum() + torch.diagonal(self.covariance).sum())
