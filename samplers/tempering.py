"""Parallel tempering (replica exchange) over batches of independent replica sets.

Each of ``n_chains`` chains is a set of ``K`` replicas at temperatures ``1 = T_0 < ... <
T_{K-1}`` targeting ``p(x)^(1 / T_k)``. A transition (a *sweep*) moves every replica with the
inner kernel (all ``n_chains * K`` replicas in one batch) and then proposes swaps between
neighbouring temperatures, alternating even pairs ``(0,1), (2,3), ...`` and odd pairs ``(1,2),
...`` on successive sweeps (the deterministic even-odd scheme of Okabe et al., 2001; Syed et al.,
2022). A swap of ``x_k`` and ``x_{k+1}`` is accepted with probability
``min(1, exp((beta_k - beta_{k+1}) (log p(x_{k+1}) - log p(x_k))))``.

Step sizes are adapted per temperature (dual averaging on the acceptance averaged over the
chains at that temperature). Swap acceptance rates per neighbouring pair are reported.
Only the ``T = 1`` replicas are kept as samples. Reference: Swendsen & Wang (1986); Earl & Deem
(2005), *Parallel tempering: theory, applications, and new perspectives*.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor

from probrec.checks import check_positive_int, check_real

from .adaptation import DualAveraging
from .base import RunPlan, Sampler, warn_if_stuck
from .kernels import ChainState, Kernel, make_kernel
from .mcmc import check_step_size, check_target_accept
from .targets.base import Target

__all__ = ["ParallelTempering", "geometric_ladder", "swap_step"]


def geometric_ladder(n_temperatures: int, max_temperature: float) -> list[float]:
    """``T_k = max_temperature^(k / (K - 1))``, ``k = 0 .. K-1`` (``[1.0]`` for ``K = 1``)."""
    if n_temperatures == 1:
        return [1.0]
    return [
        math.exp(math.log(max_temperature) * k / (n_temperatures - 1))
        for k in range(n_temperatures)
    ]


def swap_step(
    x: Tensor,
    lp: Tensor,
    grad: Tensor | None,
    betas: Tensor,
    parity: int,
    log_u: Tensor,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """Proposes swaps between neighbouring temperatures of one parity.

    Args:
        x: ``K x n x d`` replica states (temperature-major); ``lp``: ``K x n`` untempered
            log-densities; ``grad``: ``K x n x d`` or ``None``.
        betas: ``K`` inverse temperatures (decreasing).
        parity: 0 for pairs ``(0,1), (2,3), ...``, 1 for ``(1,2), (3,4), ...``.
        log_u: ``(K-1) x n`` log-uniform draws.

    Returns:
        ``(x, lp, grad, swap_prob)`` with ``swap_prob`` the ``(K-1) x n`` acceptance
        probabilities (0 for pairs of the other parity).
    """
    k = x.shape[0]
    pair = torch.arange(k - 1, device=x.device)
    active = (pair % 2 == parity)[:, None]
    dbeta = (betas[:-1] - betas[1:])[:, None].to(lp)
    log_a = dbeta * (lp[1:] - lp[:-1])
    log_a = torch.where(torch.isnan(log_a), torch.full_like(log_a, -math.inf), log_a)
    prob = torch.where(active, torch.exp(torch.clamp(log_a, max=0.0)), torch.zeros_like(log_a))
    acc = active & (log_u < log_a)
    # the pairs of one parity are disjoint, so the permutation is a set of transpositions
    perm = torch.arange(k, device=x.device)[:, None].expand(k, x.shape[1]).clone()
    a = acc.long()
    perm[:-1] += a
    perm[1:] -= a
    x = torch.gather(x, 0, perm[..., None].expand_as(x))
    lp = torch.gather(lp, 0, perm)
    if grad is not None:
        grad = torch.gather(grad, 0, perm[..., None].expand_as(grad))
    return x, lp, grad, prob


class ParallelTempering(Sampler):
    """Parallel tempering with any inner kernel.

    Args:
        kernel: inner kernel or its name (``"hmc"`` by default, as in the DiGS paper's baseline;
            ``"mala"``, ``"rwm"``).
        n_temperatures: number of temperatures ``K`` of the geometric ladder.
        max_temperature: hottest temperature of the geometric ladder.
        temperatures: explicit increasing ladder starting at 1 (overrides the two above).
        step_size: initial step size at every temperature (kernel default if ``None``).
        target_accept: acceptance rate aimed at by adaptation (kernel default if ``None``).
        n_leapfrog: leapfrog steps when ``kernel="hmc"``.
        **kwargs: schedule options of :class:`~samplers.base.Sampler`. Budgets count every
            replica: a sweep costs ``K`` times the inner kernel's evaluations per chain.
    """

    name = "pt"

    def __init__(
        self,
        kernel: Kernel | str = "hmc",
        n_temperatures: int = 5,
        max_temperature: float = 1000.0,
        temperatures: Sequence[float] | None = None,
        step_size: float | None = None,
        target_accept: float | None = None,
        n_leapfrog: int = 10,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.kernel = make_kernel(kernel, **({"n_leapfrog": n_leapfrog} if kernel == "hmc" else {}))
        if temperatures is None:
            n_temperatures = check_positive_int(n_temperatures, "n_temperatures")
            max_temperature = check_real(max_temperature, "max_temperature", minimum=1.0)
            temperatures = geometric_ladder(n_temperatures, max_temperature)
        temps = [float(t) for t in temperatures]
        if not temps or abs(temps[0] - 1.0) > 1e-12:
            raise ValueError(f"temperatures must start at 1.0, got {temps[:1]}")
        if any(not math.isfinite(t) for t in temps) or any(
            b <= a for a, b in zip(temps, temps[1:])
        ):
            raise ValueError(f"temperatures must be finite and strictly increasing, got {temps}")
        self.temperatures = temps
        self.step_size = check_step_size(step_size, self.kernel.default_step_size)
        self.target_accept = check_target_accept(target_accept, self.kernel.target_accept)

    @property
    def n_temperatures(self) -> int:
        return len(self.temperatures)

    def config(self) -> dict[str, Any]:
        cfg = super().config()
        cfg.update(
            kernel=self.kernel.name,
            temperatures=self.temperatures,
            step_size=self.step_size,
            target_accept=self.target_accept,
        )
        if hasattr(self.kernel, "n_leapfrog"):
            cfg["n_leapfrog"] = self.kernel.n_leapfrog
        return cfg

    def _cost(self, target: Target) -> tuple[int, int]:
        c = self.kernel.cost()
        return (c[0] * self.n_temperatures, c[1] * self.n_temperatures)

    def _needs_grad(self) -> bool:
        return self.kernel.needs_grad

    def _start(self, target: Target, x0: Tensor, lp: Tensor, grad: Tensor | None, plan: RunPlan):
        k, n = self.n_temperatures, x0.shape[0]
        self.kernel.set_compile(plan.compiled)
        self._fn = target.log_prob_and_grad if self.kernel.needs_grad else target.log_prob
        self._n = n
        dt, dev = x0.dtype, x0.device
        self._betas = torch.tensor([1.0 / t for t in self.temperatures], dtype=dt, device=dev)
        self._beta_rows = self._betas.repeat_interleave(n) if k > 1 else None
        self._adapter = DualAveraging([self.step_size] * k, self.target_accept)
        self._dtype, self._device = dt, dev
        self._eps_rows = self._rows(torch.full((k,), self.step_size, dtype=torch.float64))
        self._acc_sum = torch.zeros(k, dtype=torch.float64, device=dev)
        self._acc_steps = 0
        self._swap_sum = torch.zeros(max(k - 1, 0), dtype=torch.float64, device=dev)
        self._swap_tries = torch.zeros(max(k - 1, 0), dtype=torch.float64, device=dev)
        # every replica starts at its chain's starting state: one evaluation serves all of them
        rep = lambda t: None if t is None else t.repeat((k,) + (1,) * (t.dim() - 1))  # noqa: E731
        return ChainState(rep(x0), rep(lp), rep(grad))

    def _rows(self, per_temp: Tensor) -> Tensor:
        return per_temp.to(self._dtype).to(self._device).repeat_interleave(self._n)

    def _transition(self, state: ChainState, t: int, adapting: bool) -> ChainState:
        k, n = self.n_temperatures, self._n
        eps = self._rows(self._adapter.step_size()) if adapting else self._eps_rows
        state, info = self.kernel.step(state, self._fn, eps, self._gen, beta=self._beta_rows)
        self._count(info.n_log_prob, info.n_grad)
        acc_t = info.accept_prob.reshape(k, n).mean(1)
        if adapting:
            self._adapter.update(acc_t)
        else:
            self._acc_sum += acc_t.double()
            self._acc_steps += 1
        if k > 1:
            parity = (t - 1) % 2
            log_u = torch.log(
                torch.rand(k - 1, n, generator=self._gen, dtype=self._dtype, device=self._device)
            )
            g = None if state.grad is None else state.grad.reshape(k, n, -1)
            x, lp, g, prob = swap_step(
                state.position.reshape(k, n, -1),
                state.log_prob.reshape(k, n),
                g,
                self._betas,
                parity,
                log_u,
            )
            if not adapting:
                self._swap_sum += prob.sum(1).double()
                self._swap_tries += (
                    torch.arange(k - 1, device=self._device) % 2 == parity
                ).double() * n
            state = ChainState(
                x.reshape(k * n, -1), lp.reshape(-1), None if g is None else g.reshape(k * n, -1)
            )
        return state

    def _advance(self, state: ChainState, t: int, n: int) -> ChainState:
        if self.n_temperatures > 1:
            return super()._advance(state, t, n)
        # one temperature: no swaps, the fused path of the inner kernel
        state, acc, n_lp, n_grad = self.kernel.step_many(
            state, self._fn, self._eps_rows, self._gen, n
        )
        self._count(n_lp, n_grad)
        self._acc_sum += acc.mean().double()
        self._acc_steps += n
        return state

    def _end_warmup(self) -> None:
        self._eps_rows = self._rows(self._adapter.final_step_size())
        self._final_eps = self._adapter.final_step_size()

    def _positions(self, state: ChainState) -> Tensor:
        return state.position[: self._n]

    def _diagnostics(self) -> dict[str, Any]:
        steps = max(1, self._acc_steps)
        # a pair never proposed after warm-up (one sweep proposes one parity) has no rate:
        # NaN, not 0.0, and the mean is over the pairs that were proposed
        tried = (self._swap_tries > 0).tolist()
        rates = (self._swap_sum / self._swap_tries.clamp_min(1)).tolist()
        swap = [r if ok else math.nan for r, ok in zip(rates, tried)]
        swap_tried = [r for r, ok in zip(rates, tried) if ok]
        # swaps only exchange states between temperatures: without local moves the set of
        # states is the starting one
        warn_if_stuck(
            self.name,
            {"of local moves (best temperature)": float(self._acc_sum.max()) / steps}
            if self._acc_steps
            else {},
            "step sizes too large? adapt=True tunes them per temperature during warm-up",
        )
        return {
            "acceptance_rate": float(self._acc_sum[0]) / steps,
            "acceptance_rate_per_temperature": (self._acc_sum / steps).tolist(),
            "swap_rate_per_pair": swap,
            "swap_rate": sum(swap_tried) / len(swap_tried) if swap_tried else None,
            "step_size_per_temperature": self._final_eps.tolist(),
            "temperatures": self.temperatures,
        }
