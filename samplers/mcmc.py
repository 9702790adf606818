"""Plain MCMC samplers over batches of chains: random-walk Metropolis, MALA and HMC.

Each wraps one :mod:`samplers.kernels` kernel with the run loop, budgets and warm-up step-size
adaptation of :class:`~samplers.base.Sampler`. One step size is shared by all chains and
adapted by dual averaging on the chain-averaged acceptance probability during warm-up.

Example:
    >>> import samplers
    >>> from samplers.targets import Gaussian
    >>> import torch
    >>> sampler = samplers.MALA(n_chains=100, burn_in=200, thin=5)
    >>> res = sampler.run(Gaussian(torch.zeros(2)), 1000, seed=0)
    >>> res.samples.shape
    torch.Size([1000, 2])
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

from .adaptation import DualAveraging, check_target_accept
from .base import RunPlan, Sampler, warn_if_stuck
from .kernels import ChainState, HMCKernel, Kernel, MALAKernel, RandomWalkKernel, make_kernel
from .targets.base import Target

__all__ = ["MCMC", "RandomWalkMetropolis", "MALA", "HMC", "check_step_size", "check_target_accept"]


def check_step_size(step_size: float | None, default: float) -> float:
    """Validates a step size (``None`` gives ``default``): a positive finite real number
    (Python, NumPy or a one-element tensor)."""
    if step_size is None:
        return float(default)
    if isinstance(step_size, torch.Tensor) and step_size.numel() == 1:
        step_size = step_size.item()
    if (
        isinstance(step_size, (bool, np.bool_))
        or not isinstance(step_size, (int, float, np.integer, np.floating))
        or not step_size > 0
    ):
        raise ValueError(f"step_size must be a positive number, got {step_size!r}")
    if not np.isfinite(step_size):
        raise ValueError("step_size must be finite")
    return float(step_size)


class MCMC(Sampler):
    """A single kernel run on a batch of chains.

    Args:
        kernel: a :class:`~samplers.kernels.Kernel` or its name (``"rwm"``, ``"mala"``,
            ``"hmc"``).
        step_size: initial step size (kernel default if ``None``); with ``adapt=False`` it is
            used throughout.
        target_accept: acceptance rate aimed at by adaptation (kernel default if ``None``).
        **kwargs: schedule options of :class:`~samplers.base.Sampler` (``n_chains``,
            ``budget``, ``burn_in``, ``thin``, ``init``, ``compile``, ...).
    """

    def __init__(
        self,
        kernel: Kernel | str,
        step_size: float | None = None,
        target_accept: float | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel = make_kernel(kernel)
        self.name = self.kernel.name
        self.step_size = check_step_size(step_size, self.kernel.default_step_size)
        self.target_accept = check_target_accept(target_accept, self.kernel.target_accept)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            kernel=self.kernel.name, step_size=self.step_size, target_accept=self.target_accept
        )
        if isinstance(self.kernel, HMCKernel):
            cfg["n_leapfrog"] = self.kernel.n_leapfrog
        return cfg

    def _cost(self, target: Target) -> tuple[int, int]:
        return self.kernel.cost()

    def _needs_grad(self) -> bool:
        return self.kernel.needs_grad

    def _start(self, target: Target, x0: Tensor, lp: Tensor, grad: Tensor | None, plan: RunPlan):
        self.kernel.set_compile(plan.compiled)
        self._fn = target.log_prob_and_grad if self.kernel.needs_grad else target.log_prob
        self._adapter = DualAveraging(self.step_size, self.target_accept)
        self._dtype, self._device = x0.dtype, x0.device
        self._eps = torch.tensor(self.step_size, dtype=x0.dtype, device=x0.device)
        self._acc_sum = torch.zeros((), dtype=torch.float64, device=x0.device)
        self._acc_steps = 0
        return ChainState(x0, lp, grad)

    def _transition(self, state: ChainState, t: int, adapting: bool) -> ChainState:
        if adapting:
            eps = self._adapter.step_size()[0].to(self._dtype).to(self._device)
        else:
            eps = self._eps
        state, info = self.kernel.step(state, self._fn, eps, self._gen)
        self._count(info.n_log_prob, info.n_grad)
        if adapting:
            self._adapter.update(info.accept_prob.mean())
        else:
            self._acc_sum += info.accept_prob.sum()
            self._acc_steps += info.accept_prob.shape[0]
        return state

    def _advance(self, state: ChainState, t: int, n: int) -> ChainState:
        state, acc, n_lp, n_grad = self.kernel.step_many(state, self._fn, self._eps, self._gen, n)
        self._count(n_lp, n_grad)
        self._acc_sum += acc.sum()
        self._acc_steps += acc.shape[0] * n
        return state

    def _end_warmup(self) -> None:
        eps = float(self._adapter.final_step_size()[0])
        self._eps = torch.tensor(eps, dtype=self._dtype, device=self._device)

    def _positions(self, state: ChainState) -> Tensor:
        return state.position

    def _diagnostics(self) -> dict[str, Any]:
        rate = float(self._acc_sum) / max(1, self._acc_steps)
        warn_if_stuck(
            self.name,
            {"of its steps": rate} if self._acc_steps else {},
            f"step size {float(self._eps):.3g} too large? adapt=True tunes it during warm-up",
        )
        return {"acceptance_rate": rate, "step_size": float(self._eps)}


class RandomWalkMetropolis(MCMC):
    """Gaussian random-walk Metropolis (gradient-free), step size adapted to 0.234 acceptance.

    Args:
        step_size: initial proposal standard deviation.
        **kwargs: see :class:`MCMC`.
    """

    def __init__(self, step_size: float | None = None, **kwargs: Any) -> None:
        super().__init__(RandomWalkKernel(), step_size=step_size, **kwargs)


class MALA(MCMC):
    """Metropolis-adjusted Langevin algorithm (Roberts & Tweedie, 1996), step size adapted to
    0.574 acceptance.

    Args:
        step_size: initial step size ``h`` of ``x' = x + h grad + sqrt(2h) noise``.
        **kwargs: see :class:`MCMC`.
    """

    def __init__(self, step_size: float | None = None, **kwargs: Any) -> None:
        super().__init__(MALAKernel(), step_size=step_size, **kwargs)


class HMC(MCMC):
    """Hamiltonian Monte Carlo (Neal, 2011) with ``n_leapfrog`` steps per transition, step size
    adapted to 0.65 acceptance.

    Args:
        step_size: initial leapfrog step size.
        n_leapfrog: leapfrog steps (gradient evaluations) per transition.
        **kwargs: see :class:`MCMC`.
    """

    def __init__(self, step_size: float | None = None, n_leapfrog: int = 10, **kwargs: Any) -> None:
        super().__init__(HMCKernel(n_leapfrog), step_size=step_size, **kwargs)
