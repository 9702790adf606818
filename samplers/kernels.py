"""MCMC transition kernels over batches of chains: random-walk Metropolis, MALA and HMC.

Design (after blackjax): a kernel is an ``init`` / ``step`` pair over a :class:`ChainState`;
every step returns a :class:`StepInfo` with the acceptance probability of each chain and the
number of target evaluations it spent. The maths of one step is a pure function of tensors
(``*_transition``), with all randomness drawn beforehand, so the same function runs eagerly or
compiled by ``torch.compile`` (see :mod:`samplers.compile`).

Every kernel targets ``beta * log p(x)`` where ``fn(x) -> (log p, grad log p)`` and ``beta`` is a
per-chain inverse temperature (``None`` for 1): the state stores the *untempered* ``log p`` and
its gradient, which parallel tempering needs for its swap moves.

Proposals whose log-density or gradient is not finite are rejected (their acceptance
probability is 0), so NaN or inf never enter the chain.

References:
    Roberts & Tweedie (1996), MALA; Neal (2011), *MCMC using Hamiltonian dynamics*;
    Cabezas et al. (2024), *BlackJAX*.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import Tensor

from probrec.checks import check_positive_int

from .compile import CompiledFn

__all__ = [
    "ChainState",
    "StepInfo",
    "Kernel",
    "RandomWalkKernel",
    "MALAKernel",
    "HMCKernel",
    "rwm_transition",
    "mala_transition",
    "hmc_transition",
    "run_block",
    "make_kernel",
]

LogProbGrad = Callable[..., tuple[Tensor, Tensor]]


@dataclass
class ChainState:
    """State of ``n`` chains.

    Attributes:
        position: ``n x d`` states.
        log_prob: ``n`` untempered log-densities at ``position``.
        grad: ``n x d`` gradients of the untempered log-density (``None`` for gradient-free
            kernels).
    """

    position: Tensor
    log_prob: Tensor
    grad: Tensor | None


@dataclass
class StepInfo:
    """What one step of ``n`` chains did.

    Attributes:
        accept_prob: ``n`` Metropolis-Hastings acceptance probabilities (0 for non-finite
            proposals).
        accepted: ``n`` booleans.
        n_log_prob: rows of log-density-only evaluations spent.
        n_grad: rows of log-density-and-gradient evaluations spent.
    """

    accept_prob: Tensor
    accepted: Tensor
    n_log_prob: int
    n_grad: int


def _finite_rows(*ts: Tensor) -> Tensor:
    ok = torch.isfinite(ts[0])
    for t in ts[1:]:
        ok = ok & torch.isfinite(t).all(-1) if t.dim() > 1 else ok & torch.isfinite(t)
    return ok


def _accept(log_alpha: Tensor, ok: Tensor, log_u: Tensor) -> tuple[Tensor, Tensor]:
    """Acceptance probabilities and decisions; non-finite or NaN ratios count as rejection."""
    neg_inf = torch.full_like(log_alpha, -math.inf)
    log_alpha = torch.where(ok & ~torch.isnan(log_alpha), log_alpha, neg_inf)
    accept_prob = torch.exp(torch.clamp(log_alpha, max=0.0))
    return accept_prob, log_u < log_alpha


def _keep(
    acc: Tensor, prob: Tensor, proposed: tuple[Tensor, Tensor, Tensor], current: tuple
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """``(x, lp, grad, accept_prob, accepted)``: the proposed rows where accepted, else current."""
    acc_c = acc[:, None]
    x = torch.where(acc_c, proposed[0], current[0])
    lp = torch.where(acc, proposed[1], current[1])
    grad = torch.where(acc_c, proposed[2], current[2])
    return x, lp, grad, prob, acc


def _col(t: Tensor) -> Tensor:
    return t.unsqueeze(-1) if t.dim() == 1 else t


def rwm_transition(
    fn: Callable[..., Tensor],
    fn_args: tuple,
    x: Tensor,
    lp: Tensor,
    grad: None,
    beta: Tensor | None,
    step_size: Tensor,
    noise: Tensor,
    log_u: Tensor,
    n_leapfrog: int = 0,
) -> tuple[Tensor, Tensor, None, Tensor, Tensor]:
    """One random-walk Metropolis step: ``x' = x + step_size * noise``.

    Args:
        fn: ``fn(x, *fn_args) -> log p`` (``n x d`` -> ``n``).
        fn_args: extra arguments of ``fn``.
        x: ``n x d`` states; ``lp``: their ``n`` log-densities; ``grad``: unused (``None``).
        beta: ``n`` inverse temperatures or ``None``.
        step_size: ``n`` (or scalar) proposal scales.
        noise: ``n x d`` standard normal draws; ``log_u``: ``n`` log-uniform draws.
        n_leapfrog: unused (uniform signature of the transitions).

    Returns:
        ``(x, lp, None, accept_prob, accepted)`` after the step.
    """
    prop = x + _col(step_size) * noise
    lp_p = fn(prop, *fn_args)
    diff = lp_p - lp
    log_alpha = diff if beta is None else beta * diff
    prob, acc = _accept(log_alpha, _finite_rows(lp_p, prop), log_u)
    return torch.where(acc[:, None], prop, x), torch.where(acc, lp_p, lp), None, prob, acc


def mala_transition(
    fn: LogProbGrad,
    fn_args: tuple,
    x: Tensor,
    lp: Tensor,
    grad: Tensor,
    beta: Tensor | None,
    step_size: Tensor,
    noise: Tensor,
    log_u: Tensor,
    n_leapfrog: int = 0,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One MALA step on ``beta * log p``.

    Proposal ``x' = x + h beta grad(x) + sqrt(2 h) noise``, accepted with probability
    ``min(1, pi(x') q(x | x') / (pi(x) q(x' | x)))``, ``log q(y | x) = -||y - x - h beta
    grad(x)||^2 / (4 h)`` (Roberts & Tweedie, 1996).

    Args:
        fn: ``fn(x, *fn_args) -> (log p, grad)``.
        fn_args: extra arguments of ``fn``.
        x, lp, grad: current ``n x d`` states, ``n`` log-densities, ``n x d`` gradients.
        beta: ``n`` inverse temperatures or ``None``.
        step_size: ``n`` (or scalar) step sizes ``h``.
        noise: ``n x d`` standard normal draws; ``log_u``: ``n`` log-uniform draws.
        n_leapfrog: unused (uniform signature of the transitions).

    Returns:
        ``(x, lp, grad, accept_prob, accepted)`` after the step.
    """
    h = _col(step_size)
    b = None if beta is None else _col(beta)
    drift = grad if b is None else b * grad
    prop = x + h * drift + torch.sqrt(2 * h) * noise
    lp_p, grad_p = fn(prop, *fn_args)
    drift_p = grad_p if b is None else b * grad_p
    fwd = prop - x - h * drift
    bwd = x - prop - h * drift_p
    log_q = ((fwd * fwd).sum(-1) - (bwd * bwd).sum(-1)) / (4 * h.squeeze(-1))
    diff = lp_p - lp
    log_alpha = (diff if beta is None else beta * diff) + log_q
    prob, acc = _accept(log_alpha, _finite_rows(lp_p, grad_p, prop), log_u)
    return _keep(acc, prob, (prop, lp_p, grad_p), (x, lp, grad))


