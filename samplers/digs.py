"""Diffusive Gibbs sampling (DiGS; Chen, Zhang, Paige, Hernandez-Lobato & Barber, ICML 2024).

DiGS samples the joint ``p(x, x~) = p(x) N(x~; alpha x, sigma^2 I)`` of the target and a
Gaussian convolution of it by Gibbs sampling; the marginal of ``x`` is the target. With the
variance-preserving choice ``sigma^2 = 1 - alpha^2`` one *sweep* at noise level ``alpha`` is:

1. noising: ``x~ = alpha x + sigma eps``;
2. Metropolis-within-Gibbs initialisation of the denoising step: propose
   ``x' ~ N(x~ / alpha, sigma^2 / alpha^2 I)`` and accept with probability
   ``min(1, p(x') / p(x))`` (the proposal is proportional to the Gaussian factor of the
   conditional, so only the target ratio remains);
3. denoising: ``K`` MALA steps on ``log p(x | x~) = log p(x) - ||x~ - alpha x||^2 / (2 sigma^2)``.

Small ``alpha`` smooths the target strongly, so step 2 jumps between distant modes; several noise
levels can be cycled (``sweeps_per_level`` sweeps at each level in turn). Each sweep costs ``K + 1``
gradient evaluations per chain (the proposal of step 2 is evaluated with its gradient, which the
MALA steps then reuse). The MALA step size is adapted per noise level during warm-up.

All chains run as one batch; with an analytic-gradient target the whole sweep (steps 1-3) runs as
one compiled function.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probrec.checks import check_positive_int, check_real

from .adaptation import DualAveraging
from .base import RunPlan, Sampler, warn_if_stuck
from .compile import CompiledFn
from .kernels import _accept, _finite_rows, mala_transition
from .mcmc import check_step_size, check_target_accept
from .targets.base import Target

__all__ = ["DiGS", "digs_sweep"]


def _conditional(
    x: Tensor, fn: Callable, x_tilde: Tensor, alpha: Tensor, inv_var: Tensor
) -> tuple[Tensor, Tensor]:
    """``log p(x) - ||x~ - alpha x||^2 / (2 sigma^2)`` and its gradient."""
    lp, g = fn(x)
    r = x_tilde - alpha * x
    return lp - 0.5 * inv_var * (r * r).sum(-1), g + (alpha * inv_var) * r


def digs_sweep(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    lp: Tensor,
    grad: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    step_size: Tensor,
    noise_tilde: Tensor,
    noise_init: Tensor,
    log_u_init: Tensor,
    mala_noise: Tensor,
    mala_log_u: Tensor,
    n_mala: int,
    mwg_init: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One DiGS Gibbs sweep of ``n`` chains (pure function; randomness passed in).

    Args:
        fn: ``fn(x) -> (log p, grad)`` of the target.
        x, lp, grad: ``n x d`` states, ``n`` log-densities, ``n x d`` gradients.
        alpha, sigma: 0-dim tensors of the noise level (``sigma = sqrt(1 - alpha^2)``).
        step_size: 0-dim or ``n`` MALA step size.
        noise_tilde, noise_init: ``n x d`` standard normals (noising, initialisation proposal).
        log_u_init: ``n`` log-uniforms of the initialisation.
        mala_noise: ``K x n x d`` standard normals; ``mala_log_u``: ``K x n`` log-uniforms.
        n_mala: ``K``, MALA steps per sweep.
        mwg_init: use the Metropolis-within-Gibbs initialisation (step 2).

    Returns:
        ``(x, lp, grad, init_accept_prob, mala_accept_prob)``: the new states and, per chain, the
        acceptance probability of the initialisation and the mean over the ``K`` MALA steps.
    """
    x_tilde = alpha * x + sigma * noise_tilde
    if mwg_init:
        prop = x_tilde / alpha + (sigma / alpha) * noise_init
        lp_p, g_p = fn(prop)
        prob0, acc0 = _accept(lp_p - lp, _finite_rows(lp_p, g_p, prop), log_u_init)
        a = acc0[:, None]
        x, lp, grad = (
            torch.where(a, prop, x),
            torch.where(acc0, lp_p, lp),
            torch.where(a, g_p, grad),
        )
    else:
        prob0 = torch.zeros_like(lp)
    inv_var = 1.0 / (sigma * sigma)
    r = x_tilde - alpha * x
    c_lp = lp - 0.5 * inv_var * (r * r).sum(-1)
    c_g = grad + (alpha * inv_var) * r
    acc_sum = torch.zeros_like(lp)
    args = (fn, x_tilde, alpha, inv_var)
    for k in range(n_mala):
        x, c_lp, c_g, prob, _ = mala_transition(
            _conditional, args, x, c_lp, c_g, None, step_size, mala_noise[k], mala_log_u[k]
        )
        acc_sum = acc_sum + prob
    r = x_tilde - alpha * x
    lp = c_lp + 0.5 * inv_var * (r * r).sum(-1)
    grad = c_g - (alpha * inv_var) * r
    return x, lp, grad, prob0, acc_sum / max(n_mala, 1)


