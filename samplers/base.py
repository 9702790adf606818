"""The sampler interface: ``run(target, n_samples, seed) -> SamplerResult``, with budgets.

Every sampler runs ``n_chains`` chains in one batch. A *transition* is one step of the sampler's
outer loop (a kernel step, a parallel-tempering sweep, a DiGS Gibbs sweep) and has a known cost
in target evaluations per chain. Two ways to say how long to run:

- ``budget``: target evaluations per returned sample (log-density-only and gradient evaluations,
  each counted as one). With ``s = ceil(n_samples / n_chains)`` samples per chain, each chain
  gets ``budget * n_samples / n_chains`` evaluations (the first evaluation at the starting point
  included; ``budget * s`` overspent the budget when the chains do not divide the samples). With
  one sample per chain the chain's last state is the sample; otherwise the first
  ``burn_in_fraction`` of the transitions is burn-in and ``s`` states are kept at equal spacing.
- ``burn_in`` and ``thin``: explicit numbers of transitions.

Step sizes are adapted during the first ``warmup_fraction`` of the burn-in (towards the kernel's
target acceptance rate, by dual averaging) and frozen afterwards, so the kept samples come from
a fixed Markov kernel.

Evaluations are counted by construction: every transition reports the rows it evaluated, and
the start costs one evaluation per chain. :class:`SamplerResult` reports both counts, wall time
and diagnostics (acceptance and swap rates; bulk and tail ESS, bulk split R-hat and the rank
R-hat of bulk and folded draws when chains keep >= 4 samples).
"""

from __future__ import annotations

import math
import time
import warnings
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probrec.checks import check_choice, check_positive_int, check_real, check_seed
from probrec.progress import track
from probrec.reporting import json_safe
from probrec.seeding import check_generator_device, torch_generator

from .compile import compile_available
from .diagnostics import summary as chain_summary
from .targets.base import Target, check_positions, check_start

__all__ = ["Sampler", "SamplerResult", "RunPlan"]


# below this mean acceptance probability (after warm-up) a move counts as never taken
STUCK_ACCEPTANCE = 1e-4


def warn_if_stuck(name: str, rates: dict[str, float], hint: str) -> None:
    """Warns when every move that can change a chain's state was (nearly) never accepted.

    Called by a sampler's diagnostics with the mean acceptance probability after warm-up of each
    such move (an empty dict: nothing ran after warm-up, no warning). When all are below
    :data:`STUCK_ACCEPTANCE`, the returned "samples" are (nearly) the starting states, which would
    otherwise come back silently.

    Args:
        name: the sampler's name, first in the message.
        rates: move description -> mean acceptance probability after warm-up.
        hint: the likely cause and remedy, in parentheses at the end of the message.
    """
    if rates and max(rates.values()) < STUCK_ACCEPTANCE:
        parts = ", ".join(f"{move} {rate:.2g}" for move, rate in rates.items())
        warnings.warn(
            f"{name}: mean acceptance probability after warm-up: {parts}: the chains (nearly) "
            f"never moved ({hint})",
            RuntimeWarning,
            stacklevel=4,
        )


@dataclass
class RunPlan:
    """The schedule of one run (all counts per chain)."""

    n_chains: int
    samples_per_chain: int
    n_transitions: int
    burn_in: int
    thin: int
    warmup: int
    cost: tuple[int, int]  # (log-density, gradient) evaluations per transition
    compiled: bool = False

    def keep(self, t: int) -> bool:
        """Whether the state after transition ``t`` (1-based) is kept."""
        return t > self.burn_in and (t - self.burn_in) % self.thin == 0

    def next_keep(self, t: int) -> int:
        """The first transition after ``t`` whose state is kept."""
        if t < self.burn_in + self.thin:
            return self.burn_in + self.thin
        return t + self.thin - (t - self.burn_in) % self.thin


