"""Progressive Tempering Sampler with Diffusion (PTSD; Rissanen, OuYang, He et al., ICML 2025).

PTSD walks down a geometric temperature ladder ``T_{K-1} > ... > T_0 = 1`` (targets
``p(x)^(1 / T_k)``), keeping a buffer of samples per temperature:

1. parallel tempering (:class:`~samplers.tempering.ParallelTempering`, two temperatures)
   fills the buffers of the two hottest temperatures;
2. a diffusion model is trained on each of those buffers by denoising score matching (the
   colder one warm-started from the hotter one);
3. for each next lower temperature ``T_k``: the scores of the two models above are
   extrapolated linearly in the inverse temperature,
   ``s_k = s_{k+1} + w (s_{k+1} - s_{k+2})``, ``w = lambda (beta_k - beta_{k+1}) /
   (beta_{k+1} - beta_{k+2})`` (exact at noise level 0, where ``grad log p^beta = beta grad log
   p``; ``lambda`` = ``extrapolation``), and samples are drawn with this score by the
   probability-flow ODE (or the reverse SDE);
4. optionally they are importance-resampled with weights ``p(x)^(beta_k) / q(x)``, ``q`` the
   ODE log-density of the extrapolated model (exact trace in low dimension, Hutchinson
   otherwise), by systematic resampling;
5. a short two-temperature parallel tempering at ``(T_k, T_{k+1})`` refines them (cold
   replicas start from them, hot replicas from the buffer of ``T_{k+1}``); the cold replicas
   become the buffer of ``T_k``, on which the next model is trained (warm-started from the
   model of ``T_{k+1}``).

The buffer of ``T_0 = 1`` is the output. Every target evaluation is counted (the parallel
tempering runs, the importance weights); training by denoising score matching evaluates no
target. With ``budget`` (target evaluations per returned sample) the number of MCMC steps is
derived from it: a share ``hot_fraction`` goes to the hottest parallel tempering, the rest is
split evenly over the refinement runs. ``checkpoint_dir`` saves the model and buffer of every
temperature.

:data:`PRESETS` holds the CPU settings of the benchmark and GPU settings at the papers' scale.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from probrec.checks import check_choice, check_positive_int, check_real
from probrec.seeding import seeded_rng, torch_generator, wrap_seed

from .diffusion import (
    CountingTarget,
    DiffusionModel,
    NeuralSampler,
    Normalizer,
    TemperedTarget,
    VESchedule,
    VPSchedule,
)
from .score_nets import ScoreMLP
from .tempering import ParallelTempering, geometric_ladder

__all__ = ["PTSD", "PRESETS", "systematic_resample", "ReplicaPT"]


def systematic_resample(log_w: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """Indices of ``n`` draws by systematic resampling with log-weights ``log_w`` (``m``)."""
    w = torch.softmax(log_w.double(), 0)
    cdf = torch.cumsum(w, 0)
    cdf[-1] = 1.0
    u = (
        torch.rand((), generator=generator, dtype=torch.float64, device=log_w.device)
        + (torch.arange(n, dtype=torch.float64, device=log_w.device))
    ) / n
    return torch.searchsorted(cdf, u).clamp_max(log_w.shape[0] - 1)


class ReplicaPT(ParallelTempering):
    """Parallel tempering that keeps the last states of all replicas (``K x n x d`` in
    :attr:`replicas`), so one run fills the buffers of every temperature of its ladder, and that
    can start the hotter replicas from their own states (``hot_init``, ``(K-1) x n x d``).

    Starting every replica from the cold chain's state (the base class) biases a short run: the
    swaps then hand the cold chain the higher-density states of the copies, which over-weights
    the heavier modes. Started from (approximate) samples of each temperature, the product of
    the tempered targets is stationary from the first sweep.
    """

    def __init__(self, *args: Any, hot_init: Tensor | None = None, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.hot_init = hot_init

    def _start(self, target, x0, lp, grad, plan):  # noqa: ANN001 - as in the base class
        state = super()._start(target, x0, lp, grad, plan)
        if self.hot_init is None or self.n_temperatures == 1:
            return state
        k, n, d = self.n_temperatures, x0.shape[0], x0.shape[1]
        xh = self.hot_init.to(x0).reshape(-1, d)
        if xh.shape[0] != (k - 1) * n:
            raise ValueError(f"hot_init must hold {(k - 1)} x {n} states, got {xh.shape[0]}")
        if self.kernel.needs_grad:
            lph, gh = self._fn(xh)
            self._count(0, xh.shape[0])
        else:
            lph, gh = self._fn(xh), None
            self._count(xh.shape[0], 0)
        pos = torch.cat([x0, xh])
        lps = torch.cat([state.log_prob[:n], lph])
        g = None if gh is None else torch.cat([state.grad[:n], gh])
        return type(state)(pos, lps, g)

    def _positions(self, state):  # noqa: ANN001 - ChainState
        k = self.n_temperatures
        self.replicas = state.position.reshape(k, self._n, -1).clone()
        return state.position[: self._n]


# CPU settings of the benchmark (names follow PTSD's arguments) and GPU settings at the
# scale of the papers (written for a GPU; not run on the 2-core CPU machine)
PRESETS: dict[str, dict[str, Any]] = {
    "mog40": {
        "n_temperatures": 10,
        "max_temperature": 100.0,
        "buffer_size": 3000,
        "hidden": 128,
        "n_layers": 3,
        "train_steps_first": 2000,
        "train_steps": 400,
        "batch_size": 512,
        "n_ode_steps": 30,
        "importance_weights": True,
        "extrapolation": 0.5,
        "step_size": 1.5,
    },
    "mw32": {
        "n_temperatures": 6,
        "max_temperature": 10.0,
        "buffer_size": 2000,
        "hidden": 256,
        "n_layers": 3,
        "train_steps_first": 2000,
        "train_steps": 400,
        "batch_size": 512,
        "n_ode_steps": 30,
        "importance_weights": False,
        "extrapolation": 0.5,
        "step_size": 0.05,
    },
    "mog40_gpu": {
        "n_temperatures": 10,
        "max_temperature": 100.0,
        "buffer_size": 50_000,
        "hidden": 512,
        "n_layers": 4,
        "train_steps_first": 20_000,
        "train_steps": 5_000,
        "batch_size": 2048,
        "n_ode_steps": 200,
        "importance_weights": True,
        "extrapolation": 0.5,
        "step_size": 1.5,
    },
    "mw32_gpu": {
        "n_temperatures": 10,
        "max_temperature": 10.0,
        "buffer_size": 50_000,
        "hidden": 512,
        "n_layers": 4,
        "train_steps_first": 20_000,
        "train_steps": 5_000,
        "batch_size": 2048,
        "n_ode_steps": 200,
        "importance_weights": True,
        "trace": "hutchinson",
        "extrapolation": 0.5,
        "step_size": 0.05,
    },
}


def _schedule(name: str) -> VPSchedule | VESchedule:
    """The noise schedule PTSD's diffusion models use (``"vp"`` or ``"ve"``)."""
    return VPSchedule() if name == "vp" else VESchedule(0.01, 3.0)


