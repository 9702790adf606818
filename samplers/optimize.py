"""Maximum a posteriori estimates: the point-estimate baseline of the samplers (e.g. on the BNN).

Gradient ascent on ``log p`` with Adam (learning rate decayed to zero on a cosine schedule) from
several starting points (batched: every start is a row), keeping the best end point. Uses the
target's (closed-form or autograd) gradient.
"""

from __future__ import annotations

import torch
from torch import Tensor

from probrec.checks import check_positive_int, check_real
from probrec.seeding import torch_generator

from .targets.base import Target, check_start

__all__ = ["map_estimate"]


def map_estimate(
    target: Target,
    n_starts: int = 8,
    steps: int = 2000,
    lr: float = 1e-2,
    seed: int = 0,
    init: Tensor | None = None,
) -> tuple[Tensor, float]:
    """Maximises ``target.log_prob`` by Adam from ``n_starts`` starting points.

    Args:
        target: the target (a posterior, for a MAP estimate).
        n_starts: starting points, drawn from ``target.init_positions``.
        steps: Adam steps.
        lr: initial Adam learning rate.
        seed: seed of the starting points.
        init: optional ``n_starts x d`` starting points.

    Returns:
        ``(x_best, log_prob_best)``: the best ``d``-dim end point and its log-density.
    """
    n_starts = check_positive_int(n_starts, "n_starts")
    steps = check_positive_int(steps, "steps")
    lr = check_real(lr, "lr", strict=True)
    g = torch_generator(seed, target._device())
    x = target.init_positions(n_starts, g) if init is None else init.clone()
    check_start(target, x, need_grad=True)
    x = x.clone().requires_grad_(False)
    param = torch.nn.Parameter(x)
    opt = torch.optim.Adam([param], lr=lr)
    # cosine decay of the learning rate to zero, so Adam settles in the optimum
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=steps)
    for _ in range(steps):
        lp, grad = target.log_prob_and_grad(param.detach())
        grad = torch.where(torch.isfinite(grad), grad, torch.zeros_like(grad))
        param.grad = -grad
        opt.step()
        sched.step()
    with torch.no_grad():
        lp = target.log_prob(param.detach())
        lp = torch.where(torch.isfinite(lp), lp, torch.full_like(lp, -float("inf")))
        best = int(lp.argmax())
    return param.detach()[best].clone(), float(lp[best])