def digs_block(
    fn: Callable[[Tensor], tuple[Tensor, Tensor]],
    x: Tensor,
    lp: Tensor,
    grad: Tensor,
    alphas: Tensor,
    sigmas: Tensor,
    step_sizes: Tensor,
    normals: Tensor,
    log_u: Tensor,
    n_mala: int,
    mwg_init: bool,
    n_sweeps: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``n_sweeps`` DiGS sweeps in one call (one compiled graph on the compiled path).

    Args:
        alphas, sigmas, step_sizes: ``n_sweeps``-dim noise levels and step sizes per sweep.
        normals: ``n_sweeps x (K + 2) x n x d`` and ``log_u``: ``n_sweeps x (K + 1) x n`` draws,
            laid out as in :meth:`DiGS._transition`.
        Other arguments as in :func:`digs_sweep`.

    Returns:
        ``(x, lp, grad, init_accept, mala_accept)`` with the acceptance probabilities averaged
        over chains, one value per sweep (``n_sweeps``).
    """
    p0s, p1s = [], []
    for i in range(n_sweeps):
        x, lp, grad, p0, p1 = digs_sweep(
            fn,
            x,
            lp,
            grad,
            alphas[i],
            sigmas[i],
            step_sizes[i],
            normals[i, 0],
            normals[i, 1],
            log_u[i, 0],
            normals[i, 2:],
            log_u[i, 1:],
            n_mala,
            mwg_init,
        )
        p0s.append(p0.mean())
        p1s.append(p1.mean())
    return x, lp, grad, torch.stack(p0s), torch.stack(p1s)


class DiGS(Sampler):
    """Diffusive Gibbs sampler (see the module docstring).

    Args:
        alphas: noise levels ``alpha in (0, 1)`` cycled over sweeps (``sigma^2 = 1 - alpha^2``).
            Smaller values jump further; the paper uses 0.1 on MoG-40.
        n_mala: MALA steps ``K`` per sweep (>= 0; 0 needs ``mwg_init``).
        step_size: initial MALA step size, one float for all levels or one per level.
        target_accept: MALA acceptance rate aimed at by adaptation (per noise level).
        mwg_init: Metropolis-within-Gibbs initialisation of each denoising step.
        sweeps_per_level: consecutive sweeps at one noise level before moving to the next
            (1: the level changes every sweep; the DiGS paper's BNN run uses 100 sweeps per
            level through 5 levels).
        **kwargs: schedule options of :class:`~samplers.base.Sampler`; a transition is one
            sweep and costs ``K + 1`` gradient evaluations per chain (``K`` without
            ``mwg_init``).

    Example:
        >>> import samplers
        >>> from samplers.targets import MoG40
        >>> res = samplers.DiGS(alphas=(0.05,), n_mala=1, budget=100).run(MoG40(), 500, seed=0)
        >>> res.n_grad_evals <= 100 * 500
        True
    """

    name = "digs"

    def __init__(
        self,
        alphas: Sequence[float] | float = (0.1,),
        n_mala: int = 5,
        step_size: float | Sequence[float] | None = None,
        target_accept: float = 0.574,
        mwg_init: bool = True,
        sweeps_per_level: int = 1,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if isinstance(alphas, (torch.Tensor, np.ndarray)):  # a 0-d tensor is not iterable
            alphas = alphas.reshape(-1).tolist()
        if isinstance(alphas, (int, float, np.integer, np.floating)):
            alphas = (float(alphas),)
        alphas = [check_real(a, "alphas") for a in alphas]
        if not alphas or any(not 0.0 < a < 1.0 for a in alphas):
            raise ValueError(f"alphas must be numbers in (0, 1), got {alphas}")
        n_mala = check_positive_int(n_mala, "n_mala", minimum=0)
        if n_mala == 0 and not mwg_init:
            raise ValueError("n_mala=0 needs mwg_init=True (otherwise the chain never moves)")
        self.alphas = alphas
        self.n_mala = n_mala
        if step_size is None or np.ndim(step_size) == 0:
            steps = [check_step_size(step_size, 0.1)] * len(alphas)
        else:
            steps = [check_step_size(s, 0.1) for s in step_size]
            if len(steps) != len(alphas):
                raise ValueError(
                    f"step_size needs one value per noise level ({len(alphas)}), got {len(steps)}"
                )
        self.step_size = steps
        self.target_accept = check_target_accept(target_accept)
        self.mwg_init = bool(mwg_init)
        self.sweeps_per_level = check_positive_int(sweeps_per_level, "sweeps_per_level")
        self._sweep = CompiledFn(digs_sweep)
        self._block = CompiledFn(digs_block)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            alphas=self.alphas,
            n_mala=self.n_mala,
            step_size=self.step_size,
            target_accept=self.target_accept,
            mwg_init=self.mwg_init,
            sweeps_per_level=self.sweeps_per_level,
        )
        return cfg

    def _cost(self, target: Target) -> tuple[int, int]:
        return (0, self.n_mala + int(self.mwg_init))

    def _start(self, target: Target, x0: Tensor, lp: Tensor, grad: Tensor | None, plan: RunPlan):
        self._sweep.enabled = self._block.enabled = plan.compiled
        self._fn = target.log_prob_and_grad
        dt, dev = x0.dtype, x0.device
        self._dtype, self._device = dt, dev
        self._alpha_t = [torch.tensor(a, dtype=dt, device=dev) for a in self.alphas]
        self._sigma_t = [
            torch.tensor(math.sqrt(1 - a * a), dtype=dt, device=dev) for a in self.alphas
        ]
        levels = len(self.alphas)
        self._adapter = DualAveraging(self.step_size, self.target_accept)
        self._eps = [torch.tensor(s, dtype=dt, device=dev) for s in self.step_size]
        self._init_acc = torch.zeros(levels, dtype=torch.float64, device=dev)
        self._mala_acc = torch.zeros(levels, dtype=torch.float64, device=dev)
        self._level_steps = [0] * levels
        return (x0, lp, grad)

    def _min_warmup(self) -> int:
        # two full cycles through the noise levels, so that every level's step size adapts
        return 2 * len(self.alphas) * self.sweeps_per_level if len(self.alphas) > 1 else 0

    def _level(self, t: int) -> int:
        """Noise level of sweep ``t`` (1-based)."""
        return ((t - 1) // self.sweeps_per_level) % len(self.alphas)

    def _draw(self, n: int, d: int) -> tuple[Tensor, Tensor]:
        """Random numbers of one sweep: ``(K+2) x n x d`` normals, ``(K+1) x n`` log-uniforms."""
        g, dt, dev = self._gen, self._dtype, self._device
        normals = torch.randn(2 + self.n_mala, n, d, generator=g, dtype=dt, device=dev)
        log_u = torch.log(torch.rand(1 + self.n_mala, n, generator=g, dtype=dt, device=dev))
        return normals, log_u

    def _transition(self, state, t: int, adapting: bool):
        x, lp, grad = state
        n, d = x.shape
        lev = self._level(t)
        k = self.n_mala
        normals, log_u = self._draw(n, d)
        if adapting:
            eps = self._adapter.step_size()[lev].to(self._dtype).to(self._device)
        else:
            eps = self._eps[lev]
        x, lp, grad, p0, p1 = self._sweep(
            self._fn,
            x,
            lp,
            grad,
            self._alpha_t[lev],
            self._sigma_t[lev],
            eps,
            normals[0],
            normals[1],
            log_u[0],
            normals[2:],
            log_u[1:],
            k,
            self.mwg_init,
        )
        self._count(0, n * (k + int(self.mwg_init)))
        if adapting and k > 0:
            self._adapter.update(p1.mean(), group=lev)
        elif not adapting:
            self._init_acc[lev] += p0.mean().double()
            self._mala_acc[lev] += p1.mean().double()
            self._level_steps[lev] += 1
        return (x, lp, grad)

    def _advance(self, state, t: int, n_sweeps: int):
        x, lp, grad = state
        n, d = x.shape
        levels = [self._level(t + i) for i in range(n_sweeps)]
        draws = [self._draw(n, d) for _ in range(n_sweeps)]
        normals = torch.stack([dr[0] for dr in draws])
        log_u = torch.stack([dr[1] for dr in draws])
        pick = lambda ts: torch.stack([ts[lv] for lv in levels])  # noqa: E731
        x, lp, grad, p0, p1 = self._block(
            self._fn,
            x,
            lp,
            grad,
            pick(self._alpha_t),
            pick(self._sigma_t),
            pick(self._eps),
            normals,
            log_u,
            self.n_mala,
            self.mwg_init,
            n_sweeps,
        )
        self._count(0, n * n_sweeps * (self.n_mala + int(self.mwg_init)))
        idx = torch.tensor(levels, device=self._device)
        self._init_acc.index_add_(0, idx, p0.double())
        self._mala_acc.index_add_(0, idx, p1.double())
        for lv in levels:
            self._level_steps[lv] += 1
        return (x, lp, grad)

    def _end_warmup(self) -> None:
        final = self._adapter.final_step_size()
        self._eps = [torch.tensor(float(s), dtype=self._dtype, device=self._device) for s in final]

    def _positions(self, state) -> Tensor:
        return state[0]

    def _diagnostics(self) -> dict[str, Any]:
        # a level with no sweep after warm-up has no rate (NaN): it was reported as 0.0 and
        # pulled the overall acceptance_rate down (halved with two levels)
        ran = [s > 0 for s in self._level_steps]
        steps = torch.tensor([max(1, s) for s in self._level_steps], dtype=torch.float64)
        init = [a if r else math.nan for a, r in zip((self._init_acc.cpu() / steps).tolist(), ran)]
        mala = [a if r else math.nan for a, r in zip((self._mala_acc.cpu() / steps).tolist(), ran)]
        mala_ran = [a for a, r in zip(mala, ran) if r]
        rates = {}
        if any(ran):
            if self.mwg_init:
                rates["of the initialisation (best level)"] = max(a for a, r in zip(init, ran) if r)
            if self.n_mala:
                rates["of MALA (best level)"] = max(mala_ran)
        warn_if_stuck(
            self.name,
            rates,
            "MALA step sizes too large (adapt=True tunes them during warm-up) and alphas too "
            "small for the initialisation (a larger alpha proposes closer to the chain)?",
        )
        return {
            # the mean over the levels that ran after warm-up
            "acceptance_rate": sum(mala_ran) / len(mala_ran) if self.n_mala and mala_ran else None,
            "init_acceptance_per_level": init if self.mwg_init else None,
            "mala_acceptance_per_level": mala if self.n_mala else None,
            "step_size_per_level": [float(e) for e in self._eps],
            "alphas": self.alphas,
        }