class PTSD(NeuralSampler):
    """Progressive Tempering Sampler with Diffusion.

    Args:
        n_temperatures: ``K`` temperatures of the geometric ladder (at least 3).
        max_temperature: hottest temperature ``T_{K-1}``.
        buffer_size: samples per intermediate buffer (the last buffer holds ``n_samples``).
        hot_steps: MCMC sweeps of the hottest parallel tempering (without ``budget``).
        refine_steps: sweeps of each two-temperature refinement (without ``budget``).
        budget: target evaluations per returned sample (overrides the two above).
        hot_fraction: share of the budget spent by the hottest parallel tempering.
        kernel: inner kernel of the parallel tempering runs (``"mala"``, ``"hmc"``, ``"rwm"``).
        step_size: MCMC step size at ``T = 1``, scaled by ``T``: the initial step of the
            hottest run, adapted by dual averaging in its first half. The short refinement runs
            (too short to adapt) use a fixed step: the one of the level above scaled by the
            temperature ratio and multiplied by ``exp(2 (acceptance - target acceptance))``.
        hidden, n_layers: size of the score MLP.
        train_steps_first: DSM steps of the hottest model (from scratch).
        train_steps: DSM steps of every warm-started model.
        batch_size, lr, ema: DSM training settings.
        schedule: ``"vp"`` (``beta`` 0.1 to 20) or ``"ve"`` (``sigma`` 0.01 to 3) in coordinates
            normalised by the hottest buffer's mean and standard deviation.
        proposal: ``"ode"`` (probability flow) or ``"sde"`` (reverse SDE; no importance weights).
        n_ode_steps: steps of the proposal sampler (Heun for the ODE; twice as many
            Euler-Maruyama steps for the SDE).
        importance_weights: resample proposals by ``p^beta / q`` (needs ``proposal="ode"``).
        trace: divergence of the ODE log-density: ``"exact"``, ``"hutchinson"`` or ``"auto"``
            (exact up to 8 dimensions).
        extrapolation: ``lambda``, the multiplier of the extrapolation weight (1: linear in
            ``beta``).
        checkpoint_dir: folder for ``ptsd_T<k>.pt`` (model state and buffer per temperature,
            the samples at ``T_0``; read back with :meth:`load_checkpoint`).
        n_particles: mean-centred score network for particle systems (taken from the target
            when it has ``n_particles``).
        n_chains, compile, progress: see :class:`~samplers.diffusion.NeuralSampler`.
    """

    name = "ptsd"
    PRESETS = PRESETS
    CONFIG_KEYS = (
        "temperatures",
        "buffer_size",
        "hot_steps",
        "refine_steps",
        "hot_fraction",
        "kernel",
        "step_size",
        "hidden",
        "n_layers",
        "train_steps_first",
        "train_steps",
        "batch_size",
        "lr",
        "ema",
        "schedule",
        "proposal",
        "n_ode_steps",
        "importance_weights",
        "trace",
        "extrapolation",
    )

    def __init__(
        self,
        n_temperatures: int = 10,
        max_temperature: float = 100.0,
        buffer_size: int = 4000,
        hot_steps: int = 50,
        refine_steps: int = 10,
        *,
        budget: float | None = None,
        hot_fraction: float = 0.4,
        kernel: str = "mala",
        step_size: float = 0.5,
        hidden: int = 128,
        n_layers: int = 3,
        train_steps_first: int = 2000,
        train_steps: int = 600,
        batch_size: int = 512,
        lr: float = 1e-3,
        ema: float = 0.995,
        schedule: str = "vp",
        proposal: str = "ode",
        n_ode_steps: int = 40,
        importance_weights: bool = True,
        trace: str = "auto",
        extrapolation: float = 1.0,
        checkpoint_dir: str | Path | None = None,
        n_particles: int | None = None,
        n_chains: int | None = None,
        compile: bool | str = "auto",
        progress: bool | None = False,
    ) -> None:
        super().__init__(n_chains=n_chains, budget=budget, compile=compile, progress=progress)
        self.n_temperatures = check_positive_int(n_temperatures, "n_temperatures", minimum=3)
        max_temperature = check_real(max_temperature, "max_temperature", minimum=1.0, strict=True)
        self.temperatures = geometric_ladder(self.n_temperatures, max_temperature)
        self.buffer_size = check_positive_int(buffer_size, "buffer_size", minimum=2)
        self.hot_steps = check_positive_int(hot_steps, "hot_steps", minimum=0)
        self.refine_steps = check_positive_int(refine_steps, "refine_steps", minimum=0)
        if not 0.0 < check_real(hot_fraction, "hot_fraction") < 1.0:  # a str: a bare TypeError
            raise ValueError(f"hot_fraction must be in (0, 1), got {hot_fraction}")
        self.hot_fraction = float(hot_fraction)
        self.kernel = check_choice(kernel, "kernel", ["mala", "hmc", "rwm"])
        self.step_size = check_real(step_size, "step_size", strict=True)
        self.hidden = check_positive_int(hidden, "hidden")
        self.n_layers = check_positive_int(n_layers, "n_layers")
        self.train_steps_first = check_positive_int(train_steps_first, "train_steps_first")
        self.train_steps = check_positive_int(train_steps, "train_steps", minimum=0)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.lr = check_real(lr, "lr", strict=True)
        self.ema = check_real(ema, "ema")
        if not self.ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        self.schedule = check_choice(schedule, "schedule", ["vp", "ve"])
        self.proposal = check_choice(proposal, "proposal", ["ode", "sde"])
        self.n_ode_steps = check_positive_int(n_ode_steps, "n_ode_steps")
        if importance_weights and proposal != "ode":
            raise ValueError("importance_weights needs proposal='ode' (the SDE has no density)")
        self.importance_weights = bool(importance_weights)
        self.trace = check_choice(trace, "trace", ["auto", "exact", "hutchinson"])
        self.extrapolation = check_real(extrapolation, "extrapolation")
        self.checkpoint_dir = None if checkpoint_dir is None else Path(checkpoint_dir)
        self.n_particles = n_particles

    # ------------------------------------------------------------------------- schedule
    def plan_steps(self, n_samples: int) -> tuple[int, int]:
        """``(hot_steps, refine_steps)`` for ``n_samples`` samples (derived from ``budget``).

        Costs per chain of a two-temperature run of ``s`` sweeps: ``1 + 2 (s + 1) c`` with
        ``c`` the kernel's evaluations per step, plus one for the separate start of the hot
        replica in the refinement runs; importance weights cost one evaluation per proposal.

        Raises:
            ValueError: the budget does not pay for one sweep of every run.
        """
        if self.budget is None:
            return self.hot_steps, self.refine_steps
        c = {"mala": 1, "rwm": 1, "hmc": 10}[self.kernel]
        n_buf = min(self.buffer_size, n_samples)
        levels = [n_buf] * (self.n_temperatures - 3) + [n_samples]
        total = self.budget * n_samples
        hot = (self.hot_fraction * total / n_buf - 1) / (2 * c) - 1
        # per refined sample: the cold and hot starting evaluations and the importance weight
        rest = (1 - self.hot_fraction) * total - sum(levels) * (2 + int(self.importance_weights))
        ref = (rest / sum(levels)) / (2 * c) - 1
        if hot < 0 or ref < 0:
            raise ValueError(
                f"budget {self.budget:g} evaluations per sample is too small for PTSD with "
                f"{self.n_temperatures} temperatures (every parallel-tempering run needs one "
                "sweep); raise the budget or use fewer temperatures"
            )
        return int(hot), int(ref)

    def _pt(
        self,
        steps: int,
        temps: list[float],
        step_size: float,
        init: Tensor,
        adapt: bool,
        hot_init: Tensor | None = None,
    ) -> ReplicaPT:
        return ReplicaPT(
            hot_init=hot_init,
            kernel=self.kernel,
            temperatures=temps,
            step_size=step_size,
            adapt=adapt,
            burn_in=steps,
            thin=1,
            init=init,
            compile=False,
            progress=False,
        )

    def _new_model(self, buffer: Tensor, seed: int, n_particles: int | None) -> DiffusionModel:
        d = buffer.shape[1]
        if n_particles is not None:
            zero = torch.zeros(d, dtype=buffer.dtype, device=buffer.device)
            norm = Normalizer(zero, buffer.std())
        else:
            norm = Normalizer.fit(buffer)
        sched = _schedule(self.schedule)
        with seeded_rng(seed):  # initial weights from the run's seed (CPU generator)
            net = ScoreMLP(d, self.hidden, self.n_layers, n_particles=n_particles)
        return DiffusionModel(net.to(buffer.device, buffer.dtype), sched, norm.to(buffer.device))

    def _fit(
        self, model: DiffusionModel, buffer: Tensor, steps: int, seed: int, warm: bool = True
    ) -> float:
        """DSM training; ``warm``: ``model`` is a copy of a trained one (its weights start the
        average, :meth:`~samplers.diffusion.DiffusionModel.fit`)."""
        losses = model.fit(buffer, steps, self.batch_size, self.lr, self.ema, seed, warm_start=warm)
        return float(sum(losses[-50:]) / max(1, len(losses[-50:]))) if losses else float("nan")

    # ------------------------------------------------------------------------- sampling
    def _sample(
        self, target: CountingTarget, n_samples: int, seed: int, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, Any]]:
        # this run's particle count (the setting, else the target's): not stored on the
        # sampler, whose next run may be on another target
        n_particles = self.n_particles
        if n_particles is None and getattr(target.base, "n_particles", None) is not None:
            n_particles = int(target.base.n_particles)
        hot_steps, refine_steps = self.plan_steps(n_samples)
        temps = self.temperatures
        k_max = len(temps) - 1
        n_buf = min(self.buffer_size, n_samples)
        betas = [1.0 / t for t in temps]
        trace = self.trace
        if trace == "auto":
            trace = "exact" if target.dim <= 8 else "hutchinson"
        levels: list[dict[str, Any]] = []
        sub = iter(range(1_000_000))  # sub-seeds of the run, one per random stage

        def next_seed() -> int:
            # within [0, 2**63), the seeds check_seed takes (a run seed above ~9.2e12 gave
            # sub-seeds past it: a ValueError naming a seed the caller never passed)
            return wrap_seed(seed * 1_000_003 + next(sub))

        # 1. parallel tempering on the two hottest temperatures
        ev0 = target.n_evals
        hot_target = TemperedTarget(target, betas[k_max - 1])
        x0 = target.init_positions(n_buf, gen)
        ratio = temps[k_max] / temps[k_max - 1]
        pt = self._pt(hot_steps, [1.0, ratio], self.step_size * temps[k_max - 1], x0, True)
        res = pt.run(hot_target, n_buf, seed=next_seed())
        step = float(res.diagnostics["step_size_per_temperature"][0])
        buffers = {k_max - 1: pt.replicas[0], k_max: pt.replicas[1]}
        levels.append(self._level_stats(k_max - 1, res, target.n_evals - ev0, None))
        # 2. the two hottest models
        models: dict[int, DiffusionModel] = {}
        models[k_max] = self._new_model(buffers[k_max], next_seed(), n_particles)
        loss = self._fit(
            models[k_max], buffers[k_max], self.train_steps_first, next_seed(), warm=False
        )
        levels[-1]["dsm_loss_hot"] = loss
        models[k_max - 1] = models[k_max].copy()
        levels[-1]["dsm_loss"] = self._fit(
            models[k_max - 1], buffers[k_max - 1], self.train_steps_first, next_seed()
        )
        self._checkpoint(k_max, models[k_max], buffers[k_max], n_particles)
        self._checkpoint(k_max - 1, models[k_max - 1], buffers[k_max - 1], n_particles)
        # 3-5. down the ladder
        for k in range(k_max - 2, -1, -1):
            ev0 = target.n_evals
            n = n_samples if k == 0 else n_buf
            m1, m2 = models[k + 1], models[k + 2]
            w = self.extrapolation * (betas[k] - betas[k + 1]) / (betas[k + 1] - betas[k + 2])

            def score(z: Tensor, t: Tensor, m1=m1, m2=m2, w=w) -> Tensor:
                return (1.0 + w) * m1.score(z, t) - w * m2.score(z, t)

            with torch.no_grad():
                if self.importance_weights:
                    x, log_q = m1.sample_with_log_prob(
                        n, next_seed(), self.n_ode_steps, trace, score=score
                    )
                else:
                    steps = self.n_ode_steps * (2 if self.proposal == "sde" else 1)
                    x = m1.sample(n, next_seed(), self.proposal, steps, score=score)
            x = x.detach().to(buffers[k + 1].dtype)
            ess = None
            if self.importance_weights:
                with torch.no_grad():
                    log_p = target.log_prob(x)
                log_w = betas[k] * log_p - log_q
                log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -1e30))
                wn = torch.softmax(log_w.double(), 0)
                ess = float(1.0 / (wn * wn).sum()) / n
                x = x[systematic_resample(log_w, n, torch_generator(next_seed(), x.device))]
            # 5. two-temperature refinement at (T_k, T_{k+1})
            step *= temps[k] / temps[k + 1]
            # the hot replicas start from the buffer of T_{k+1} (drawn with replacement)
            pick = torch.randint(0, buffers[k + 1].shape[0], (n,), generator=gen, device=gen.device)
            hot = buffers[k + 1][pick.to(x.device)][None]
            pt = self._pt(refine_steps, [1.0, temps[k + 1] / temps[k]], step, x, False, hot)
            res = pt.run(TemperedTarget(target, betas[k]), n, seed=next_seed())
            # the next level's step: scaled by the temperature ratio and nudged towards the
            # kernel's target acceptance (Robbins-Monro across levels)
            acc = float(res.diagnostics["acceptance_rate"])
            step *= math.exp(2.0 * (acc - pt.target_accept))
            buffers[k] = pt.replicas[0]
            stats = self._level_stats(k, res, target.n_evals - ev0, ess)
            stats["extrapolation_weight"] = w
            if k > 0:
                models[k] = m1.copy()
                stats["dsm_loss"] = self._fit(models[k], buffers[k], self.train_steps, next_seed())
                self._checkpoint(k, models[k], buffers[k], n_particles)
                del models[k + 2], buffers[k + 2]
            else:  # the run's samples (no model is trained at T = 1)
                self._checkpoint(0, None, buffers[0], n_particles)
            levels.append(stats)
        self.models_ = models
        diag = {
            "levels": levels,
            "temperatures": temps,
            "hot_steps": hot_steps,
            "refine_steps": refine_steps,
            "acceptance_rate": levels[-1]["acceptance_rate"],
            "swap_rate": levels[-1]["swap_rate"],
        }
        return buffers[0], diag

    @staticmethod
    def _level_stats(k: int, res: Any, evals: int, ess: float | None) -> dict[str, Any]:
        d = res.diagnostics
        return {
            "level": k,
            "evals": evals,
            "importance_ess_fraction": ess,
            "acceptance_rate": d.get("acceptance_rate"),
            "swap_rate": d.get("swap_rate"),
            "step_size_per_temperature": d.get("step_size_per_temperature"),
        }

    def _checkpoint(
        self, k: int, model: DiffusionModel | None, buffer: Tensor, n_particles: int | None
    ) -> None:
        if self.checkpoint_dir is None:
            return
        self.checkpoint_dir.mkdir(parents=True, exist_ok=True)
        path = self.checkpoint_dir / f"ptsd_T{k}.pt"
        tmp = path.with_suffix(".tmp")
        torch.save(
            {
                "temperature": self.temperatures[k],
                "model": None if model is None else model.state_dict(),
                "buffer": buffer.detach().cpu(),
                "config": self.config(),
                # the score network's layout: a particle network and a plain one of the same
                # width load each other's weights without an error
                "dim": int(buffer.shape[1]),
                "n_particles": n_particles,
            },
            tmp,
        )
        tmp.replace(path)

    @classmethod
    def load_checkpoint(
        cls, path: str | Path, device: torch.device | str = "cpu"
    ) -> tuple[float, DiffusionModel | None, Tensor]:
        """Reads one temperature's checkpoint (``ptsd_T<k>.pt`` of ``checkpoint_dir``).

        Returns:
            ``(temperature, model, buffer [n, d])``: the diffusion model trained at that
            temperature, rebuilt as the run built it (``None`` for ``T_0 = 1``, where the buffer
            holds the run's samples), and the buffer of samples it was trained on.

        Raises:
            ValueError: the file is not a PTSD checkpoint of this version.
        """
        ck = torch.load(Path(path), map_location=device, weights_only=False)
        if not isinstance(ck, dict) or "n_particles" not in ck or "buffer" not in ck:
            raise ValueError(f"{path} is not a PTSD checkpoint (or predates n_particles in it)")
        buffer = ck["buffer"].to(device)
        if ck["model"] is None:
            return float(ck["temperature"]), None, buffer
        cfg = ck["config"]
        d, n_particles = int(ck["dim"]), ck["n_particles"]
        state = ck["model"]
        dtype = next(v.dtype for v in state.values() if v.is_floating_point())
        sched = _schedule(cfg["schedule"])
        with seeded_rng(0):  # any initial weights: load_state_dict overwrites all of them
            net = ScoreMLP(d, cfg["hidden"], cfg["n_layers"], n_particles=n_particles)
        norm = Normalizer(torch.zeros(d, dtype=dtype), torch.ones((), dtype=dtype))
        model = DiffusionModel(net.to(device, dtype), sched, norm.to(device))
        model.load_state_dict(state)
        return float(ck["temperature"]), model, buffer