@dataclass
class SamplerResult:
    """Output of :meth:`Sampler.run`.

    Attributes:
        samples: ``n_samples x d`` kept states (chain after chain).
        chains: ``n_chains x samples_per_chain x d`` the same states per chain.
        n_log_prob_evals: rows of log-density-only evaluations spent.
        n_grad_evals: rows of log-density-and-gradient evaluations spent.
        wall_time: seconds for the whole run (including any compilation).
        diagnostics: acceptance / swap rates, final step sizes, ESS and R-hat where meaningful.
        sampler, target: names; seed: the seed; config: the sampler's settings.
    """

    samples: Tensor
    chains: Tensor
    n_log_prob_evals: int
    n_grad_evals: int
    wall_time: float
    diagnostics: dict[str, Any]
    sampler: str
    target: str
    seed: int
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def n_evals(self) -> int:
        """All target evaluations (log-density-only plus gradient)."""
        return self.n_log_prob_evals + self.n_grad_evals

    @property
    def evals_per_sample(self) -> float:
        return self.n_evals / self.samples.shape[0]

    def summary(self) -> dict[str, Any]:
        """JSON-serialisable summary (no samples)."""
        return {
            "sampler": self.sampler,
            "target": self.target,
            "seed": self.seed,
            "n_samples": int(self.samples.shape[0]),
            "n_chains": int(self.chains.shape[0]),
            "n_log_prob_evals": self.n_log_prob_evals,
            "n_grad_evals": self.n_grad_evals,
            "evals_per_sample": round(self.evals_per_sample, 3),
            "wall_time": round(self.wall_time, 3),
            "diagnostics": json_safe(self.diagnostics),
            "config": json_safe(self.config),
        }


