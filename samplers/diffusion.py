"""Diffusion building blocks of the neural samplers (PTSD, DiKL).

A noising process ``z_t = alpha_t z_0 + sigma_t eps``, ``t in [0, 1]``, in *normalised*
coordinates ``z = (x - shift) / scale`` (:class:`Normalizer`), with two schedules:

- :class:`VPSchedule` (variance preserving, linear ``beta(t)``; Song et al., ICLR 2021):
  ``alpha_t = exp(-B(t) / 2)``, ``B(t) = beta_min t + (beta_max - beta_min) t^2 / 2``,
  ``sigma_t^2 = 1 - alpha_t^2``;
- :class:`VESchedule` (variance exploding): ``alpha_t = 1``, ``sigma_t = sigma_min
  (sigma_max / sigma_min)^t``.

Both give the forward SDE ``dz = f(t) z dt + g(t) dW`` with ``f = d log alpha / dt`` and
``g^2 = d sigma^2 / dt - 2 f sigma^2``. Given a score ``s(z, t) ~ grad log p_t(z)``:

- probability-flow ODE ``dz/dt = f z - g^2 s / 2`` (:func:`ode_sample`, Heun steps), with the
  log-density ``log p_0(z_0) = log p_1(z_1) + int_0^1 div v dt`` (instantaneous change of
  variables; Chen et al., 2018) by the exact trace or Hutchinson's estimator with one Rademacher
  probe per trajectory (Grathwohl et al., FFJORD, 2019): :func:`ode_log_prob`;
- reverse SDE ``dz = (f z - g^2 s) dt + g dW_bar`` (:func:`sde_sample`, Euler-Maruyama).

:class:`DiffusionModel` holds a noise-prediction network, a schedule and a normaliser, trains
by denoising score matching (:meth:`DiffusionModel.fit`, ``E ||eps_hat(z_t, t) - eps||^2`` with
``t ~ U[t_min, 1]``, Adam, weight EMA) and samples with either sampler.

The end of the module holds what PTSD and DiKL share to run under the
:class:`~samplers.base.Sampler` contract: :class:`CountingTarget` (counts every target row
evaluated), :class:`TemperedTarget` and :class:`NeuralSampler` (``run(target, n_samples, seed)
-> SamplerResult``).

References: Rissanen et al., *Progressive Tempering Sampler with Diffusion* (ICML 2025);
He et al., *Training Neural Samplers with Reverse Diffusive KL Divergence* (AISTATS 2025).
"""

from __future__ import annotations

import copy
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn

from probrec.checks import check_choice, check_positive_int, check_real, check_seed
from probrec.progress import track
from probrec.seeding import torch_generator

from .base import SamplerResult
from .score_nets import centre_particles
from .targets.base import Target, check_positions

__all__ = [
    "NoiseSchedule",
    "VPSchedule",
    "VESchedule",
    "Normalizer",
    "DiffusionModel",
    "ode_sample",
    "ode_log_prob",
    "sde_sample",
    "CountingTarget",
    "TemperedTarget",
    "NeuralSampler",
    "ScoreFn",
]

ScoreFn = Callable[[Tensor, Tensor], Tensor]
"""``score(z [n, d], t [n]) -> [n, d]``: an estimate of ``grad_z log p_t(z)``."""


# ------------------------------------------------------------------------------ schedules
class NoiseSchedule(ABC):
    """``alpha_t``, ``sigma_t`` of ``z_t = alpha_t z_0 + sigma_t eps`` and the SDE coefficients."""

    @abstractmethod
    def alpha(self, t: Tensor) -> Tensor:
        """Signal scale ``alpha_t`` (``t`` any shape)."""

    @abstractmethod
    def sigma(self, t: Tensor) -> Tensor:
        """Noise scale ``sigma_t``."""

    @abstractmethod
    def drift(self, t: Tensor) -> Tensor:
        """``f(t) = d log alpha_t / dt``."""

    @abstractmethod
    def diffusion2(self, t: Tensor) -> Tensor:
        """``g(t)^2 = d sigma_t^2 / dt - 2 f(t) sigma_t^2``."""

    def prior_std(self) -> float:
        """Standard deviation of ``z_1`` for unit-variance data: ``sqrt(alpha_1^2 + sigma_1^2)``."""
        one = torch.ones((), dtype=torch.float64)
        return float(torch.sqrt(self.alpha(one) ** 2 + self.sigma(one) ** 2))


