"""Batched damped Newton minimisation of independent small problems.

Minimises ``f(theta) -> [T]`` over ``theta [T, p]`` where task ``t``'s objective depends on
row ``t`` only, so the Hessian is block diagonal and the ``p x p`` blocks of all tasks come out
of ``p`` Hessian-vector products. Each step uses the saddle-free Newton direction
``-V |Lambda|^-1 V^T g`` (eigenvalues floored at ``min_curvature``; Dauphin et al., NeurIPS
2014), a per-task Armijo backtracking line search evaluated for all tasks and all trial step
sizes in one batched call, and stops per task at a gradient-norm tolerance. Tasks that have
converged stop moving while the others continue.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

STEP_SIZES = (1.0, 0.5, 0.25, 0.1, 0.03, 0.01)


@dataclass
class NewtonResult:
    """Outcome of :func:`batched_newton`.

    Attributes:
        theta: ``[T, p]`` solution (detached).
        value: ``[T]`` objective at the solution.
        grad_norm: ``[T]`` gradient norm at the solution.
        converged: ``[T]`` bool, gradient norm below the tolerance.
        n_iter: ``[T]`` Newton iterations taken per task.
        hessian: ``[T, p, p]`` Hessian blocks at the solution.
    """

    theta: torch.Tensor
    value: torch.Tensor
    grad_norm: torch.Tensor
    converged: torch.Tensor
    n_iter: torch.Tensor
    hessian: torch.Tensor

    @property
    def all_converged(self) -> bool:
        return bool(self.converged.all())


def value_grad_hessian(
    fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-task values ``[T]``, gradients ``[T, p]`` and Hessian blocks ``[T, p, p]``.

    ``fn`` must be separable across rows of ``theta`` (block-diagonal Hessian).
    """
    with torch.enable_grad():
        th = theta.detach().requires_grad_(True)
        f = fn(th)
        (g,) = torch.autograd.grad(f.sum(), th, create_graph=True)
        rows = []
        p = th.shape[-1]
        for j in range(p):
            (hj,) = torch.autograd.grad(g[:, j].sum(), th, retain_graph=j < p - 1)
            rows.append(hj)
    h = torch.stack(rows, dim=-2)
    return f.detach(), g.detach(), 0.5 * (h + h.transpose(-1, -2))


