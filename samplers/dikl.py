"""Reverse diffusive KL training of a one-step neural sampler (DiKL; He, Chen, Zhang et al.,
AISTATS 2025).

A generator ``u = g(w)``, ``w ~ N(0, I)``, defines ``q``; the loss is a weighted sum over noise
levels of ``KL(q_t || p_t)``, where ``q_t, p_t`` are ``q`` and the target ``p`` convolved with
the Gaussian kernel ``k_t(u_t | u) = N(alpha_t u, sigma_t^2 I)``. With ``u_t = alpha_t g(w) +
sigma_t eps`` its gradient is

.. math::
    \\nabla_\\theta \\mathrm{KL}(q_t \\| p_t) = \\mathbb E_{w, \\epsilon}\\big[(\\nabla \\log
    q_t(u_t) - \\nabla \\log p_t(u_t))^\\top \\partial u_t / \\partial \\theta\\big],

(the score-function term ``E[d/dtheta log q_t]`` vanishes), so :func:`dikl_loss` is the
surrogate ``mean w(t) <stopgrad(s_q - s_p), u_t>``. Its two scores:

- the noisy model score ``s_q``: a score network trained by denoising score matching on
  generator samples (:class:`~samplers.diffusion.DiffusionModel`, updated every iteration);
- the noisy target score ``s_p(u_t) = grad log p_t(u_t)`` (:func:`noisy_target_score`), an
  expectation under the denoising posterior ``p(u_0 | u_t) ~ p(u_0) N(u_t; alpha u_0, sigma^2
  I)``: importance sampling with the proposal ``N(u_t / alpha, sigma^2 / alpha^2 I)`` (weights
  ``p(u_0)``), resampling, then MALA on the posterior; the score is a per-level convex mix of
  Tweedie's identity ``(alpha E[u_0] - u_t) / sigma^2`` and the target score identity
  ``E[grad log p(u_0)] / alpha``, each unbiased under exact posterior samples, weighted
  ``c = P sigma^2 / (alpha^2 + P sigma^2)`` towards Tweedie (low variance at large noise) and
  ``1 - c`` towards the target score identity (low variance at small noise), with ``P`` the
  target's curvature scale (``target_precision``): the weight that makes the mix exact for a
  Gaussian of precision ``P``. (He et al. mix with ``c = 1 - alpha^2`` of a VP kernel in the
  target's own coordinates, where MoG-40's precision is ~0.6; in model coordinates at
  ``data_scale`` 20 the precision is ~230 and ``P = 1`` would put the crossover 15x too high,
  leaving most noise levels to the target score identity's variance.)

Noise levels are drawn with density ``t_exponent * t^(t_exponent - 1)`` on ``[0, 1]``
(:func:`sample_times`), i.e. the loss's noise-level weighting times that density; values above
1 favour high noise, where the generator's mass moves between the modes of ``p_t``.

Everything runs in coordinates ``u = (x - shift) / scale`` (a fixed :class:`~samplers.diffusion.
Normalizer` from the settings) with a variance-exploding kernel (``alpha = 1``, ``sigma`` log-
uniform in ``[sigma_min, sigma_max]``) by default. Every target row evaluated in training is
counted; drawing samples afterwards costs one generator pass and no target evaluation.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor

from probrec.checks import as_float_tensor, check_choice, check_positive_int, check_real
from probrec.progress import track
from probrec.seeding import seeded_rng, torch_generator

from .diffusion import (
    CountingTarget,
    DiffusionModel,
    NeuralSampler,
    NoiseSchedule,
    Normalizer,
    ScoreFn,
    VESchedule,
    VPSchedule,
)
from .kernels import ChainState, MALAKernel
from .score_nets import GeneratorMLP, ScoreMLP
from .targets.base import Target, check_positions

__all__ = [
    "DiKL",
    "PRESETS",
    "noisy_target_score",
    "dikl_loss",
    "sample_times",
    "NormalizedTarget",
]


class NormalizedTarget(Target):
    """The target in model coordinates: ``log p(shift + scale u)`` (constant Jacobian dropped),
    gradient ``scale * grad log p``."""

    def __init__(self, base: Target, normalizer: Normalizer) -> None:
        super().__init__(base.dim)
        self.base, self.normalizer = base, normalizer
        self.name = base.name

    def log_prob(self, u: Tensor) -> Tensor:
        return self.base.log_prob(self.normalizer.to_target(u))

    def log_prob_and_grad(self, u: Tensor) -> tuple[Tensor, Tensor]:
        lp, g = self.base.log_prob_and_grad(self.normalizer.to_target(u))
        return lp, g * self.normalizer.scale.to(g)


def _posterior(
    u: Tensor, fn: Any, u_t: Tensor, alpha: Tensor, inv_var: Tensor
) -> tuple[Tensor, Tensor]:
    """``log p(u) - ||u_t - alpha u||^2 / (2 sigma^2)`` and its gradient (rows)."""
    lp, g = fn(u)
    r = u_t - alpha[:, None] * u
    return lp - 0.5 * inv_var * (r * r).sum(-1), g + (alpha * inv_var)[:, None] * r


def _mix_weight(alpha: Tensor, sigma: Tensor, precision: float) -> Tensor:
    """Weight ``c = P sigma^2 / (alpha^2 + P sigma^2)`` of Tweedie's identity in the mixed score.

    For a Gaussian target with precision ``P`` both identities are linear in ``u_0``, with
    slopes ``alpha / sigma^2`` (Tweedie) and ``-P / alpha`` (target score); this ``c`` cancels
    the ``u_0`` dependence, so the mix has zero variance there. The crossover ``c = 1 / 2`` is
    at ``sigma / alpha = P^{-1/2}`` (the target's length scale), not at ``sigma / alpha = 1``:
    a precision of 230 in model units (MoG-40 at ``data_scale`` 20) moves it 15x lower.
    """
    v = precision * sigma * sigma
    return v / (alpha * alpha + v)


def _kernel_param(value: Tensor | float, name: str, u_t: Tensor) -> Tensor:
    """``value`` (a scalar or one entry per row of ``u_t``) as an ``n`` tensor like ``u_t``.

    Raises:
        ValueError: wrong shape, or an entry that is not positive and finite (``sigma = 0``
            or ``alpha = 0`` made every score NaN; a negative ``sigma`` passed as its absolute
            value).
    """
    n = u_t.shape[0]
    v = as_float_tensor(value, name, dtype=u_t.dtype, device=u_t.device)
    if v.dim() == 0:
        v = v.expand(n)
    if v.shape != (n,):
        raise ValueError(f"{name} must be a scalar or have shape ({n},), got {tuple(v.shape)}")
    if not bool((v > 0).all()):
        raise ValueError(f"{name} must be positive, got minimum {float(v.min()):g}")
    return v


def noisy_target_score(
    target: Target,
    u_t: Tensor,
    alpha: Tensor,
    sigma: Tensor,
    generator: torch.Generator,
    n_is: int = 64,
    n_mcmc: int = 5,
    n_posterior: int = 4,
    step_scale: float = 0.5,
    target_precision: float = 1.0,
) -> tuple[Tensor, dict[str, float]]:
    """Estimates ``grad log p_t(u_t)`` for ``p_t = p * N(alpha u, sigma^2 I)``.

    Args:
        target: ``log p`` (in the coordinates of ``u_t``).
        u_t: ``n x d`` noisy points; alpha, sigma: ``n`` positive kernel parameters per row
            (or scalars shared by all rows).
        generator: random stream.
        n_is: importance samples per row from ``N(u_t / alpha, sigma^2 / alpha^2 I)``.
        n_mcmc: MALA steps on the posterior after resampling (0: the self-normalised
            importance estimate of Tweedie's identity).
        n_posterior: posterior chains per row (resampled from the importance samples).
        step_scale: MALA step ``h = step_scale / (alpha^2 / sigma^2 + target_precision)``.
        target_precision: a curvature scale ``P`` of ``-log p`` (e.g. the inverse squared
            width of a mode): sets the MALA step at small noise and the mix weight
            ``c = P sigma^2 / (alpha^2 + P sigma^2)`` of Tweedie's identity.

    Returns:
        ``(score [n, d], stats)``: ``is_ess_fraction``, the importance ESS over ``n_is``
        averaged over the rows (0 for a row none of whose proposals lies in the target's
        support) and, with ``n_mcmc``, ``mcmc_acceptance``, the mean MALA acceptance
        probability of the chains run.

    Raises:
        ValueError: ``u_t`` is not ``n x target.dim``; ``alpha`` or ``sigma`` is not a scalar
            or ``n`` positive finite values; ``step_scale`` is not positive or
            ``target_precision`` is negative (both were used as given: a negative precision
            gave NaN or a silently wrong score).
        TypeError: ``u_t`` is not a floating tensor.
    """
    check_positions(u_t, target.dim, "u_t")
    return _noisy_target_score(
        target,
        u_t,
        _kernel_param(alpha, "alpha", u_t),
        _kernel_param(sigma, "sigma", u_t),
        generator,
        check_positive_int(n_is, "n_is"),
        check_positive_int(n_mcmc, "n_mcmc", minimum=0),
        check_positive_int(n_posterior, "n_posterior"),
        check_real(step_scale, "step_scale", strict=True),
        check_real(target_precision, "target_precision"),
    )


def _noisy_target_score(
    target: Target,
    u_t: Tensor,
    a: Tensor,
    s: Tensor,
    generator: torch.Generator,
    n_is: int,
    n_mcmc: int,
    p: int,
    step_scale: float,
    target_precision: float,
) -> tuple[Tensor, dict[str, float]]:
    """:func:`noisy_target_score` without its argument checks (``a``, ``s``: ``[n]``), for
    :class:`DiKL`'s training loop, whose arguments are valid by construction (the checks'
    finiteness and positivity tests synchronise a GPU on every iteration)."""
    n, d = u_t.shape
    noise = torch.randn(n, n_is, d, generator=generator, dtype=u_t.dtype, device=u_t.device)
    props = (u_t / a[:, None])[:, None] + (s / a)[:, None, None] * noise
    with torch.no_grad():
        log_w = target.log_prob(props.reshape(-1, d)).reshape(n, n_is)
    log_w = torch.where(torch.isfinite(log_w), log_w, torch.full_like(log_w, -math.inf))
    dead = ~torch.isfinite(log_w).any(-1)
    if not bool(dead.any()):
        return _posterior_score(
            target, u_t, a, s, props, log_w, generator, n_mcmc, p, step_scale, target_precision
        )
    # no proposal of these rows lies in the target's support (a bounded target): the target
    # says nothing there, so their score is the noise kernel's alone (uniform weights); the
    # other rows are estimated as usual from the proposals already evaluated
    out = (a[:, None] * props.mean(1) - u_t) / (s * s)[:, None]
    stats = {"is_ess_fraction": 0.0, **({"mcmc_acceptance": 0.0} if n_mcmc else {})}
    live = ~dead
    if bool(live.any()):
        out[live], stats = _posterior_score(
            target, u_t[live], a[live], s[live], props[live], log_w[live], generator, n_mcmc,
            p, step_scale, target_precision,
        )  # fmt: skip
        # a dead row has no importance sample (ESS 0), as when every row is dead: the mean
        # over the live rows alone read 0.96 with 199 of 200 rows dead
        stats["is_ess_fraction"] *= float(live.sum()) / n
    return out, stats


def _posterior_score(
    target: Target,
    u_t: Tensor,
    a: Tensor,
    s: Tensor,
    props: Tensor,
    log_w: Tensor,
    generator: torch.Generator,
    n_mcmc: int,
    p: int,
    step_scale: float,
    target_precision: float,
) -> tuple[Tensor, dict[str, float]]:
    """The estimate of :func:`noisy_target_score` from evaluated proposals ``props`` (``n x
    n_is x d``) with log-weights ``log_w`` (``n x n_is``, each row with a finite entry)."""
    n, n_is, d = props.shape
    inv_var = 1.0 / (s * s)
    w = torch.softmax(log_w, -1)
    stats = {"is_ess_fraction": float((1.0 / (w * w).sum(-1)).mean()) / n_is}
    if n_mcmc == 0:
        mean = (w[..., None] * props).sum(1)
        return (a[:, None] * mean - u_t) * inv_var[:, None], stats
    idx = torch.multinomial(w, p, replacement=True, generator=generator)  # n x p
    u0 = torch.gather(props, 1, idx[..., None].expand(n, p, d)).reshape(n * p, d)
    ut_r, a_r, iv_r = (
        u_t.repeat_interleave(p, 0),
        a.repeat_interleave(p),
        inv_var.repeat_interleave(p),
    )
    fn = target.log_prob_and_grad
    lp, g = _posterior(u0, fn, ut_r, a_r, iv_r)
    state = ChainState(u0, lp, g)
    kernel = MALAKernel()
    h = step_scale / (a_r * a_r * iv_r + target_precision)
    acc = 0.0
    for _ in range(n_mcmc):
        state, info = kernel.step(state, _posterior, h, generator, fn_args=(fn, ut_r, a_r, iv_r))
        acc += float(info.accept_prob.mean()) / n_mcmc
    stats["mcmc_acceptance"] = acc
    x0 = state.position
    resid = ut_r - a_r[:, None] * x0
    grad_p = state.grad - (a_r * iv_r)[:, None] * resid  # grad log p(u_0) at the states
    tweedie = -resid * iv_r[:, None]
    tsi = grad_p / a_r[:, None]
    c = _mix_weight(a, s, target_precision).repeat_interleave(p)[:, None]
    est = c * tweedie + (1 - c) * tsi
    return est.reshape(n, p, d).mean(1), stats


def sample_times(
    n: int,
    exponent: float,
    generator: torch.Generator,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """``n`` diffusion times ``t = U^(1 / exponent)`` in ``[0, 1]``, ``U`` uniform.

    The density is ``exponent * t^(exponent - 1)`` (``E[t] = exponent / (exponent + 1)``):
    ``exponent = 1`` is uniform, ``exponent > 1`` puts more noise levels near ``t = 1`` (high
    noise). Drawing ``t`` this way multiplies the loss's noise-level weighting by that density.
    """
    n = check_positive_int(n, "n", minimum=0)
    exponent = check_real(exponent, "exponent", strict=True)
    u = torch.rand(n, generator=generator, dtype=dtype, device=device)
    return u if exponent == 1.0 else u.pow(1.0 / exponent)


def dikl_loss(
    u: Tensor,
    t: Tensor,
    eps: Tensor,
    schedule: NoiseSchedule,
    model_score: ScoreFn,
    target_score: ScoreFn,
    weight: str = "sigma2",
) -> Tensor:
    """Surrogate whose gradient (through ``u = g_theta(w)``) is the reverse diffusive KL gradient.

    ``mean_i w(t_i) <s_q(u_t) - s_p(u_t), u_t>`` with ``u_t = alpha u + sigma eps`` and both
    scores held fixed (computed without gradient at ``u_t``).

    Args:
        u: ``n x d`` generator outputs (with a graph to the generator's parameters).
        t: ``n`` times; eps: ``n x d`` noise.
        schedule: the kernel's ``alpha_t, sigma_t``.
        model_score, target_score: ``score(u_t, t) -> n x d``.
        weight: ``"sigma2"`` (``w = sigma_t^2``), ``"sigma"`` (``w = sigma_t``) or ``"none"``
            (``w = 1``).

    Returns:
        A scalar tensor.
    """
    check_choice(weight, "weight", ["sigma2", "sigma", "none"])
    a, s = schedule.alpha(t).to(u), schedule.sigma(t).to(u)
    u_t = a[:, None] * u + s[:, None] * eps
    with torch.no_grad():
        diff = model_score(u_t.detach(), t) - target_score(u_t.detach(), t)
    wt = {"sigma2": s * s, "sigma": s, "none": torch.ones_like(s)}[weight]
    return (wt * (diff * u_t).sum(-1)).mean()


PRESETS: dict[str, dict[str, Any]] = {
    "mog40": {
        "n_iters": 5000,
        "lr": 3e-3,
        "lr_decay": 0.1,
        "weight": "sigma",
        # 12 DSM steps per generator step keep the score network up with the generator: on
        # seeds 0-3, 40 / 38 / 40 / 40 modes, MMD^2 .025 (4 steps: 35 / 39 / 35 on seeds 0-2)
        "n_score_steps": 12,
        # noise levels with density 2t (60% of draws above sigma 0.3, where MoG-40's modes
        # merge in p_t, against 37% uniform): the generator's mass reaches isolated clusters
        # before the low-noise levels pin it (seed 1 missed 2 modes with uniform t)
        "t_exponent": 2.0,
        "data_scale": 20.0,
        "latent_dim": 8,
        "gen_hidden": 256,
        "gen_layers": 3,
        "score_hidden": 256,
        "score_layers": 3,
        "batch_size": 256,
        "sigma_min": 0.02,
        "sigma_max": 1.5,
        "n_is": 64,
        "n_mcmc": 5,
        "n_posterior": 4,
        "target_precision": 230.0,
    },
    "mog40_gpu": {
        "n_iters": 30_000,
        "weight": "sigma",
        "n_score_steps": 4,
        "t_exponent": 2.0,
        "data_scale": 20.0,
        "latent_dim": 16,
        "gen_hidden": 400,
        "gen_layers": 4,
        "score_hidden": 400,
        "score_layers": 4,
        "batch_size": 1024,
        "sigma_min": 0.02,
        "sigma_max": 1.5,
        "n_is": 256,
        "n_mcmc": 20,
        "n_posterior": 8,
        "target_precision": 230.0,
    },
}


class DiKL(NeuralSampler):
    """One-step neural sampler trained by reverse diffusive KL.

    Args:
        n_iters: training iterations (without ``budget``).
        budget: target evaluations per returned sample spent in training (sets ``n_iters``).
        data_scale, data_shift: the fixed normaliser ``u = (x - shift) / scale`` (a particle
            system ignores ``data_shift``: its configurations are centred, shift 0).
        latent_dim: latent noise dimension (``d`` if ``None``).
        gen_init_std: initial per-coordinate spread of the generator's outputs in model
            coordinates (:class:`~samplers.score_nets.GeneratorMLP` ``output_std``; ``None``:
            PyTorch's default initialisation, a spread of ~0.1).
        gen_hidden, gen_layers, score_hidden, score_layers: MLP sizes.
        batch_size: generator samples per iteration.
        lr, score_lr: Adam learning rates of the generator and the score network.
        lr_decay: the generator's learning rate follows a cosine from ``lr`` down to
            ``lr_decay * lr`` over training (1: constant).
        grad_clip: clip the generator gradient's norm to this (``None``: no clipping).
        n_score_steps: DSM steps of the score network per iteration.
        t_exponent: noise levels are drawn as ``t = U^(1 / t_exponent)``, ``U`` uniform
            (:func:`sample_times`; density ``t_exponent t^(t_exponent - 1)``; 1: uniform in
            ``log sigma``, > 1: more weight on high noise, where the modes of ``p_t`` merge
            and mass can move between them).
        schedule: ``"ve"`` (``sigma`` in ``[sigma_min, sigma_max]``) or ``"vp"`` (``t`` mapped
            to ``[t_min, 1]``, ``t_min = 1e-3``, where the score network is trained: ``sigma_0 =
            0``).
        sigma_min, sigma_max: VE noise range (model coordinates).
        n_is, n_mcmc, n_posterior, step_scale, target_precision: the noisy target score
            estimator (:func:`noisy_target_score`).
        weight: noise-level weighting of the loss (``"sigma2"``, ``"sigma"`` or ``"none"``).
        n_particles: mean-centred networks for particle systems (taken from the target).
        n_chains, compile, progress: see :class:`~samplers.diffusion.NeuralSampler`.
    """

    name = "dikl"
    PRESETS = PRESETS
    CONFIG_KEYS = (
        "n_iters",
        "data_scale",
        "data_shift",
        "latent_dim",
        "gen_init_std",
        "gen_hidden",
        "gen_layers",
        "score_hidden",
        "score_layers",
        "batch_size",
        "lr",
        "score_lr",
        "lr_decay",
        "grad_clip",
        "n_score_steps",
        "t_exponent",
        "schedule",
        "sigma_min",
        "sigma_max",
        "n_is",
        "n_mcmc",
        "n_posterior",
        "step_scale",
        "target_precision",
        "weight",
    )

    def __init__(
        self,
        n_iters: int = 3000,
        *,
        budget: float | None = None,
        data_scale: float = 1.0,
        data_shift: float = 0.0,
        latent_dim: int | None = None,
        gen_init_std: float | None = None,
        gen_hidden: int = 256,
        gen_layers: int = 3,
        score_hidden: int = 256,
        score_layers: int = 3,
        batch_size: int = 256,
        lr: float = 1e-3,
        score_lr: float = 1e-3,
        lr_decay: float = 1.0,
        grad_clip: float | None = None,
        n_score_steps: int = 2,
        t_exponent: float = 1.0,
        schedule: str = "ve",
        sigma_min: float = 0.02,
        sigma_max: float = 1.5,
        n_is: int = 64,
        n_mcmc: int = 5,
        n_posterior: int = 4,
        step_scale: float = 0.5,
        target_precision: float = 1.0,
        weight: str = "sigma2",
        n_particles: int | None = None,
        n_chains: int | None = None,
        compile: bool | str = "auto",
        progress: bool | None = False,
    ) -> None:
        super().__init__(n_chains=n_chains, budget=budget, compile=compile, progress=progress)
        self.n_iters = check_positive_int(n_iters, "n_iters")
        self.data_scale = check_real(data_scale, "data_scale", strict=True)
        self.data_shift = check_real(data_shift, "data_shift", minimum=-math.inf)
        self.latent_dim = latent_dim
        self.gen_init_std = (
            None if gen_init_std is None else check_real(gen_init_std, "gen_init_std", strict=True)
        )
        self.gen_hidden = check_positive_int(gen_hidden, "gen_hidden")
        self.gen_layers = check_positive_int(gen_layers, "gen_layers")
        self.score_hidden = check_positive_int(score_hidden, "score_hidden")
        self.score_layers = check_positive_int(score_layers, "score_layers")
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.lr = check_real(lr, "lr", strict=True)
        self.score_lr = check_real(score_lr, "score_lr", strict=True)
        if not 0 < check_real(lr_decay, "lr_decay") <= 1:
            raise ValueError(f"lr_decay must be in (0, 1], got {lr_decay}")
        self.lr_decay = float(lr_decay)
        self.grad_clip = (
            None if grad_clip is None else check_real(grad_clip, "grad_clip", strict=True)
        )
        self.n_score_steps = check_positive_int(n_score_steps, "n_score_steps")
        self.t_exponent = check_real(t_exponent, "t_exponent", strict=True)
        self.schedule = check_choice(schedule, "schedule", ["ve", "vp"])
        sigma_min = check_real(sigma_min, "sigma_min", strict=True)
        sigma_max = check_real(sigma_max, "sigma_max", strict=True)
        if not sigma_min < sigma_max:
            raise ValueError(f"need 0 < sigma_min < sigma_max, got {sigma_min}, {sigma_max}")
        self.sigma_min, self.sigma_max = sigma_min, sigma_max
        self.n_is = check_positive_int(n_is, "n_is")
        self.n_mcmc = check_positive_int(n_mcmc, "n_mcmc", minimum=0)
        self.n_posterior = check_positive_int(n_posterior, "n_posterior")
        self.step_scale = check_real(step_scale, "step_scale", strict=True)
        self.target_precision = check_real(target_precision, "target_precision")
        self.weight = check_choice(weight, "weight", ["sigma2", "sigma", "none"])
        self.n_particles = n_particles

    def evals_per_iteration(self) -> int:
        """Target rows evaluated per training iteration."""
        mcmc = self.n_posterior * (self.n_mcmc + 1) if self.n_mcmc else 0
        return self.batch_size * (self.n_is + mcmc)

    def iterations(self, n_samples: int) -> int:
        """Training iterations for ``n_samples`` samples (from ``budget`` when given)."""
        if self.budget is None:
            return self.n_iters
        it = int(self.budget * n_samples // self.evals_per_iteration())
        if it < 1:
            raise ValueError(
                f"budget {self.budget:g} per sample pays for no DiKL iteration "
                f"({self.evals_per_iteration()} evaluations each)"
            )
        return it

    def _sample(
        self, target: CountingTarget, n_samples: int, seed: int, gen: torch.Generator
    ) -> tuple[Tensor, dict[str, Any]]:
        n_particles = self.n_particles or getattr(target.base, "n_particles", None)
        d = target.dim
        dt = target._dtype()
        dev = target._device()
        norm = Normalizer(
            torch.full((d,), self.data_shift, dtype=dt)
            if n_particles is None
            else torch.zeros(d, dtype=dt),
            torch.tensor(self.data_scale, dtype=dt),
        ).to(dev)
        utarget = NormalizedTarget(target, norm)
        with seeded_rng(seed):  # initial weights from the run's seed (CPU generator)
            g_net = GeneratorMLP(
                d,
                self.latent_dim,
                self.gen_hidden,
                self.gen_layers,
                n_particles,
                output_std=self.gen_init_std,
            ).to(dev, dt)
            s_net = ScoreMLP(d, self.score_hidden, self.score_layers, n_particles=n_particles).to(
                dev, dt
            )
        sched = (
            VESchedule(self.sigma_min, self.sigma_max) if self.schedule == "ve" else VPSchedule()
        )
        model = DiffusionModel(s_net, sched, norm, t_min=1e-3)
        opt_g = torch.optim.Adam(g_net.parameters(), lr=self.lr)
        opt_s = torch.optim.Adam(s_net.parameters(), lr=self.score_lr)
        n_it = self.iterations(n_samples)
        floor = self.lr_decay
        sched_g = torch.optim.lr_scheduler.LambdaLR(
            opt_g, lambda i: floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * i / n_it))
        )
        ess, acc, losses = [], [], []
        for _ in track(range(n_it), progress=self.progress, desc="DiKL", leave=False):
            w = torch.randn(self.batch_size, g_net.latent_dim, generator=gen, dtype=dt, device=dev)
            u = g_net(w)
            for _ in range(self.n_score_steps):
                loss_s = model.dsm_loss(u.detach(), gen)
                opt_s.zero_grad(set_to_none=True)
                loss_s.backward()
                opt_s.step()
            t = sample_times(self.batch_size, self.t_exponent, gen, dt, dev)
            if self.schedule == "vp":
                # VP's sigma_0 is 0: a draw t = 0 (1 in 2^24 float32 draws, ~7% of a 5000 x 256
                # run) made the score NaN and with it every generator weight; below t_min the
                # score network is not trained either
                t = model.t_min + (1 - model.t_min) * t
            eps = torch.randn(u.shape, generator=gen, dtype=dt, device=dev)
            box: dict[str, float] = {}

            def t_score(u_t: Tensor, tt: Tensor, box=box) -> Tensor:
                sc, st = _noisy_target_score(
                    utarget,
                    u_t,
                    sched.alpha(tt).to(u_t),
                    sched.sigma(tt).to(u_t),
                    gen,
                    self.n_is,
                    self.n_mcmc,
                    self.n_posterior,
                    self.step_scale,
                    self.target_precision,
                )
                box.update(st)
                return sc

            loss = dikl_loss(u, t, eps, sched, model.score, t_score, self.weight)
            opt_g.zero_grad(set_to_none=True)
            loss.backward()
            if self.grad_clip is not None:
                torch.nn.utils.clip_grad_norm_(g_net.parameters(), self.grad_clip)
            opt_g.step()
            sched_g.step()
            ess.append(box["is_ess_fraction"])
            acc.append(box.get("mcmc_acceptance", float("nan")))
            losses.append(float(loss_s.detach()))
        self.generator_, self.normalizer_ = g_net.eval(), norm
        with torch.no_grad():
            x = self.sample(n_samples, gen)
        k = max(1, n_it // 10)
        diag = {
            "n_iters": n_it,
            "is_ess_fraction_last": sum(ess[-k:]) / k,
            "mcmc_acceptance_last": sum(acc[-k:]) / k,
            "dsm_loss_last": sum(losses[-k:]) / k,
            "evals_per_iteration": self.evals_per_iteration(),
        }
        return x, diag

    def sample(self, n: int, seed: int | torch.Generator = 0) -> Tensor:
        """``n`` samples from the trained generator (one pass; no target evaluation)."""
        if not hasattr(self, "generator_"):
            raise RuntimeError("DiKL.sample needs a trained generator: call run() first")
        n = check_positive_int(n, "n")
        dev = self.normalizer_.shift.device
        gen = torch_generator(seed, dev)
        w = torch.randn(
            n,
            self.generator_.latent_dim,
            generator=gen,
            dtype=self.normalizer_.shift.dtype,
            device=dev,
        )
        with torch.no_grad():
            return self.normalizer_.to_target(self.generator_(w))