class VPSchedule(NoiseSchedule):
    """Variance-preserving schedule with linear ``beta(t) = beta_min + t (beta_max - beta_min)``.

    Args:
        beta_min, beta_max: endpoints of ``beta`` (0.1 and 20: ``alpha_1 = 0.0066``).
    """

    def __init__(self, beta_min: float = 0.1, beta_max: float = 20.0) -> None:
        beta_min = check_real(beta_min, "beta_min", strict=True)
        beta_max = check_real(beta_max, "beta_max", strict=True)
        if not beta_min < beta_max:
            raise ValueError(f"need 0 < beta_min < beta_max, got {beta_min}, {beta_max}")
        self.beta_min, self.beta_max = beta_min, beta_max

    def _b(self, t: Tensor) -> Tensor:
        return self.beta_min * t + 0.5 * (self.beta_max - self.beta_min) * t * t

    def beta(self, t: Tensor) -> Tensor:
        return self.beta_min + t * (self.beta_max - self.beta_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.exp(-0.5 * self._b(t))

    def sigma(self, t: Tensor) -> Tensor:
        return torch.sqrt(-torch.expm1(-self._b(t)))

    def drift(self, t: Tensor) -> Tensor:
        return -0.5 * self.beta(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return self.beta(t)

    def __repr__(self) -> str:
        return f"VPSchedule(beta_min={self.beta_min}, beta_max={self.beta_max})"


class VESchedule(NoiseSchedule):
    """Variance-exploding schedule ``alpha_t = 1``, ``sigma_t = sigma_min (sigma_max /
    sigma_min)^t`` (uniform ``t`` is uniform in ``log sigma``).

    Args:
        sigma_min, sigma_max: noise scales at ``t = 0`` and ``t = 1``.
    """

    def __init__(self, sigma_min: float = 0.01, sigma_max: float = 3.0) -> None:
        sigma_min = check_real(sigma_min, "sigma_min", strict=True)
        sigma_max = check_real(sigma_max, "sigma_max", strict=True)
        if not sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self._log_ratio = math.log(self.sigma_max / self.sigma_min)

    def alpha(self, t: Tensor) -> Tensor:
        return torch.ones_like(t)

    def sigma(self, t: Tensor) -> Tensor:
        return self.sigma_min * torch.exp(self._log_ratio * t)

    def drift(self, t: Tensor) -> Tensor:
        return torch.zeros_like(t)

    def diffusion2(self, t: Tensor) -> Tensor:
        return 2.0 * self._log_ratio * self.sigma(t) ** 2

    def __repr__(self) -> str:
        return f"VESchedule(sigma_min={self.sigma_min}, sigma_max={self.sigma_max})"


class Normalizer(nn.Module):
    """Affine map ``z = (x - shift) / scale`` between target and model coordinates.

    Args:
        shift: ``d`` (or scalar) offset; scale: ``d`` (or scalar) positive scales.
    """

    def __init__(self, shift: Tensor | float, scale: Tensor | float) -> None:
        super().__init__()
        shift, scale = torch.as_tensor(shift), torch.as_tensor(scale)
        if not shift.is_floating_point():
            shift = shift.to(torch.get_default_dtype())
        scale = scale.to(shift.dtype)
        if bool((scale <= 0).any()) or not bool(torch.isfinite(scale).all()):
            raise ValueError("scale must be positive and finite")
        self.register_buffer("shift", shift.clone())
        self.register_buffer("scale", scale.clone())

    @classmethod
    def fit(cls, x: Tensor, isotropic: bool = True) -> Normalizer:
        """From data ``x`` (``n x d``): the mean, and the standard deviation of the centred data
        over all coordinates (``isotropic``) or per coordinate."""
        x = check_positions(x, x.shape[-1], "x")
        mean = x.mean(0)
        # about the per-coordinate mean: x.std() also counted the spread of the coordinates'
        # means (an offset of 30 gave a scale of 32.5 for data of spread 1.6)
        sd = (x - mean).std() if isotropic else x.std(0)
        return cls(mean, sd.clamp_min(1e-6))

    def to_model(self, x: Tensor) -> Tensor:
        return (x - self.shift.to(x)) / self.scale.to(x)

    def to_target(self, z: Tensor) -> Tensor:
        return self.shift.to(z) + self.scale.to(z) * z

    def log_det(self, d: int) -> float:
        """``log |dz/dx| = -sum log scale`` over ``d`` coordinates."""
        s = self.scale.double()
        return -float(s.log().sum()) if s.dim() else -d * float(s.log())


# ------------------------------------------------------------------------------ samplers
def _time_grid(n_steps: int, t_min: float, like: Tensor) -> Tensor:
    return torch.linspace(1.0, t_min, check_positive_int(n_steps, "n_steps") + 1).to(like)


def _velocity(score: ScoreFn, schedule: NoiseSchedule, z: Tensor, t: Tensor) -> Tensor:
    tt = t.expand(z.shape[0])
    return schedule.drift(t) * z - 0.5 * schedule.diffusion2(t) * score(z, tt)


def _velocity_div(
    score: ScoreFn, schedule: NoiseSchedule, z: Tensor, t: Tensor, probe: Tensor | None
) -> tuple[Tensor, Tensor]:
    """Velocity and its divergence (exact when ``probe`` is ``None``, else Hutchinson)."""
    with torch.enable_grad():
        zr = z.detach().requires_grad_(True)
        v = _velocity(score, schedule, zr, t)
        if probe is None:
            div = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
            for i in range(z.shape[1]):
                (g,) = torch.autograd.grad(v[:, i].sum(), zr, retain_graph=i + 1 < z.shape[1])
                div = div + g[:, i]
        else:
            (g,) = torch.autograd.grad((v * probe).sum(), zr)
            div = (g * probe).sum(-1)
    return v.detach(), div.detach()


def _gaussian_log_prob(z: Tensor, std: float) -> Tensor:
    d = z.shape[1]
    return -0.5 * (z * z).sum(-1) / std**2 - d * math.log(std) - 0.5 * d * math.log(2 * math.pi)


def _probe(z: Tensor, trace: str, generator: torch.Generator | None) -> Tensor | None:
    check_choice(trace, "trace", ["exact", "hutchinson"])
    if trace == "exact":
        return None
    u = torch.rand(z.shape, generator=generator, dtype=z.dtype, device=z.device)
    return torch.where(u < 0.5, -torch.ones_like(z), torch.ones_like(z))


def ode_sample(
    score: ScoreFn,
    schedule: NoiseSchedule,
    z1: Tensor,
    n_steps: int = 100,
    t_min: float = 1e-3,
    log_prob: bool = False,
    trace: str = "exact",
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor | None]:
    """Integrates the probability-flow ODE from ``t = 1`` to ``t_min`` (Heun's method).

    Args:
        score: ``score(z, t)``; schedule: the noising schedule.
        z1: ``n x d`` starting states (draws of ``N(0, prior_std^2 I)``).
        n_steps: Heun steps (two score evaluations each).
        t_min: end time.
        log_prob: also return ``log p_0(z_0)`` by the instantaneous change of variables, starting
            from the Gaussian prior density at ``z1``.
        trace: ``"exact"`` divergence (``d`` backward passes per evaluation) or ``"hutchinson"``
            (one Rademacher probe per trajectory, drawn from ``generator``).

    Returns:
        ``(z0 [n, d], log p_0(z0) [n] or None)``.
    """
    z = check_positions(z1, z1.shape[-1], "z1").detach()
    ts = _time_grid(n_steps, t_min, z)
    lp = _gaussian_log_prob(z, schedule.prior_std()) if log_prob else None
    probe = _probe(z, trace, generator) if log_prob else None
    for i in range(n_steps):
        t0, t1 = ts[i], ts[i + 1]
        dt = t1 - t0
        if log_prob:
            v0, d0 = _velocity_div(score, schedule, z, t0, probe)
            z_e = z + dt * v0
            v1, d1 = _velocity_div(score, schedule, z_e, t1, probe)
            lp = lp - 0.5 * dt * (d0 + d1)
        else:
            with torch.no_grad():
                v0 = _velocity(score, schedule, z, t0)
                v1 = _velocity(score, schedule, z + dt * v0, t1)
        z = z + 0.5 * dt * (v0 + v1)
    return z, lp


def ode_log_prob(
    score: ScoreFn,
    schedule: NoiseSchedule,
    z0: Tensor,
    n_steps: int = 100,
    t_min: float = 1e-3,
    trace: str = "exact",
    generator: torch.Generator | None = None,
) -> Tensor:
    """``log p_0(z0)`` of the probability-flow ODE model, integrating from ``t_min`` to 1.

    ``log p_0(z_0) = log N(z_1; 0, prior_std^2 I) + int div v dt`` (Heun's method).

    Args:
        z0: ``n x d`` points. Other arguments: see :func:`ode_sample`.

    Returns:
        ``n`` log-densities.
    """
    z = check_positions(z0, z0.shape[-1], "z0").detach()
    ts = torch.flip(_time_grid(n_steps, t_min, z), [0])
    probe = _probe(z, trace, generator)
    acc = torch.zeros(z.shape[0], dtype=z.dtype, device=z.device)
    for i in range(n_steps):
        t0, t1 = ts[i], ts[i + 1]
        dt = t1 - t0
        v0, d0 = _velocity_div(score, schedule, z, t0, probe)
        v1, d1 = _velocity_div(score, schedule, z + dt * v0, t1, probe)
        z = z + 0.5 * dt * (v0 + v1)
        acc = acc + 0.5 * dt * (d0 + d1)
    return _gaussian_log_prob(z, schedule.prior_std()) + acc


def sde_sample(
    score: ScoreFn,
    schedule: NoiseSchedule,
    z1: Tensor,
    n_steps: int = 200,
    t_min: float = 1e-3,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Reverse-time SDE ``dz = (f z - g^2 s) dt + g dW_bar`` from ``t = 1`` to ``t_min``
    (Euler-Maruyama, no noise on the last step).

    Returns:
        ``n x d`` states at ``t_min``.
    """
    z = check_positions(z1, z1.shape[-1], "z1").detach()
    ts = _time_grid(n_steps, t_min, z)
    with torch.no_grad():
        for i in range(n_steps):
            t0, t1 = ts[i], ts[i + 1]
            h = t0 - t1
            g2 = schedule.diffusion2(t0)
            drift = schedule.drift(t0) * z - g2 * score(z, t0.expand(z.shape[0]))
            z = z - h * drift
            if i + 1 < n_steps:
                noise = torch.randn(z.shape, generator=generator, dtype=z.dtype, device=z.device)
                z = z + torch.sqrt(g2 * h) * noise
    return z


# ------------------------------------------------------------------------------ model
class DiffusionModel(nn.Module):
    """A noise-prediction network with its schedule and normaliser.

    A network with ``n_particles`` (a mean-centred :class:`~samplers.score_nets.ScoreMLP`)
    models the centre-of-mass-free part of particle configurations: its prior draws and
    samples are centred per configuration (its score has no centre-of-mass component, so the
    drift ``f z`` would otherwise scale the prior's centre of mass by ``alpha_tmin /
    alpha_1``, ~152 for the default VP schedule), and its log-densities are those of the
    centre-of-mass-free subspace, ``d - d / n_particles`` dimensions (``log_prob`` centres its
    input first); the normaliser's scale must then be the same for every particle.

    Args:
        net: ``net(z [n, d], t [n]) -> eps_hat [n, d]`` (e.g. :class:`~samplers.score_nets.
            ScoreMLP`).
        schedule: the noising schedule.
        normalizer: target <-> model coordinates.
        t_min: smallest time used in training and sampling.
    """

    def __init__(
        self,
        net: nn.Module,
        schedule: NoiseSchedule,
        normalizer: Normalizer,
        t_min: float = 1e-3,
    ) -> None:
        super().__init__()
        if not isinstance(schedule, NoiseSchedule):
            raise TypeError(f"schedule must be a NoiseSchedule, got {type(schedule).__name__}")
        if not 0.0 < t_min < 1.0:
            raise ValueError(f"t_min must be in (0, 1), got {t_min}")
        self.net, self.schedule, self.normalizer, self.t_min = net, schedule, normalizer, t_min

    @property
    def dim(self) -> int:
        """State dimension ``d`` (the normaliser's shift, else the network's ``dim``)."""
        d = self.normalizer.shift.numel() if self.normalizer.shift.dim() else None
        d = d or getattr(self.net, "dim", None)
        if d is None:
            raise ValueError("cannot infer the dimension of the model")
        return int(d)

    def eps(self, z: Tensor, t: Tensor) -> Tensor:
        return self.net(z, t)

    def score(self, z: Tensor, t: Tensor) -> Tensor:
        """``grad_z log p_t(z) ~ -eps_hat(z, t) / sigma_t`` (``n x d``)."""
        return -self.net(z, t) / self.schedule.sigma(t.to(z))[:, None]

    def dsm_loss(self, z0: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """Denoising score matching ``mean ||eps_hat(alpha z0 + sigma eps, t) - eps||^2``."""
        n = z0.shape[0]
        t = self.t_min + (1 - self.t_min) * torch.rand(
            n, generator=generator, dtype=z0.dtype, device=z0.device
        )
        eps = torch.randn(z0.shape, generator=generator, dtype=z0.dtype, device=z0.device)
        zt = self.schedule.alpha(t)[:, None] * z0 + self.schedule.sigma(t)[:, None] * eps
        return ((self.net(zt, t) - eps) ** 2).sum(-1).mean()

    def fit(
        self,
        x: Tensor,
        steps: int,
        batch_size: int = 512,
        lr: float = 1e-3,
        ema: float = 0.995,
        seed: int | torch.Generator = 0,
        progress: bool | None = False,
        warm_start: bool = False,
    ) -> list[float]:
        """Trains on samples ``x`` (``n x d``, target coordinates) by denoising score matching.

        Adam with a cosine decay of the learning rate to 10%; the weights end as the
        exponential moving average of the weights after each step (``ema``; 0 keeps the last
        weights), bias-corrected as in Adam so that the starting weights get no share: step
        ``s`` moves the average a fraction ``(1 - ema) / (1 - ema^s)`` towards the new weights.
        With ``warm_start=True`` the average starts at the current weights instead (a model
        copied from a trained one, as PTSD's next temperature from the hotter model): they
        keep a share ``ema^steps`` (13% after 400 steps at 0.995), a shrinkage towards the
        model it started from. On MoG-40 (PTSD preset, seeds 1-3, 78 evaluations per sample)
        PTSD's MMD^2 read .0027 +- .0001 without that share and .0020 +- .0005 with it.

        Returns:
            The loss of every step.

        Raises:
            ValueError: ``x`` is not ``n x d`` or has a non-finite entry (it made every weight
                NaN).
        """
        x = check_positions(x, self.dim, "x").detach()
        bad = ~torch.isfinite(x).all(-1)
        if bool(bad.any()):
            raise ValueError(
                f"x must be finite, got non-finite entries in {int(bad.sum())} of {x.shape[0]} "
                f"rows (first: row {int(bad.nonzero()[0, 0])})"
            )
        steps = check_positive_int(steps, "steps", minimum=0)
        batch_size = check_positive_int(batch_size, "batch_size")
        if not 0.0 <= ema < 1.0:
            raise ValueError(f"ema must be in [0, 1), got {ema}")
        gen = torch_generator(seed, x.device)
        z = self.normalizer.to_model(x)
        params = [p for p in self.net.parameters() if p.requires_grad]
        opt = torch.optim.Adam(params, lr=lr)
        sched = torch.optim.lr_scheduler.LambdaLR(
            opt, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / max(steps, 1), 1.0)))
        )
        avg = [p.detach().clone() for p in params]
        losses: list[float] = []
        self.net.train()
        for step in track(range(1, steps + 1), progress=progress, desc="DSM", leave=False):
            idx = torch.randint(
                0, z.shape[0], (min(batch_size, z.shape[0]),), generator=gen, device=z.device
            )
            loss = self.dsm_loss(z[idx], gen)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            sched.step()
            with torch.no_grad():
                # an average started at the initial weights kept ema^steps of them (22% of
                # the random initialisation after 300 steps at 0.995)
                frac = 1.0 - ema if warm_start else (1.0 - ema) / (1.0 - ema**step)
                torch._foreach_lerp_(avg, [p.detach() for p in params], frac)
            losses.append(float(loss.detach()))
        if ema > 0 and steps > 0:
            with torch.no_grad():
                for p, a in zip(params, avg):
                    p.copy_(a)
        self.net.eval()
        return losses

    @property
    def n_particles(self) -> int | None:
        """Particles per configuration of a mean-centred network (``None``: plain vectors)."""
        return getattr(self.net, "n_particles", None)

    def _centre(self, z: Tensor) -> Tensor:
        return z if self.n_particles is None else centre_particles(z, self.n_particles)

    def _com_free_correction(self, d: int, n_steps: int) -> float:
        """Turns the full-space ODE log-density of a particle model into the density on the
        centre-of-mass-free subspace (target coordinates), where its samples lie: the ``s = d /
        n_particles`` centre-of-mass directions add ``-s log(2 pi prior_std^2) / 2`` to the
        prior's log-density, ``s f(t)`` to the divergence (the velocity there is ``f z``; its
        integral by the ODE's trapezoid rule) and ``-sum_j log scale_j`` to the normaliser's
        log-determinant; this is minus their sum (0 for a plain network).
        """
        if self.n_particles is None:
            return 0.0
        s = d // self.n_particles
        std = self.schedule.prior_std()
        ts = torch.flip(_time_grid(n_steps, self.t_min, torch.zeros((), dtype=torch.float64)), [0])
        f = self.schedule.drift(ts)
        drift = float((0.5 * (ts[1:] - ts[:-1]) * (f[1:] + f[:-1])).sum())
        scale = self.normalizer.scale.double().cpu()
        if scale.dim():
            per = scale.reshape(self.n_particles, s)
            if not bool(torch.all(per == per[0])):
                raise ValueError(
                    "a particle model needs the same normaliser scale for every particle"
                )
            log_scale = float(per[0].log().sum())
        else:
            log_scale = s * float(scale.log())
        return 0.5 * s * math.log(2 * math.pi * std**2) - s * drift + log_scale

    def prior(self, n: int, generator: torch.Generator | None, like: Tensor) -> Tensor:
        """``n`` draws of ``z_1 ~ N(0, prior_std^2 I)`` (centred per configuration for a
        particle network: the Gaussian of the centre-of-mass-free subspace)."""
        z = torch.randn(n, self.dim, generator=generator, dtype=like.dtype, device=like.device)
        return self._centre(self.schedule.prior_std() * z)

    def sample(
        self,
        n: int,
        seed: int | torch.Generator = 0,
        method: str = "ode",
        n_steps: int = 100,
        score: ScoreFn | None = None,
    ) -> Tensor:
        """``n`` samples in target coordinates by the probability-flow ODE or the reverse SDE.

        ``score`` replaces the model's own score (e.g. an extrapolation of two models sharing
        this model's schedule and normaliser).
        """
        check_choice(method, "method", ["ode", "sde"])
        gen = torch_generator(seed, self.normalizer.shift.device)
        z1 = self.prior(check_positive_int(n, "n"), gen, self.normalizer.shift)
        fn = score or self.score
        if method == "ode":
            z, _ = ode_sample(fn, self.schedule, z1, n_steps, self.t_min)
        else:
            # the SDE's noise has a centre-of-mass part, which the score does not see
            z = self._centre(sde_sample(fn, self.schedule, z1, n_steps, self.t_min, gen))
        return self.normalizer.to_target(z)

    def sample_with_log_prob(
        self,
        n: int,
        seed: int | torch.Generator = 0,
        n_steps: int = 100,
        trace: str = "exact",
        score: ScoreFn | None = None,
    ) -> tuple[Tensor, Tensor]:
        """ODE samples and their model log-density ``log q(x)`` in target coordinates."""
        gen = torch_generator(seed, self.normalizer.shift.device)
        z1 = self.prior(check_positive_int(n, "n"), gen, self.normalizer.shift)
        z, lq = ode_sample(
            score or self.score, self.schedule, z1, n_steps, self.t_min, True, trace, gen
        )
        assert lq is not None
        d = z.shape[1]
        lq = lq + self.normalizer.log_det(d) + self._com_free_correction(d, n_steps)
        return self.normalizer.to_target(z), lq

    def log_prob(
        self, x: Tensor, n_steps: int = 100, trace: str = "exact", seed: int = 0
    ) -> Tensor:
        """Model log-density of ``x`` (``n x d`` target coordinates) by the ODE (of its
        centre-of-mass-free part for a particle network)."""
        x = check_positions(x, self.dim, "x")
        gen = torch_generator(seed, x.device)
        z = self._centre(self.normalizer.to_model(x))
        lq = ode_log_prob(self.score, self.schedule, z, n_steps, self.t_min, trace, gen)
        d = z.shape[1]
        return lq + self.normalizer.log_det(d) + self._com_free_correction(d, n_steps)

    def copy(self) -> DiffusionModel:
        """A deep copy (for warm starts)."""
        return copy.deepcopy(self)


# ---------------------------------------------------------------- sampler scaffolding
class CountingTarget(Target):
    """Wraps a target and counts the rows of every evaluation (log-density and gradient)."""

    def __init__(self, base: Target) -> None:
        if not isinstance(base, Target):
            raise TypeError(f"base must be a Target, got {type(base).__name__}")
        super().__init__(base.dim)
        self.base = base
        self.name = base.name
        self.log_normalizer = base.log_normalizer
        self.n_log_prob = 0
        self.n_grad = 0

    def log_prob(self, x: Tensor) -> Tensor:
        self.n_log_prob += x.shape[0]
        return self.base.log_prob(x)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        self.n_grad += x.shape[0]
        return self.base.log_prob_and_grad(x)

    def energy(self, x: Tensor) -> Tensor:
        return self.base.energy(x)

    def init_positions(self, n: int, generator: torch.Generator) -> Tensor:
        return self.base.init_positions(n, generator)

    @property
    def n_evals(self) -> int:
        return self.n_log_prob + self.n_grad


class TemperedTarget(Target):
    """``beta * log p(x)`` of a base target (gradient scaled alike)."""

    def __init__(self, base: Target, beta: float) -> None:
        beta = check_real(beta, "beta", strict=True)
        super().__init__(base.dim)
        self.base, self.beta = base, beta
        self.name = f"{base.name}@T={1.0 / self.beta:.4g}"

    def log_prob(self, x: Tensor) -> Tensor:
        return self.beta * self.base.log_prob(x)

    def log_prob_and_grad(self, x: Tensor) -> tuple[Tensor, Tensor]:
        lp, g = self.base.log_prob_and_grad(x)
        return self.beta * lp, self.beta * g

    def init_positions(self, n: int, generator: torch.Generator) -> Tensor:
        return self.base.init_positions(n, generator)


class NeuralSampler(ABC):
    """``run(target, n_samples, seed) -> SamplerResult`` for samplers that are not one Markov
    chain loop (PTSD, DiKL): every target row they evaluate, training included, is counted by
    a :class:`CountingTarget` around the target.

    Args:
        n_chains: accepted for the benchmark runner's interface; must be ``None`` (these
            samplers return independent draws).
        budget: target evaluations per returned sample, where the sampler supports it.
        compile: accepted for the runner's interface (inner MCMC runs eagerly).
        progress: show progress bars.
    """

    name = "neural"

    def __init__(
        self,
        *,
        n_chains: int | None = None,
        budget: float | None = None,
        compile: bool | str = "auto",
        progress: bool | None = False,
    ) -> None:
        if n_chains is not None:
            raise ValueError(
                f"{type(self).__name__} returns independent draws; n_chains must be None, got "
                f"{n_chains!r}"
            )
        self.budget = None if budget is None else check_real(budget, "budget", strict=True)
        self.compile = compile
        self.progress = progress

    @abstractmethod
    def _sample(
        self, target: CountingTarget, n_samples: int, seed: int, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, Any]]:
        """Draws ``n_samples x d`` samples; returns them with diagnostics."""

    #: named constructor settings (``preset``); subclasses fill it
    PRESETS: dict[str, dict[str, Any]] = {}
    #: attributes recorded in every result's ``config``
    CONFIG_KEYS: tuple[str, ...] = ()

    @classmethod
    def preset(cls, name: str, **overrides: Any) -> NeuralSampler:
        """An instance configured from the class's ``PRESETS[name]``, updated by ``overrides``."""
        check_choice(name, "name", sorted(cls.PRESETS))
        return cls(**{**cls.PRESETS[name], **overrides})

    def config(self) -> dict[str, Any]:
        return {"budget": self.budget, **{k: getattr(self, k) for k in self.CONFIG_KEYS}}

    def run(self, target: Target, n_samples: int, seed: int = 0) -> SamplerResult:
        """Draws ``n_samples`` samples from ``target`` with the random stream of ``seed``.

        Returns:
            A :class:`~samplers.base.SamplerResult` (``chains`` is ``n x 1 x d``); its
            evaluation counts include training.
        """
        if not isinstance(target, Target):
            raise TypeError(
                "target must be a samplers.targets.Target (wrap a function with "
                f"samplers.targets.from_log_prob(fn, dim)), got {type(target).__name__}"
            )
        seed = check_seed(seed)
        n_samples = check_positive_int(n_samples, "n_samples")
        counter = CountingTarget(target)
        gen = torch_generator(seed, target._device())
        t0 = time.perf_counter()
        samples, diag = self._sample(counter, n_samples, seed, gen)
        wall = time.perf_counter() - t0
        if not bool(torch.isfinite(samples).all()):
            raise RuntimeError(f"{self.name}: non-finite samples")
        return SamplerResult(
            samples=samples.detach(),
            chains=samples.detach()[:, None],
            n_log_prob_evals=counter.n_log_prob,
            n_grad_evals=counter.n_grad,
            wall_time=wall,
            diagnostics=diag,
            sampler=self.name,
            target=target.name,
            seed=seed,
            config=self.config(),
        )
