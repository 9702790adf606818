"""Stage 2: the linear causal latent model, fitted by maximum marginal likelihood.

Stage-1 features ``h in R^D`` are modelled as a linear Gaussian function of latents
``z in R^d`` (Chen, Horwood, Heo & Hernandez-Lobato, "Leveraging Task Structures for Improved
Identifiability in Neural Network Representations", TMLR 2024, Sec. 4):

.. math::

    h = A z + b + \\epsilon, \\qquad \\epsilon \\sim N(0, \\sigma^2 I),

and each task ``t`` has causal indicators ``c_t in {0, 1}^d``. Labels are standardised per
task. Spurious latents (``c_tj = 0``) are children of the label,
``z_j | y ~ N(gamma_tj y, sigma_s^2)``; causal latents (``c_tj = 1``) are parents of the label
with prior ``N(0, 1)``. Two conditionals of the causal block given ``y`` are available:

* ``condition_causal=False`` (the paper's model): ``z_C | y ~ N(0, I)``;
* ``condition_causal=True`` (exact for the graph ``z_C -> y -> z_S`` with a linear Gaussian
  label ``y = w^T z_C + e`` of unit variance): ``z_C | y ~ N(r_C y, I - r_C r_C^T)`` with
  ``r_t = c_t * rho_t``, ``||rho_t|| < 1`` (``r`` is the correlation of the causal latents with
  the label).

So ``p(h | y, t) = N(b + A mu_t y, A K_t A^T + sigma^2 I)`` with
``mu_t = c_t r_t + (1 - c_t) gamma_t`` and ``K_t = diag(c_t + (1 - c_t) sigma_s^2) - r_t r_t^T``,
a closed-form Gaussian marginal. Because ``K_t`` changes across tasks with their indicators,
``A`` is identified up to permutation and scaling of its columns, hence so are the latents
(:meth:`LinearCausalModel.latents`).

Indicators: the binary ``c_t`` are relaxed to ``sigmoid(logits)`` in ``[0, 1]`` (each latent's
variance then interpolates between 1 and ``sigma_s^2``: still a valid Gaussian model, so the
relaxed objective is a genuine marginal likelihood), optimised jointly with ``A``, ``b``,
``sigma``, ``gamma`` and ``rho`` by Adam, then rounded and the continuous parameters refined
with the indicators fixed. Enumeration / EM over the ``2^d`` patterns per task would be exact
but exponential in ``d``; the relaxation costs one batched ``[T, D, D]`` Cholesky per step.

The likelihood only needs per-task sufficient statistics (:func:`task_moments`), so its cost
does not grow with the number of rows.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from probrec.checks import (
    ArrayLike,
    all_finite,
    as_float_tensor,
    check_bool,
    check_choice,
    check_positive_int,
    check_real,
)
from probrec.progress import track
from probrec.seeding import torch_generator

__all__ = [
    "CausalFitRecord",
    "LinearCausalModel",
    "TaskMoments",
    "causal_log_marginal",
    "fit_causal_model",
    "latent_moments",
    "task_moments",
]


@dataclass
class TaskMoments:
    """Per-task sufficient statistics of ``(h, y)`` over the rows labelled for each task.

    Attributes:
        n: ``[T]`` labelled rows.
        h: ``[T, D]`` mean of ``h``.
        y: ``[T]`` mean of ``y``.
        hh: ``[T, D, D]`` mean of ``h h^T``.
        hy: ``[T, D]`` mean of ``h y``.
        yy: ``[T]`` mean of ``y^2``.
    """

    n: Tensor
    h: Tensor
    y: Tensor
    hh: Tensor
    hy: Tensor
    yy: Tensor


def _labels(h: ArrayLike, y: ArrayLike, dtype: torch.dtype | None) -> tuple[Tensor, Tensor]:
    ht = as_float_tensor(h, "h", ndim=2, dtype=dtype)
    yt = as_float_tensor(y, "y", dtype=ht.dtype, device=ht.device, allow_nonfinite=True)
    if yt.dim() == 1:
        yt = yt[:, None]
    if yt.dim() != 2 or yt.shape[0] != ht.shape[0]:
        raise ValueError(f"y must have shape [{ht.shape[0]}, T], got {tuple(yt.shape)}")
    if torch.isinf(yt).any():
        raise ValueError("y contains inf; use NaN for missing labels")
    return ht, yt


def task_moments(h: ArrayLike, y: ArrayLike, *, dtype: torch.dtype | None = None) -> TaskMoments:
    """Sufficient statistics of every task (rows with NaN labels are skipped per task).

    Args:
        h: ``[N, D]`` features.
        y: ``[N, T]`` labels with NaN where missing (or ``[N]`` for one task).
        dtype: compute dtype (default ``h``'s floating dtype).

    Returns:
        :class:`TaskMoments`.

    Raises:
        ValueError: shapes disagree or a task has fewer than 2 labels.
    """
    ht, yt = _labels(h, y, dtype)
    m = ~torch.isnan(yt)
    n = m.sum(0).to(ht.dtype)
    if bool((n < 2).any()):
        raise ValueError(f"tasks {torch.nonzero(n < 2).flatten().tolist()[:10]} have < 2 labels")
    w = m.to(ht.dtype) / n  # [N, T] weights of a per-task mean
    y0 = torch.where(m, yt, torch.zeros((), dtype=ht.dtype, device=ht.device))
    return TaskMoments(
        n=n,
        h=w.T @ ht,
        y=(w * y0).sum(0),
        hh=torch.einsum("it,id,ie->tde", w, ht, ht),
        hy=(w * y0).T @ ht,
        yy=(w * y0**2).sum(0),
    )


def latent_moments(
    causal: Tensor, gamma: Tensor, rho: Tensor | None, sigma_s: float
) -> tuple[Tensor, Tensor]:
    """Mean coefficient and covariance of ``z | y`` for every task.

    Args:
        causal: ``[..., T, d]`` indicators in ``[0, 1]`` (relaxed or binary).
        gamma: ``[..., T, d]`` spurious coefficients.
        rho: ``[..., T, d]`` label correlations of the causal latents (``||rho_t|| < 1``), or
            ``None`` for ``z_C | y ~ N(0, I)``.
        sigma_s: standard deviation of spurious latents given ``y``.

    Returns:
        ``(mu [..., T, d], K [..., T, d, d])``: ``E[z | y] = mu y``, ``Cov[z | y] = K``.
    """
    var = causal + (1.0 - causal) * sigma_s**2
    mu = (1.0 - causal) * gamma
    k = torch.diag_embed(var)
    if rho is not None:
        r = causal * rho
        mu = mu + r
        k = k - r[..., :, None] * r[..., None, :]
    return mu, k


def causal_log_marginal(
    moments: TaskMoments,
    mixing: Tensor,
    offset: Tensor,
    noise: Tensor,
    causal: Tensor,
    gamma: Tensor,
    rho: Tensor | None = None,
    *,
    sigma_s: float = 0.1,
) -> Tensor:
    """Per-task log marginal likelihood ``sum_i log N(h_i; b + A mu_t y_i, A K_t A^T + s^2 I)``.

    Computed from sufficient statistics: with ``e_i = h_i - b - a_t y_i`` (``a_t = A mu_t``),
    ``sum_i log N = -n_t / 2 (D log 2 pi + log|S_t| + tr(S_t^{-1} mean_i e_i e_i^T))``.
    Leading batch dimensions ``...`` (e.g. restarts) broadcast.

    Args:
        moments: :func:`task_moments` of the data.
        mixing: ``[..., D, d]`` matrix ``A``.
        offset: ``[..., D]`` offset ``b``.
        noise: ``[...]`` observation noise variance ``sigma^2 > 0``.
        causal, gamma, rho: ``[..., T, d]``; ``sigma_s``: see :func:`latent_moments`.

    Returns:
        ``[..., T]`` log-likelihoods (differentiable in every parameter).

    Raises:
        TypeError: a parameter is not a floating tensor of ``moments``' dtype.
        ValueError: naming the argument: shapes that disagree with ``moments`` (``[..., D, d]``,
            ``[..., D]``, ``[...]``, ``[..., T, d]``), non-finite values, ``noise <= 0``,
            ``causal`` outside ``[0, 1]``, ``sigma_s <= 0``, or ``rho`` making ``Cov[z | y]``
            indefinite (``||rho_t|| > 1`` for binary indicators); or the model covariance is
            not positive definite.
    """
    sigma_s = check_real(sigma_s, "sigma_s", strict=True)
    dim, n_tasks = moments.h.shape[1], moments.h.shape[0]
    dtype = moments.h.dtype
    if not isinstance(mixing, Tensor) or mixing.dim() < 2 or mixing.shape[-2] != dim:
        got = tuple(mixing.shape) if isinstance(mixing, Tensor) else type(mixing).__name__
        raise ValueError(f"mixing must have shape [..., {dim}, d], got {got}")
    d = mixing.shape[-1]
    lead = mixing.shape[:-2]
    if not isinstance(noise, Tensor):
        noise = torch.as_tensor(check_real(noise, "noise", strict=True), dtype=dtype)
        noise = noise.to(mixing.device).expand(lead)
    expected = {
        "mixing": (mixing, (*lead, dim, d)),
        "offset": (offset, (*lead, dim)),
        "noise": (noise, tuple(lead)),
        "causal": (causal, (*lead, n_tasks, d)),
        "gamma": (gamma, (*lead, n_tasks, d)),
    }
    if rho is not None:
        expected["rho"] = (rho, (*lead, n_tasks, d))
    for name, (value, shape) in expected.items():
        if not isinstance(value, Tensor) or value.dtype != dtype:
            got = value.dtype if isinstance(value, Tensor) else type(value).__name__
            raise TypeError(f"{name} must be a {dtype} tensor (the moments' dtype), got {got}")
        if tuple(value.shape) != shape:  # no silent broadcasting over tasks or latents
            raise ValueError(f"{name} must have shape {list(shape)}, got {list(value.shape)}")
        if not all_finite(value):
            raise ValueError(f"{name} contains non-finite values")
    if bool((noise <= 0).any()):
        raise ValueError("noise (the observation noise variance) must be > 0")
    if bool(((causal < 0) | (causal > 1)).any()):
        raise ValueError("causal indicators must lie in [0, 1]")
    if rho is not None:
        # Cov[z | y] = diag(v) - r r^T is PSD iff r^T diag(v)^{-1} r <= 1
        var = causal + (1.0 - causal) * sigma_s**2
        r = causal * rho
        if bool(((r**2 / var).sum(-1) > 1.0 + 1e-12).any()):
            raise ValueError(
                "rho makes Cov[z | y] indefinite for some task (need ||causal_t * rho_t|| <= 1)"
            )
    return _causal_log_marginal(moments, mixing, offset, noise, causal, gamma, rho, sigma_s)


def _causal_log_marginal(
    moments: TaskMoments,
    mixing: Tensor,
    offset: Tensor,
    noise: Tensor,
    causal: Tensor,
    gamma: Tensor,
    rho: Tensor | None,
    sigma_s: float,
) -> Tensor:
    """:func:`causal_log_marginal` without the argument checks (the fitting loop's path,
    whose parameters are valid by construction)."""
    mu, k = latent_moments(causal, gamma, rho, sigma_s)
    a = torch.einsum("...td,...ed->...te", mu, mixing)  # [..., T, D]
    dim = mixing.shape[-2]
    eye = torch.eye(dim, dtype=mixing.dtype, device=mixing.device)
    am = mixing[..., None, :, :]
    cov = am @ k @ am.transpose(-1, -2) + noise[..., None, None, None] * eye  # [..., T, D, D]
    m = moments
    b = offset[..., None, :]  # [..., 1, D]
    hyb = m.hy - b * m.y[:, None]  # mean of (h - b) y, [..., T, D]
    hhb = (
        m.hh
        - m.h[:, :, None] * b[..., None, :]
        - b[..., :, None] * m.h[:, None, :]
        + b[..., :, None] * b[..., None, :]
    )  # mean of (h - b)(h - b)^T, [..., T, D, D]
    resid = (
        hhb
        - a[..., :, None] * hyb[..., None, :]
        - hyb[..., :, None] * a[..., None, :]
        + m.yy[:, None, None] * a[..., :, None] * a[..., None, :]
    )
    chol, info = torch.linalg.cholesky_ex(cov)
    if bool((info > 0).any()):
        raise ValueError("the model covariance is not positive definite (noise too small?)")
    logdet = 2.0 * torch.diagonal(chol, dim1=-2, dim2=-1).log().sum(-1)
    sol = torch.cholesky_solve(resid, chol)
    trace = torch.diagonal(sol, dim1=-2, dim2=-1).sum(-1)
    return -0.5 * m.n * (dim * math.log(2.0 * math.pi) + logdet + trace)


class LinearCausalModel(nn.Module):
    """Parameters of the stage-2 model (see the module docstring).

    With ``batch`` > 0 every parameter has a leading dimension of that size: independent
    copies (restarts) optimised together; :meth:`select` extracts one.

    Args:
        obs_dim: ``D``, width of the stage-1 features.
        latent_dim: ``d``.
        n_tasks: ``T``.
        sigma_s: standard deviation of spurious latents given the label (0.1 in the paper).
        condition_causal: model ``z_C | y`` exactly (``True``) or as ``N(0, I)`` (``False``).
        min_noise: floor of the observation noise variance.
        batch: number of independent copies (0: unbatched).
    """

    def __init__(
        self,
        obs_dim: int,
        latent_dim: int,
        n_tasks: int,
        *,
        sigma_s: float = 0.1,
        condition_causal: bool = True,
        min_noise: float = 1e-6,
        batch: int = 0,
    ) -> None:
        super().__init__()
        d, dd, t = (
            check_positive_int(obs_dim, "obs_dim"),
            check_positive_int(latent_dim, "latent_dim"),
            check_positive_int(n_tasks, "n_tasks"),
        )
        if dd > d:
            raise ValueError(f"latent_dim must be <= obs_dim = {d}, got {dd}")
        self.sigma_s, self.condition_causal, self.min_noise = (
            check_real(sigma_s, "sigma_s", strict=True),
            check_bool(condition_causal, "condition_causal"),
            check_real(min_noise, "min_noise"),
        )
        lead = (check_positive_int(batch, "batch", minimum=0),) if batch else ()
        f64 = torch.float64
        self.mixing = nn.Parameter(torch.zeros(*lead, d, dd, dtype=f64))
        self.offset = nn.Parameter(torch.zeros(*lead, d, dtype=f64))
        self.log_noise = nn.Parameter(torch.full(lead, -2.0, dtype=f64))
        self.logits = nn.Parameter(torch.zeros(*lead, t, dd, dtype=f64))
        self.gamma = nn.Parameter(torch.zeros(*lead, t, dd, dtype=f64))
        self.rho_raw = nn.Parameter(torch.zeros(*lead, t, dd, dtype=f64))
        self.register_buffer("hard", torch.zeros((), dtype=torch.bool))
        self.register_buffer("y_mean", torch.zeros(t, dtype=f64))
        self.register_buffer("y_std", torch.ones(t, dtype=f64))

    @property
    def batch_shape(self) -> torch.Size:
        """``()`` or ``(batch,)``."""
        return self.log_noise.shape

    @property
    def noise(self) -> Tensor:
        """Observation noise variance ``sigma^2`` (``[...]``)."""
        return self.log_noise.exp() + self.min_noise

    def causal_probs(self) -> Tensor:
        """``[..., T, d]`` relaxed indicators ``sigmoid(logits)`` (rounded once hardened)."""
        p = torch.sigmoid(self.logits)
        return (p > 0.5).to(p.dtype) if bool(self.hard) else p

    def causal_indicators(self) -> Tensor:
        """``[..., T, d]`` bool: which latents are causal for each task."""
        return torch.sigmoid(self.logits.detach()) > 0.5

    def rho(self) -> Tensor | None:
        """``[..., T, d]`` label correlations of causal latents, norm < 1 per task (or ``None``)."""
        if not self.condition_causal:
            return None
        r = self.rho_raw
        return r / (1.0 + (r**2).sum(-1, keepdim=True)).sqrt()

    def log_marginal(self, moments: TaskMoments) -> Tensor:
        """``[..., T]`` log marginal likelihood of (standardised-label) moments."""
        return _causal_log_marginal(
            moments,
            self.mixing,
            self.offset,
            self.noise,
            self.causal_probs(),
            self.gamma,
            self.rho(),
            self.sigma_s,
        )

    def select(self, index: int) -> LinearCausalModel:
        """The unbatched copy ``index`` of a batched model."""
        if not self.batch_shape:
            raise ValueError("select needs a batched model")
        t, dd = self.logits.shape[-2:]
        out = LinearCausalModel(
            self.mixing.shape[-2],
            dd,
            t,
            sigma_s=self.sigma_s,
            condition_causal=self.condition_causal,
            min_noise=self.min_noise,
        ).to(self.mixing)
        with torch.no_grad():
            for name, p in self.named_parameters():
                getattr(out, name).copy_(p[index])
            for name, buf in self.named_buffers():
                getattr(out, name).copy_(buf)
        return out

    @torch.no_grad()
    def latents(self, h: ArrayLike, *, method: str = "posterior") -> Tensor:
        """Label-free latent estimates.

        ``"posterior"`` (default): the posterior mean under a ``N(0, I)`` prior on ``z``,
        ``(A^T A + sigma^2 I)^{-1} A^T (h - b)``, which shrinks directions that ``A`` barely
        uses (a stage-1 representation that lost a latent) instead of amplifying their noise.
        ``"pinv"``: the least-squares inverse ``A^+ (h - b)``.

        Args:
            h: ``[N, D]`` features.
            method: ``"posterior"`` or ``"pinv"``.

        Returns:
            ``[N, d]`` latents in the model's dtype (float64 unless fitted with another
            ``dtype``), identified up to permutation and scaling.
        """
        check_choice(method, "method", ("posterior", "pinv"))
        if self.batch_shape:
            raise ValueError("latents needs an unbatched model; use select(i) first")
        ht = as_float_tensor(h, "h", ndim=2, dtype=self.mixing.dtype, device=self.mixing.device)
        if ht.shape[1] != self.mixing.shape[0]:
            raise ValueError(f"h must have {self.mixing.shape[0]} columns, got {ht.shape[1]}")
        a = self.mixing
        if method == "pinv":
            return torch.linalg.lstsq(a, (ht - self.offset).T).solution.T
        eye = torch.eye(a.shape[1], dtype=a.dtype, device=a.device)
        gram = a.T @ a + self.noise * eye
        return torch.linalg.solve(gram, a.T @ (ht - self.offset).T).T


@dataclass
class CausalFitRecord:
    """Record of :func:`fit_causal_model`: final per-row log-likelihood of every restart and
    the per-row log-likelihood trace (summed over restarts) along the optimisation."""

    restart_objectives: list[float] = field(default_factory=list)
    trace: list[float] = field(default_factory=list)


def _standardise(moments: TaskMoments) -> tuple[TaskMoments, Tensor, Tensor]:
    """Moments of ``(h, (y - mean) / std)`` per task."""
    mean = moments.y
    std = (moments.yy - mean**2).clamp_min(1e-24).sqrt()
    hy = (moments.hy - moments.h * mean[:, None]) / std[:, None]
    return (
        TaskMoments(
            moments.n, moments.h, torch.zeros_like(mean), moments.hh, hy, torch.ones_like(mean)
        ),
        mean,
        std,
    )


def _initialise(model: LinearCausalModel, m: TaskMoments, gen: torch.Generator) -> None:
    """``A`` = top principal axes of the pooled features (scaled) times a random rotation per
    restart; indicators near 1/2, ``gamma = rho = 0``."""
    w = m.n / m.n.sum()
    mean = (w[:, None] * m.h).sum(0)
    cov = (w[:, None, None] * m.hh).sum(0) - torch.outer(mean, mean)
    evals, evecs = torch.linalg.eigh(cov)
    d = model.mixing.shape[-1]
    top = evecs[:, -d:] * evals[-d:].clamp_min(1e-12).sqrt()
    lead = tuple(model.batch_shape)
    g = torch.randn(*lead, d, d, generator=gen, dtype=cov.dtype).to(cov.device)
    q, _ = torch.linalg.qr(g)
    rest = evals[:-d].clamp_min(0).mean() if d < len(evals) else 1e-3 * evals.mean()
    floor = 1e-3 * evals.mean().abs() + 1e-12
    with torch.no_grad():
        model.mixing.copy_(top @ q)
        model.offset.copy_(mean.expand_as(model.offset))
        model.log_noise.fill_(float(torch.log(rest.clamp_min(floor))))
        noise = torch.randn(model.logits.shape, generator=gen, dtype=cov.dtype)
        model.logits.copy_(0.1 * noise.to(cov.device))
        model.gamma.zero_()
        model.rho_raw.zero_()
        model.hard.fill_(False)


def _optimise(
    model: LinearCausalModel, m: TaskMoments, steps: int, lr: float, progress, desc: str
) -> list[float]:
    """Adam with a cosine schedule on the mean per-row negative log-likelihood (summed over
    restarts, which are independent: Adam acts elementwise)."""
    params = [p for n, p in model.named_parameters() if not (bool(model.hard) and n == "logits")]
    opt = torch.optim.Adam(params, lr=lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, steps, eta_min=lr * 0.05)
    total = m.n.sum()
    trace = []
    for _ in track(range(steps), progress=progress, desc=desc, unit="step"):
        loss = -model.log_marginal(m).sum() / total
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        trace.append(-float(loss.detach()))
    return trace


def fit_causal_model(
    h: ArrayLike,
    y: ArrayLike,
    latent_dim: int | None = None,
    *,
    sigma_s: float = 0.1,
    condition_causal: bool = True,
    steps: int = 1500,
    refine_steps: int = 500,
    lr: float = 0.02,
    restarts: int = 4,
    seed: int = 0,
    dtype: torch.dtype = torch.float64,
    progress: bool | None = False,
) -> tuple[LinearCausalModel, CausalFitRecord]:
    """Fits :class:`LinearCausalModel` by maximum marginal likelihood.

    Labels are standardised per task first. Each restart starts from the principal axes of
    the pooled features times a random rotation; all restarts run together as one batched
    model: ``steps`` Adam steps on the relaxed objective, then the indicators are rounded and
    ``refine_steps`` more run with them fixed. The restart with the highest final
    log-likelihood is returned.

    Args:
        h: ``[N, D]`` stage-1 features.
        y: ``[N, T]`` labels, NaN where missing.
        latent_dim: ``d`` (default ``D``).
        sigma_s, condition_causal: model options (:class:`LinearCausalModel`).
        steps, refine_steps, lr, restarts: optimisation.
        seed: seed of the initialisations.
        dtype: compute dtype (float64 by default).
        progress: progress bars.

    Returns:
        ``(model, record)``; ``model.latents(h)`` gives the recovered latents.
    """
    check_positive_int(steps, "steps")
    check_positive_int(refine_steps, "refine_steps", minimum=0)
    check_positive_int(restarts, "restarts")
    check_real(lr, "lr", strict=True)
    check_bool(condition_causal, "condition_causal")
    if not isinstance(dtype, torch.dtype) or not dtype.is_floating_point:
        raise TypeError(f"dtype must be a floating torch.dtype, got {dtype!r}")
    m, y_mean, y_std = _standardise(task_moments(h, y, dtype=dtype))
    # compared on the labels themselves: E[y^2] - E[y]^2 leaves rounding residue (a task of
    # labels all 1.0 read a std of ~1e-8 and was fitted on noise)
    _, yt = _labels(h, y, dtype)
    seen = ~torch.isnan(yt)
    hi = torch.where(seen, yt, -math.inf).amax(0)
    lo = torch.where(seen, yt, math.inf).amin(0)
    if bool((hi - lo <= 1e-12 * (1.0 + hi.abs())).any()):
        raise ValueError("some task has constant labels; its label variance is zero")
    dim = m.h.shape[1]
    d = dim if latent_dim is None else check_positive_int(latent_dim, "latent_dim")
    model = LinearCausalModel(
        dim, d, m.n.shape[0], sigma_s=sigma_s, condition_causal=condition_causal, batch=restarts
    ).to(device=m.h.device, dtype=dtype)
    _initialise(model, m, torch_generator(seed))
    trace = _optimise(model, m, steps, lr, progress, "stage 2")
    with torch.no_grad():
        model.hard.fill_(True)
    if refine_steps:
        trace += _optimise(model, m, refine_steps, lr * 0.5, progress, "stage 2 refine")
    with torch.no_grad():
        objectives = model.log_marginal(m).sum(-1) / m.n.sum()
        best = model.select(int(torch.argmax(objectives)))
        best.y_mean.copy_(y_mean)
        best.y_std.copy_(y_std)
    return best, CausalFitRecord(objectives.tolist(), trace)