class Sampler(ABC):
    """Base class: batched chains, budgets, warm-up adaptation and the run loop.

    Subclasses implement :meth:`_cost`, :meth:`_start`, :meth:`_transition`,
    :meth:`_positions` and :meth:`_diagnostics`.

    Args:
        n_chains: chains run in parallel; ``None``: one chain per requested sample.
        budget: target evaluations per returned sample (overrides ``burn_in`` / ``thin``).
        burn_in: transitions before the first kept state (without ``budget``; default 1000).
        thin: transitions between kept states (without ``budget``; default 1).
        burn_in_fraction: share of the transitions used as burn-in under ``budget`` when
            chains keep more than one sample.
        warmup_fraction: share of the burn-in during which step sizes adapt.
        adapt: adapt step sizes during warm-up.
        init: starting states: ``None`` (the target's :meth:`~Target.init_positions`),
            ``"origin"``, a ``d``-dim tensor (all chains), a ``n_chains x d`` tensor, or a
            callable ``(n, generator) -> n x d``.
        compile: ``"auto"`` (compile the step with ``torch.compile`` when the target has an
            analytic gradient and the run is long enough to pay for compilation), ``True`` or
            ``False``. A failed compilation falls back to the eager step with a warning.
        progress: show a progress bar (``None``: when attached to a terminal).
    """

    name = "sampler"
    # after warm-up the compiled path fuses transitions into blocks of about this many
    # evaluations per chain (one compiled call per block)
    block_evals = 8
    # "auto" compiles when a run evaluates at least this many rows (raised on the CPU by a
    # target's ``cpu_compile_min_row_evals``), or this many sequential evaluations (the
    # per-step Python overhead dominates long runs of few chains)
    compile_min_row_evals = 2_000_000
    compile_min_sequential_evals = 100_000

    def __init__(
        self,
        *,
        n_chains: int | None = None,
        budget: float | None = None,
        burn_in: int | None = None,
        thin: int | None = None,
        burn_in_fraction: float = 0.1,
        warmup_fraction: float = 0.5,
        adapt: bool = True,
        init: Any = None,
        compile: bool | str = "auto",
        progress: bool | None = None,
    ) -> None:
        self.n_chains = None if n_chains is None else check_positive_int(n_chains, "n_chains")
        self.budget = None if budget is None else check_real(budget, "budget", strict=True)
        if budget is not None and (burn_in is not None or thin is not None):
            raise ValueError("give either budget or burn_in/thin, not both")
        self.burn_in = (
            1000 if burn_in is None else check_positive_int(burn_in, "burn_in", minimum=0)
        )
        self.thin = 1 if thin is None else check_positive_int(thin, "thin")
        for name, v in (
            ("burn_in_fraction", burn_in_fraction),
            ("warmup_fraction", warmup_fraction),
        ):
            v = check_real(v, name)
            if not 0.0 <= v < 1.0 if name == "burn_in_fraction" else not 0.0 <= v <= 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {v}")
        self.burn_in_fraction = float(burn_in_fraction)
        self.warmup_fraction = float(warmup_fraction)
        self.adapt = bool(adapt)
        self.init = init
        if isinstance(compile, str):
            check_choice(compile, "compile", ["auto"])
        elif not isinstance(compile, bool):
            raise TypeError(f"compile must be 'auto', True or False, got {compile!r}")
        self.compile = compile
        self.progress = progress

    # ----------------------------------------------------------------------------- interface
    @abstractmethod
    def _cost(self, target: Target) -> tuple[int, int]:
        """(log-density, gradient) evaluations per chain and transition."""

    def _start_cost(self) -> int:
        """Evaluations per chain spent at the start (replicas included)."""
        return 1

    def _needs_grad(self) -> bool:
        return True

    def _min_warmup(self) -> int:
        """Fewest warm-up transitions wanted (capped by the burn-in); samplers whose step sizes
        are adapted in turns (DiGS noise levels) ask for enough to visit every group."""
        return 0

    @abstractmethod
    def _start(
        self, target: Target, x0: Tensor, lp: Tensor, grad: Tensor | None, plan: RunPlan
    ) -> Any:
        """Builds the sampler state from validated starting states (``n_chains x d``)."""

    @abstractmethod
    def _transition(self, state: Any, t: int, adapting: bool) -> Any:
        """One transition (``t`` is 1-based); returns the new state."""

    def _advance(self, state: Any, t: int, n: int) -> Any:
        """``n`` transitions after warm-up starting with transition ``t``; samplers with a fused
        path override this (the default repeats :meth:`_transition`)."""
        for i in range(n):
            state = self._transition(state, t + i, False)
        return state

    def _end_warmup(self) -> None:  # noqa: B027 - optional hook, a no-op by default
        """Freezes adapted step sizes."""

    @abstractmethod
    def _positions(self, state: Any) -> Tensor:
        """Current ``n_chains x d`` states of the kept chains."""

    def _diagnostics(self) -> dict[str, Any]:
        return {}

    def config(self) -> dict[str, Any]:
        """The sampler's settings (for reports)."""
        return {
            "n_chains": self.n_chains,
            "budget": self.budget,
            "burn_in": None if self.budget else self.burn_in,
            "thin": None if self.budget else self.thin,
            "adapt": self.adapt,
        }

    # ------------------------------------------------------------------------------ running
    def plan(self, target: Target, n_samples: int) -> RunPlan:
        """The schedule :meth:`run` will follow for ``n_samples`` samples of ``target``."""
        n_samples = check_positive_int(n_samples, "n_samples")
        chains = self.n_chains or n_samples
        spc = math.ceil(n_samples / chains)
        cost = self._cost(target)
        per = sum(cost)
        if self.budget is not None:
            # evaluations per chain: the budget of the samples returned, shared by the chains
            # (budget * spc overspent by chains * spc / n_samples, e.g. 2.5x for 50 chains, 20)
            total = self.budget * n_samples / chains - self._start_cost()
            n_trans = int(math.floor(total / per + 1e-9))
            if n_trans < max(1, spc):
                raise ValueError(
                    f"budget {self.budget:g} evaluations per sample is too small for {self.name}: "
                    f"one transition costs {per} evaluations per chain and each chain must keep "
                    f"{spc} sample(s) on {total + self._start_cost():.3g} evaluations; raise the "
                    "budget (or use more chains, but not more chains than samples)"
                )
            if spc == 1:
                burn_in, thin = n_trans - 1, 1
            else:
                burn_in = int(round(self.burn_in_fraction * n_trans))
                thin = max(1, (n_trans - burn_in) // spc)
                burn_in = n_trans - thin * spc
        else:
            burn_in, thin = self.burn_in, self.thin
        n_trans = burn_in + thin * spc
        warmup = 0
        if self.adapt:
            warmup = max(int(self.warmup_fraction * burn_in), min(self._min_warmup(), burn_in))
        plan = RunPlan(chains, spc, n_trans, burn_in, thin, warmup, cost)
        plan.compiled = self._want_compile(target, plan)
        return plan

    def _want_compile(self, target: Target, plan: RunPlan) -> bool:
        if self.compile is False:
            return False
        if self.compile is True:
            return compile_available()
        if not getattr(target, "analytic_grad", False) or not compile_available():
            return False
        seq = plan.n_transitions * sum(plan.cost)
        rows = self.compile_min_row_evals
        cpu_rows = getattr(target, "cpu_compile_min_row_evals", None)
        if cpu_rows is not None and target._device().type == "cpu":
            rows = max(rows, cpu_rows)
        return seq >= self.compile_min_sequential_evals or seq * plan.n_chains >= rows

    def _initial_positions(self, target: Target, n: int, gen: torch.Generator) -> Tensor:
        init = self.init
        if init is None:
            x = target.init_positions(n, gen)
        elif isinstance(init, str):
            check_choice(init, "init", ["origin"])
            x = torch.zeros(n, target.dim, dtype=target._dtype(), device=target._device())
        elif callable(init):
            x = init(n, gen)
        else:
            x = torch.as_tensor(init)
            if x.dim() == 1:
                x = x.expand(n, -1)
        if not isinstance(x, Tensor):
            raise TypeError(f"init must produce a tensor, got {type(x).__name__}")
        if x.dim() == 2 and x.shape[0] != n:
            raise ValueError(f"init gives {x.shape[0]} starting states for {n} chains")
        if not x.is_floating_point():
            x = x.to(torch.get_default_dtype())
        # detached: an init that requires grad would build a graph across every step
        return check_positions(x.detach(), target.dim, "init").clone()

    def run(self, target: Target, n_samples: int, seed: int | torch.Generator = 0) -> SamplerResult:
        """Draws ``n_samples`` samples from ``target``.

        Args:
            target: a :class:`~samplers.targets.Target`.
            n_samples: number of samples to return.
            seed: an int seed (or a ``torch.Generator``) for every random choice of the run.

        Returns:
            A :class:`SamplerResult`.

        Raises:
            TypeError / ValueError: bad target (wrong type, wrong output shape, non-finite at the
                start), bad settings, or a budget too small for one transition.
        """
        if not isinstance(target, Target):
            raise TypeError(
                "target must be a samplers.targets.Target (wrap a function with "
                f"samplers.targets.from_log_prob(fn, dim)), got {type(target).__name__}"
            )
        if not isinstance(seed, torch.Generator):
            seed = check_seed(seed)  # before the run (None failed after it, 1.5 ran as 1)
        elif self.init is None:  # the first draws are the target's starting states
            check_generator_device(seed, target._device())
        plan = self.plan(target, n_samples)
        t_start = time.perf_counter()
        gen = seed if isinstance(seed, torch.Generator) else torch_generator(seed, target._device())
        x0 = self._initial_positions(target, plan.n_chains, gen)
        if x0.device != gen.device and not isinstance(seed, torch.Generator):
            # chains live where the starting states are (e.g. a CUDA init for a function target)
            gen = torch_generator(seed + 1, x0.device)
        lp, grad = check_start(target, x0, need_grad=self._needs_grad())
        self._n_lp = 0 if self._needs_grad() else plan.n_chains
        self._n_grad = plan.n_chains if self._needs_grad() else 0
        self._gen = gen
        state = self._start(target, x0, lp, grad, plan)
        d = target.dim
        kept = torch.empty(
            plan.n_chains, plan.samples_per_chain, d, dtype=x0.dtype, device=x0.device
        )
        k = 0
        if plan.warmup == 0:
            self._end_warmup()
        bar = track(
            total=plan.n_transitions,
            progress=self.progress,
            desc=f"{self.name} on {target.name}",
            leave=False,
        )
        every = max(1, plan.n_transitions // 200)
        block = max(1, self.block_evals // sum(plan.cost)) if plan.compiled else 1
        t, shown = 0, 0
        while t < plan.n_transitions:
            if t >= plan.warmup and block > 1 and plan.next_keep(t) - t >= block:
                # after warm-up, fuse full blocks of transitions (a fixed size: no recompilation)
                state = self._advance(state, t + 1, block)
                t += block
            else:
                state = self._transition(state, t + 1, t < plan.warmup)
                t += 1
            if t == plan.warmup:
                self._end_warmup()
            if plan.keep(t):
                kept[:, k] = self._positions(state)
                k += 1
            if t - shown >= every:
                bar.update(t - shown)
                shown = t
        bar.update(plan.n_transitions - shown)
        bar.close()
        wall = time.perf_counter() - t_start
        n_samples = check_positive_int(n_samples, "n_samples")
        samples = kept.reshape(-1, d)[:n_samples]
        diag = self._diagnostics()
        diag["compiled"] = plan.compiled
        diag["n_transitions"] = plan.n_transitions
        diag["burn_in"] = plan.burn_in
        diag["thin"] = plan.thin
        if not bool(torch.isfinite(kept).all()):  # pragma: no cover - guarded by the kernels
            raise RuntimeError(f"{self.name}: non-finite states in the chains")
        if plan.samples_per_chain >= 4:
            diag.update(chain_summary(kept))
            # NaN where every dimension is undefined (constant draws: stuck chains), silently
            for key, suffix, reduce in (
                ("ess_bulk", "min", np.nanmin),
                ("ess_tail", "min", np.nanmin),
                ("rhat_split", "max", np.nanmax),
                ("rhat", "max", np.nanmax),
            ):
                vals = diag[key]
                diag[f"{key}_{suffix}"] = math.nan if np.isnan(vals).all() else float(reduce(vals))
        return SamplerResult(
            samples=samples,
            chains=kept,
            n_log_prob_evals=int(self._n_lp),
            n_grad_evals=int(self._n_grad),
            wall_time=wall,
            diagnostics=diag,
            sampler=self.name,
            target=target.name,
            seed=int(seed) if not isinstance(seed, torch.Generator) else -1,
            config=self.config(),
        )

    def _count(self, n_log_prob: int, n_grad: int) -> None:
        self._n_lp += n_log_prob
        self._n_grad += n_grad