def hmc_transition(
    fn: LogProbGrad,
    fn_args: tuple,
    x: Tensor,
    lp: Tensor,
    grad: Tensor,
    beta: Tensor | None,
    step_size: Tensor,
    momentum: Tensor,
    log_u: Tensor,
    n_leapfrog: int,
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """One HMC step: ``n_leapfrog`` leapfrog steps with identity mass, then Metropolis.

    Hamiltonian ``H(x, p) = -beta log p(x) + ||p||^2 / 2`` (Neal, 2011).

    Args:
        fn: ``fn(x, *fn_args) -> (log p, grad)``.
        fn_args: extra arguments of ``fn``.
        x, lp, grad: current states, log-densities and gradients.
        beta: ``n`` inverse temperatures or ``None``.
        step_size: ``n`` (or scalar) leapfrog step sizes.
        momentum: ``n x d`` standard normal initial momenta; ``log_u``: ``n`` log-uniforms.
        n_leapfrog: number of leapfrog steps (gradient evaluations).

    Returns:
        ``(x, lp, grad, accept_prob, accepted)`` after the step.
    """
    h = _col(step_size)
    b = None if beta is None else _col(beta)
    q, g = x, grad
    p = momentum + 0.5 * h * (g if b is None else b * g)
    lp_q = lp
    for i in range(n_leapfrog):
        q = q + h * p
        lp_q, g = fn(q, *fn_args)
        scale = h if i < n_leapfrog - 1 else 0.5 * h
        p = p + scale * (g if b is None else b * g)
    diff = lp_q - lp
    log_alpha = (diff if beta is None else beta * diff) - 0.5 * (
        (p * p).sum(-1) - (momentum * momentum).sum(-1)
    )
    prob, acc = _accept(log_alpha, _finite_rows(lp_q, g, q, p), log_u)
    return _keep(acc, prob, (q, lp_q, g), (x, lp, grad))


def run_block(
    transition: Callable[..., tuple],
    fn: Callable,
    fn_args: tuple,
    x: Tensor,
    lp: Tensor,
    grad: Tensor | None,
    beta: Tensor | None,
    step_size: Tensor,
    noise: Tensor,
    log_u: Tensor,
    n_leapfrog: int,
    n_steps: int,
) -> tuple[Tensor, Tensor, Tensor | None, Tensor]:
    """``n_steps`` transitions in one call (one compiled graph on the compiled path).

    Args:
        transition: one of the ``*_transition`` functions.
        noise: ``n_steps x n x d`` draws; ``log_u``: ``n_steps x n`` draws; other arguments as
            in the transition.

    Returns:
        ``(x, lp, grad, accept_prob_sum)`` with the acceptance probabilities summed over steps.
    """
    acc = torch.zeros_like(lp)
    for i in range(n_steps):
        x, lp, grad, prob, _ = transition(
            fn, fn_args, x, lp, grad, beta, step_size, noise[i], log_u[i], n_leapfrog
        )
        acc = acc + prob
    return x, lp, grad, acc


class Kernel:
    """Base class of the transition kernels.

    Subclasses set ``transition`` (a pure ``*_transition`` function) and the class attributes.

    Attributes:
        name: short name.
        needs_grad: whether the kernel uses gradients.
        target_accept: acceptance rate that step-size adaptation aims at.
        default_step_size: starting step size before adaptation.
    """

    name = "kernel"
    needs_grad = True
    target_accept = 0.5
    default_step_size = 0.1
    n_leapfrog = 0
    transition: Callable[..., tuple] = staticmethod(mala_transition)

    def __init__(self, compile: bool = False) -> None:
        self._compiled = compile
        self._step_fn = CompiledFn(type(self).transition)
        self._block_fn = CompiledFn(run_block)

    def cost(self) -> tuple[int, int]:
        """``(log-density evaluations, gradient evaluations)`` per chain and step."""
        if not self.needs_grad:
            return (1, 0)
        return (0, max(1, self.n_leapfrog))

    def set_compile(self, enabled: bool) -> None:
        """Switches the compiled step path on or off (eager fallback stays automatic)."""
        self._compiled = bool(enabled)
        self._step_fn.enabled = self._block_fn.enabled = self._compiled

    def init(self, position: Tensor, fn: Callable, fn_args: tuple = ()) -> ChainState:
        """Evaluates the target at ``position`` (``n x d``) and returns the state."""
        if self.needs_grad:
            lp, g = fn(position, *fn_args)
            return ChainState(position, lp, g)
        return ChainState(position, fn(position, *fn_args), None)

    @staticmethod
    def _draw(x: Tensor, generator: torch.Generator) -> tuple[Tensor, Tensor]:
        """The random numbers of one step: ``n x d`` normals and ``n`` log-uniforms."""
        noise = torch.randn(x.shape, generator=generator, dtype=x.dtype, device=x.device)
        u = torch.rand(x.shape[0], generator=generator, dtype=x.dtype, device=x.device)
        return noise, torch.log(u)

    def step(
        self,
        state: ChainState,
        fn: Callable,
        step_size: Tensor,
        generator: torch.Generator,
        beta: Tensor | None = None,
        fn_args: tuple = (),
    ) -> tuple[ChainState, StepInfo]:
        """One transition of every chain.

        Args:
            state: current state of ``n`` chains.
            fn: ``fn(x, *fn_args)`` returning ``(log p, grad)`` (or ``log p`` for gradient-free
                kernels); the same function for the whole run (it is compiled once).
            step_size: ``n``-dim (or 0-dim) tensor of step sizes.
            generator: the random stream.
            beta: ``n`` inverse temperatures, or ``None`` for the untempered target.
            fn_args: extra tensor arguments of ``fn``.

        Returns:
            ``(new_state, info)``.
        """
        x = state.position
        noise, log_u = self._draw(x, generator)
        self._step_fn.enabled = self._compiled
        pos, lp, g, prob, acc = self._step_fn(
            fn,
            fn_args,
            x,
            state.log_prob,
            state.grad,
            beta,
            step_size,
            noise,
            log_u,
            self.n_leapfrog,
        )
        c_lp, c_g = self.cost()
        n = x.shape[0]
        return ChainState(pos, lp, g), StepInfo(prob, acc, c_lp * n, c_g * n)

    def step_many(
        self,
        state: ChainState,
        fn: Callable,
        step_size: Tensor,
        generator: torch.Generator,
        n_steps: int,
        beta: Tensor | None = None,
        fn_args: tuple = (),
    ) -> tuple[ChainState, Tensor, int, int]:
        """``n_steps`` transitions with a fixed step size, fused into one call.

        Random numbers are drawn in the same order as ``n_steps`` calls of :meth:`step`, so both
        paths give the same chains.

        Returns:
            ``(new_state, accept_prob_sum, n_log_prob, n_grad)``: the acceptance probabilities
            summed over the steps (``n``) and the evaluations spent.
        """
        x = state.position
        draws = [self._draw(x, generator) for _ in range(n_steps)]
        noise = torch.stack([d[0] for d in draws])
        log_u = torch.stack([d[1] for d in draws])
        self._block_fn.enabled = self._compiled
        pos, lp, g, acc = self._block_fn(
            type(self).transition,
            fn,
            fn_args,
            x,
            state.log_prob,
            state.grad,
            beta,
            step_size,
            noise,
            log_u,
            self.n_leapfrog,
            n_steps,
        )
        c_lp, c_g = self.cost()
        n = x.shape[0] * n_steps
        return ChainState(pos, lp, g), acc, c_lp * n, c_g * n


class RandomWalkKernel(Kernel):
    """Gaussian random-walk Metropolis (gradient-free); adapts to 0.234 acceptance."""

    name = "rwm"
    needs_grad = False
    target_accept = 0.234
    default_step_size = 0.5
    transition = staticmethod(rwm_transition)


class MALAKernel(Kernel):
    """Metropolis-adjusted Langevin algorithm; adapts to 0.574 acceptance (Roberts & Rosenthal,
    1998)."""

    name = "mala"
    target_accept = 0.574
    default_step_size = 0.1
    transition = staticmethod(mala_transition)


class HMCKernel(Kernel):
    """Hamiltonian Monte Carlo with a fixed number of leapfrog steps; adapts to 0.65 acceptance
    (Beskos et al., 2013).

    Args:
        n_leapfrog: leapfrog steps per transition (each costs one gradient evaluation).
    """

    name = "hmc"
    target_accept = 0.65
    default_step_size = 0.1
    transition = staticmethod(hmc_transition)

    def __init__(self, n_leapfrog: int = 10, compile: bool = False) -> None:
        self.n_leapfrog = check_positive_int(n_leapfrog, "n_leapfrog")
        super().__init__(compile)


def make_kernel(kernel: Kernel | str, **kwargs) -> Kernel:
    """A kernel from an instance or a name (``"rwm"``, ``"mala"``, ``"hmc"``)."""
    if isinstance(kernel, Kernel):
        return kernel
    table = {"rwm": RandomWalkKernel, "mala": MALAKernel, "hmc": HMCKernel}
    if kernel not in table:
        raise ValueError(f"unknown kernel {kernel!r}; expected one of {sorted(table)} or a Kernel")
    return table[kernel](**kwargs)