def batched_newton(
    fn: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    *,
    derivatives: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor, torch.Tensor]]
    | None = None,
    tol: float = 1e-6,
    max_iter: int = 50,
    min_curvature: float = 1e-4,
    max_step: float = 2.0,
) -> NewtonResult:
    """Minimises a separable objective for all tasks at once.

    Args:
        fn: maps ``theta [T, p]`` to per-task objectives ``[T]``; row ``t`` of ``theta`` only
            affects entry ``t``. If ``fn.tiles`` is ``True`` it also accepts ``k`` stacked
            copies ``[k * T, p]`` (task ``t`` at rows ``t, T + t, ...``) and returns
            ``[k * T]``, so the line search evaluates every trial step in one call.
        theta0: ``[T, p]`` starting point.
        derivatives: optional closed form returning ``(f [T], grad [T, p], hessian [T, p, p])``
            at ``theta``; by default they come from autograd (:func:`value_grad_hessian`).
        tol: gradient-norm tolerance per task.
        max_iter: maximum Newton iterations.
        min_curvature: floor on the absolute eigenvalues of the Hessian blocks.
        max_step: cap on the Euclidean norm of one Newton step (in log space).

    Returns:
        A :class:`NewtonResult`.
    """
    theta = theta0.detach().clone()
    t = theta.shape[0]
    n_iter = torch.zeros(t, dtype=torch.long, device=theta.device)
    derivs = derivatives or (lambda th: value_grad_hessian(fn, th))
    f, g, h = derivs(theta)
    if not bool(torch.isfinite(f).all()):
        bad = torch.nonzero(~torch.isfinite(f)).flatten().tolist()
        raise ValueError(
            f"inner objective is not finite at the starting point for tasks {bad[:10]}"
        )
    steps = torch.tensor(STEP_SIZES, dtype=theta.dtype, device=theta.device)
    for _ in range(max_iter):
        gnorm = g.norm(dim=-1)
        active = gnorm > tol
        if not bool(active.any()):
            break
        evals, evecs = torch.linalg.eigh(h)
        inv = 1.0 / evals.abs().clamp_min(min_curvature)
        d = -(evecs @ (inv[..., None] * (evecs.transpose(-1, -2) @ g[..., None])))[..., 0]
        dn = d.norm(dim=-1, keepdim=True)
        d = d * torch.where(dn > max_step, max_step / dn, torch.ones_like(dn))
        d = d * active[:, None].to(d.dtype)
        # Armijo line search. The full Newton step is tried first (it is accepted in almost
        # every iteration); only if an active task rejects it are the shorter steps evaluated,
        # for all tasks and step sizes in one batched call. The iterates are the same as
        # evaluating every step size at once.
        k = len(STEP_SIZES)
        slope = (g * d).sum(-1)  # negative for descent directions
        # slack at the level of round-off so that the final, quadratically convergent steps
        # (predicted decrease ~ 1e-17) are not rejected
        slack = 4 * torch.finfo(f.dtype).eps * (1.0 + f.abs())

        # With closed-form derivatives the full step is scored by them: when every task
        # accepts it (the usual case) they are the next iterate's, saving one evaluation.
        if derivatives is not None:
            trial_derivs = derivs(theta + d)
            f_full = trial_derivs[0]
            f_full = torch.where(torch.isfinite(f_full), f_full, torch.full_like(f_full, math.inf))
            ok_full = (f_full <= f + 1e-4 * slope + slack)[None]
        else:
            trial_derivs = None
            ok_full = _armijo(fn, theta, d, f, slope, slack, steps[:1])
        if bool((ok_full[0] | ~active).all()):
            if trial_derivs is not None:
                theta = theta + d
                n_iter = n_iter + active.long()
                f, g, h = trial_derivs
                continue
            ok = torch.cat(
                [ok_full, torch.zeros(k - 1, t, dtype=torch.bool, device=ok_full.device)]
            )
        else:
            ok = torch.cat([ok_full, _armijo(fn, theta, d, f, slope, slack, steps[1:])])
        first_ok = torch.where(
            ok.any(0), ok.to(torch.int8).argmax(0), torch.full_like(gnorm, k, dtype=torch.long)
        )
        has_step = (first_ok < k) & active
        if not bool(has_step.any()):
            break
        chosen = steps[first_ok.clamp_max(k - 1)]
        theta = theta + (chosen * has_step.to(theta.dtype))[:, None] * d
        n_iter = n_iter + has_step.long()
        f, g, h = derivs(theta)
    gnorm = g.norm(dim=-1)
    return NewtonResult(theta.detach(), f, gnorm, gnorm <= tol, n_iter, h)


def _armijo(
    fn: Callable[[torch.Tensor], torch.Tensor],
    theta: torch.Tensor,
    d: torch.Tensor,
    f: torch.Tensor,
    slope: torch.Tensor,
    slack: torch.Tensor,
    trial_steps: torch.Tensor,
) -> torch.Tensor:
    """``[len(trial_steps), T]`` bool: Armijo sufficient decrease at ``theta + step * d``."""
    n, t = len(trial_steps), theta.shape[0]
    trial = (theta[None] + trial_steps[:, None, None] * d[None]).reshape(n * t, -1)
    with torch.no_grad():
        f_trial = fn_tiled(fn, trial, n, t)
    f_trial = torch.where(torch.isfinite(f_trial), f_trial, torch.full_like(f_trial, float("inf")))
    return f_trial <= f[None] + 1e-4 * trial_steps[:, None] * slope[None] + slack[None]


def fn_tiled(
    fn: Callable[[torch.Tensor], torch.Tensor], theta: torch.Tensor, k: int, t: int
) -> torch.Tensor:
    """Evaluates ``fn`` on ``k`` stacked copies of the ``t`` tasks, returning ``[k, t]``.

    ``fn`` sees one ``[t, p]`` block at a time unless it advertises ``fn.tiles = True``, in
    which case it receives the whole ``[k * t, p]`` stack (and must tile its data itself).
    """
    if getattr(fn, "tiles", False):
        return fn(theta).reshape(k, t)
    return torch.stack([fn(theta[i * t : (i + 1) * t]) for i in range(k)])
