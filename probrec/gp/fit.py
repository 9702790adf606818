"""The batched inner loop: fit every task's GP hyperparameters at once.

For a meta-batch of ``T`` support sets the support geometry (pairwise distances) is computed
once; damped Newton steps on the per-task MAP objective then run on ``[T, n, n]`` matrices
only, all tasks in one batched Cholesky per evaluation, to a gradient-norm tolerance, with the
convergence of every task reported (:class:`FitResult`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from probrec.gp.exact import (
    GPConfig,
    PriorCentres,
    initial_theta,
    inner_objective,
    inner_objective_derivatives,
)
from probrec.gp.newton import NewtonResult, batched_newton


@dataclass
class FitResult:
    """Fitted hyperparameters of a batch of tasks.

    Attributes:
        theta: ``[T, p]`` log hyperparameters (columns named by ``names``).
        names: column names (``GPConfig.names``).
        objective: ``[T]`` per-point MAP objective at ``theta``.
        grad_norm: ``[T]`` gradient norm at ``theta``.
        converged: ``[T]`` bool.
        n_iter: ``[T]`` Newton iterations.
        hessian: ``[T, p, p]`` Hessian blocks of the objective at ``theta`` (fit dtype).
        held: ``[T]`` bool, tasks whose targets were all zero (one point or equal labels),
            kept at the starting point (the prior modes) and counted as converged; ``None``
            when there were none.
    """

    theta: torch.Tensor
    names: tuple[str, ...]
    objective: torch.Tensor
    grad_norm: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    hessian: torch.Tensor
    held: torch.Tensor | None = None

    def summary(self) -> str:
        """One line: how many tasks converged, worst gradient norm of the fitted tasks,
        iterations, and how many were held at the prior modes."""
        fitted = self.grad_norm if self.held is None else self.grad_norm[~self.held]
        n_held = 0 if self.held is None else int(self.held.sum())
        worst = f"{float(fitted.max()):.2e}" if fitted.numel() else "n/a"
        line = (
            f"{int(self.converged.sum())}/{len(self.converged)} tasks converged, "
            f"max |grad| {worst}, "
            f"iterations {int(self.n_iter.min())}-{int(self.n_iter.max())}"
        )
        return line + (f", {n_held} held at the prior (constant targets)" if n_held else "")


def fit_hyperparameters(
    config: GPConfig,
    geom: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    centres: PriorCentres,
    *,
    theta0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 50,
    dtype: torch.dtype | None = torch.float64,
) -> FitResult:
    """Fits ``theta* = argmin (NLML - log prior) / n`` for every task of the batch.

    Args:
        config: GP configuration.
        geom: ``[T, n, n]`` support geometry (detached).
        y: ``[T, n]`` targets.
        mask: ``[T, n]`` bool mask of real points, or ``None``.
        centres: prior modes from :func:`~probrec.gp.exact.prior_centres`.
        theta0: starting point (default :func:`~probrec.gp.exact.initial_theta`).
        tol: gradient-norm tolerance on the per-point objective.
        max_iter: Newton iteration cap.
        dtype: dtype of the optimisation (float64 by default: the ``3 x 3`` problems are cheap
            and the implicit gradient needs an accurate optimum); ``None`` keeps ``geom``'s.

    Returns:
        A :class:`FitResult` with ``theta`` in ``geom``'s dtype.
    """
    out_dtype = geom.dtype
    dt = dtype or geom.dtype
    g = geom.detach().to(dt)
    yy = y.detach().to(dt)
    cen = PriorCentres(
        None if centres.lengthscale_mode is None else centres.lengthscale_mode.to(dt)
    )
    th0 = initial_theta(config, yy, mask, cen, geom=g) if theta0 is None else theta0.detach().to(dt)
    # all-zero targets (a regression support of one point or of equal labels, which
    # encode_labels maps to exact zeros) say nothing about the signal: their marginal likelihood
    # keeps growing as the outputscale shrinks, so a fit would end, unconverged, at an
    # outputscale near 0 and a GP certain of its mean everywhere. Such tasks keep the prior
    # modes of theta0 (outputscale 1) and count as converged.
    flat = ~((yy != 0) if mask is None else (yy != 0) & mask.bool()).any(-1)
    any_flat = bool(flat.any())
    if not any_flat:
        res = _newton(config, g, yy, mask, cen, th0, tol, max_iter)
    else:
        res = _hold_flat(config, g, yy, mask, cen, th0, flat, tol, max_iter)
    return FitResult(
        res.theta.to(out_dtype),
        config.names,
        res.value,
        res.grad_norm,
        res.converged,
        res.n_iter,
        res.hessian,
        flat if any_flat else None,
    )


def _newton(
    config: GPConfig,
    g: torch.Tensor,
    yy: torch.Tensor,
    mask: torch.Tensor | None,
    cen: PriorCentres,
    th0: torch.Tensor,
    tol: float,
    max_iter: int,
) -> NewtonResult:
    """Damped Newton on every task of the batch (closed-form derivatives)."""
    t = g.shape[0]

    def objective(theta: torch.Tensor) -> torch.Tensor:
        k = theta.shape[0] // t
        if k == 1:
            return inner_objective(theta, config, g, yy, mask, cen)

        def rep(a: torch.Tensor | None) -> torch.Tensor | None:
            return None if a is None else a.repeat(k, *([1] * (a.dim() - 1)))

        c = PriorCentres(rep(cen.lengthscale_mode))
        return inner_objective(theta, config, rep(g), rep(yy), rep(mask), c)

    def derivatives(theta: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        return inner_objective_derivatives(theta, config, g, yy, mask, cen)

    objective.tiles = True  # type: ignore[attr-defined]
    return batched_newton(objective, th0, derivatives=derivatives, tol=tol, max_iter=max_iter)


def _hold_flat(
    config: GPConfig,
    g: torch.Tensor,
    yy: torch.Tensor,
    mask: torch.Tensor | None,
    cen: PriorCentres,
    th0: torch.Tensor,
    flat: torch.Tensor,
    tol: float,
    max_iter: int,
) -> NewtonResult:
    """Newton on the tasks with information, ``theta0`` kept for the ``flat`` ones ``[T]``."""

    def rows(a: torch.Tensor | None, keep: torch.Tensor) -> torch.Tensor | None:
        return None if a is None else a[keep]

    def part(keep: torch.Tensor) -> tuple:
        return (
            g[keep],
            yy[keep],
            rows(mask, keep),
            PriorCentres(rows(cen.lengthscale_mode, keep)),
            th0[keep],
        )

    gf, yf, mf, cf, tf = part(flat)
    value, grad, hess = inner_objective_derivatives(tf, config, gf, yf, mf, cf)
    out = NewtonResult(
        th0.clone(),
        torch.empty(th0.shape[0], dtype=th0.dtype, device=th0.device),
        torch.empty(th0.shape[0], dtype=th0.dtype, device=th0.device),
        torch.ones(th0.shape[0], dtype=torch.bool, device=th0.device),
        torch.zeros(th0.shape[0], dtype=torch.long, device=th0.device),
        torch.empty(*th0.shape, th0.shape[1], dtype=th0.dtype, device=th0.device),
    )
    out.value[flat], out.grad_norm[flat], out.hessian[flat] = value, grad.norm(dim=-1), hess
    if not bool(flat.all()):
        keep = ~flat
        fitted = _newton(config, *part(keep), tol, max_iter)
        out.theta[keep], out.value[keep], out.grad_norm[keep] = (
            fitted.theta,
            fitted.value,
            fitted.grad_norm,
        )
        out.converged[keep], out.n_iter[keep] = fitted.converged, fitted.n_iter
        out.hessian[keep] = fitted.hessian
    return out
