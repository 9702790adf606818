"""Exact GP regression on a batch of tasks: marginal likelihood, priors, posterior.

Everything is batched over tasks ``T`` with padding masks, so one Cholesky call serves a
whole meta-batch. Hyperparameters of each task are a row of ``theta [T, p]`` in log space:

    [log lengthscale (if the kernel has one), log outputscale, log noise, (constant mean)]

Kernels enter through their *geometry*: pairwise squared distances for stationary kernels,
the Tanimoto similarity otherwise (:func:`geometry`). The geometry of a support set does not
depend on ``theta``, so the inner optimisation computes it once and never touches the
``d``-dimensional features again.

Padded points (``mask == False``) get a unit diagonal, zero cross-covariance and zero
residual, so they change neither the quadratic form nor the log-determinant; constants count
valid points only. This equals the exact GP on the valid points (tested).

References: Rasmussen & Williams, "Gaussian Processes for Machine Learning", 2006, Alg. 2.1;
priors as in Chen, Tripp & Hernandez-Lobato, "Meta-learning Adaptive Deep Kernel Gaussian
Processes for Molecular Property Prediction", ICLR 2023 (log-normal lengthscale prior with mode
at the median heuristic of the support features, scale 0.25; log-normal noise prior with mode
0.1 for classification and 0.01 for regression, scale 0.25).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from probrec.checks import check_choice, check_real
from probrec.gp.kernels import (
    KERNELS,
    has_lengthscale,
    matern52_from_sqdist,
    matern_a,
    rbf_from_sqdist,
    squared_distance,
    tanimoto,
)
from probrec.gp.linalg import gaussian_nll, robust_cholesky

LOG_2PI = math.log(2.0 * math.pi)


@dataclass(frozen=True)
class GPConfig:
    """Configuration of a GP head.

    Attributes:
        kernel: ``"matern52"`` (default), ``"rbf"`` or ``"tanimoto"``.
        mean: ``"zero"`` or ``"constant"`` (a per-task constant, fitted with the others).
        kind: ``"classification"`` (GP regression on +-1 labels) or ``"regression"``.
        lengthscale_prior: use the log-normal prior with mode at the median heuristic.
        noise_prior: use the log-normal noise prior.
        prior_scale: scale of both log-normal priors.
        noise_mode: mode of the noise prior (default 0.1 classification, 0.01 regression).
        min_noise: constant added to the noise variance (a floor).
    """

    kernel: str = "matern52"
    mean: str = "zero"
    kind: str = "classification"
    lengthscale_prior: bool = True
    noise_prior: bool = True
    prior_scale: float = 0.25
    noise_mode: float | None = None
    min_noise: float = 1e-5

    def __post_init__(self) -> None:
        check_choice(self.kernel, "kernel", KERNELS)
        check_choice(self.mean, "mean", ("zero", "constant"))
        check_choice(self.kind, "kind", ("classification", "regression"))
        check_real(self.prior_scale, "prior_scale", strict=True)
        for name in ("lengthscale_prior", "noise_prior"):
            if not isinstance(getattr(self, name), bool):
                raise TypeError(f"{name} must be a bool, got {getattr(self, name)!r}")
        if self.noise_mode is not None:
            check_real(self.noise_mode, "noise_mode", strict=True)
        check_real(self.min_noise, "min_noise")

    @property
    def names(self) -> tuple[str, ...]:
        """Names of the columns of ``theta``."""
        names = ("log_lengthscale",) if has_lengthscale(self.kernel) else ()
        names += ("log_outputscale", "log_noise")
        return names + (("mean",) if self.mean == "constant" else ())

    @property
    def n_params(self) -> int:
        return len(self.names)

    @property
    def noise_prior_mode(self) -> float:
        if self.noise_mode is not None:
            return float(self.noise_mode)
        return 0.1 if self.kind == "classification" else 0.01


@dataclass
class Hyper:
    """Named views of ``theta [T, p]`` (each ``[T]``; ``lengthscale`` ``None`` for Tanimoto)."""

    lengthscale: torch.Tensor | None
    outputscale: torch.Tensor
    noise: torch.Tensor
    mean: torch.Tensor


def unpack(theta: torch.Tensor, config: GPConfig) -> Hyper:
    """Splits ``theta [T, p]`` into positive hyperparameters according to ``config``."""
    if theta.dim() != 2 or theta.shape[-1] != config.n_params:
        raise ValueError(
            f"theta must have shape [T, {config.n_params}] ({', '.join(config.names)}), "
            f"got {tuple(theta.shape)}"
        )
    i = 0
    ls = None
    if has_lengthscale(config.kernel):
        ls, i = theta[:, 0].exp(), 1
    out = theta[:, i].exp()
    noise = theta[:, i + 1].exp() + config.min_noise
    mean = theta[:, i + 2] if config.mean == "constant" else torch.zeros_like(out)
    return Hyper(ls, out, noise, mean)


# ---------------------------------------------------------------------------- geometry
def geometry(config: GPConfig, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """What the kernel needs of two point sets, ``[T, n, m]``.

    Squared Euclidean distances for ``matern52`` / ``rbf``; the Tanimoto similarity for
    ``tanimoto``.

    Raises:
        ValueError: ``x1`` and ``x2`` differ in dtype or device.
    """
    if x1.dtype != x2.dtype or x1.device != x2.device:
        raise ValueError(
            f"the two point sets must share a dtype and device, got {x1.dtype} on {x1.device} "
            f"and {x2.dtype} on {x2.device}"
        )
    if config.kernel == "tanimoto":
        return tanimoto(x1, x2)
    return squared_distance(x1, x2)


def correlation_from_geometry(
    config: GPConfig, geom: torch.Tensor, lengthscale: torch.Tensor | None
) -> torch.Tensor:
    """Kernel correlation from :func:`geometry`; ``lengthscale`` is ``[T]``.

    Matern-5/2: ``(1 + a + a^2 / 3) exp(-a)``, ``a = sqrt(5) r / l``; its derivative at
    ``r = 0`` is taken as the limit 0 (no NaN on the diagonal). RBF: ``exp(-r^2 / 2 l^2)``.
    """
    if config.kernel == "tanimoto":
        return geom
    ls = lengthscale[:, None, None]
    if config.kernel == "rbf":
        return rbf_from_sqdist(geom, ls)
    return matern52_from_sqdist(geom, ls)


def kernel_from_geometry(theta: torch.Tensor, config: GPConfig, geom: torch.Tensor) -> torch.Tensor:
    """``outputscale * correlation``, ``[T, n, m]``."""
    h = unpack(theta, config)
    return h.outputscale[:, None, None] * correlation_from_geometry(config, geom, h.lengthscale)


def kernel_matrix(
    theta: torch.Tensor, config: GPConfig, x1: torch.Tensor, x2: torch.Tensor
) -> torch.Tensor:
    """``outputscale * correlation(x1, x2)``, ``[T, n, m]``, from features ``[T, n, d]``."""
    return kernel_from_geometry(theta, config, geometry(config, x1, x2))


# ---------------------------------------------------------------------------- priors
def median_lengthscale(
    z: torch.Tensor | None, mask: torch.Tensor | None = None, *, sq: torch.Tensor | None = None
) -> torch.Tensor:
    """Median heuristic per task ``sqrt(median_{i<j} ||z_i - z_j||^2 / 2)``, shape ``[T]``.

    Pairs with a padded point and coincident pairs are excluded, as in ADKF-IFT (a task
    without any other pair gets 1). ``sq``: precomputed ``[T, n, n]`` squared distances of
    ``z`` (saves recomputing them). Coincident pairs are recognised by comparing the rows of
    ``z``: the inner-product expansion of :func:`~probrec.gp.kernels.squared_distance` leaves
    a rounding residue (``~1e-4`` in float32) for two identical rows. Given ``sq`` alone
    (``z=None``), only pairs whose squared distance is exactly 0 are excluded.
    """
    if sq is None and z is None:
        raise ValueError("median_lengthscale needs the features z or their squared distances sq")
    with torch.no_grad():
        sq = squared_distance(z, z) if sq is None else sq.detach()
        n = sq.shape[-1]
        valid = torch.triu(torch.ones(n, n, dtype=torch.bool, device=sq.device), diagonal=1)
        valid = valid & (sq > 0)
        if mask is not None:
            valid = valid & mask[:, :, None] & mask[:, None, :]
        if z is not None:
            valid = valid & ~_coincident_pairs(z.detach(), sq, valid)
        vals = torch.where(valid, sq, torch.full_like(sq, float("nan"))).flatten(1)
        med = torch.nanmedian(vals, dim=1).values
        med = torch.where(torch.isfinite(med), med, torch.full_like(med, 2.0))
        return torch.sqrt(0.5 * med).clamp_min(1e-6)


def _coincident_pairs(z: torch.Tensor, sq: torch.Tensor, pairs: torch.Tensor) -> torch.Tensor:
    """Which of ``pairs [T, n, n]`` (bool) join two identical rows of ``z [T, n, d]``.

    Only pairs whose squared distance ``sq`` is within a bound on the rounding error of the
    inner-product expansion, ``16 (d + 2) eps (|z_i|^2 + |a_i|^2 + |z_j|^2 + |a_j|^2)`` with
    ``a`` the centred rows, are compared (element by element), so the check costs
    ``O(n^2 + k d)`` for ``k`` close pairs; every other pair is reported as distinct.
    """
    eps = max(torch.finfo(sq.dtype).eps, torch.finfo(z.dtype).eps)
    norms = z.pow(2).sum(-1) + (z - z.mean(dim=-2, keepdim=True)).pow(2).sum(-1)  # [T, n]
    bound = 16.0 * (z.shape[-1] + 2) * eps * (norms[:, :, None] + norms[:, None, :])
    t, i, j = torch.nonzero(pairs & (sq <= bound.to(sq.dtype)), as_tuple=True)
    same = torch.zeros_like(pairs)
    same[t, i, j] = (z[t, i] == z[t, j]).all(-1)
    return same


@dataclass
class PriorCentres:
    """Fixed per-task prior modes (computed from detached support features).

    Attributes:
        lengthscale_mode: ``[T]`` mode of the lengthscale prior, or ``None`` (no prior).
    """

    lengthscale_mode: torch.Tensor | None


def prior_centres(
    config: GPConfig,
    z: torch.Tensor,
    mask: torch.Tensor | None = None,
    *,
    geom: torch.Tensor | None = None,
) -> PriorCentres:
    """Per-task prior modes: the lengthscale prior's mode is the median heuristic of ``z``.

    As in the reference implementation the centre is computed from detached features and
    held fixed while the hyperparameters are fitted and differentiated. ``geom``: the support
    geometry of ``z`` (squared distances) if already computed.
    """
    if config.lengthscale_prior and has_lengthscale(config.kernel):
        return PriorCentres(median_lengthscale(z.detach(), mask, sq=geom))
    return PriorCentres(None)


def _lognormal_logpdf(x: torch.Tensor, mode: torch.Tensor | float, scale: float) -> torch.Tensor:
    loc = torch.as_tensor(mode, dtype=x.dtype, device=x.device).log() + scale**2
    lx = x.log()
    return -lx - math.log(scale) - 0.5 * LOG_2PI - 0.5 * ((lx - loc) / scale) ** 2


def log_prior(theta: torch.Tensor, config: GPConfig, centres: PriorCentres) -> torch.Tensor:
    """Sum of the log-normal log-densities of lengthscale and noise, ``[T]``.

    A log-normal with mode ``m`` and scale ``s`` has location ``log m + s^2``. Densities are
    over the positive hyperparameters (no Jacobian term), as gpytorch applies its priors.
    """
    s = config.prior_scale
    h = unpack(theta, config)
    out = torch.zeros_like(h.outputscale)
    if centres.lengthscale_mode is not None and h.lengthscale is not None:
        out = out + _lognormal_logpdf(h.lengthscale, centres.lengthscale_mode.to(theta.dtype), s)
    if config.noise_prior:
        out = out + _lognormal_logpdf(h.noise, config.noise_prior_mode, s)
    return out


def initial_theta(
    config: GPConfig,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
    centres: PriorCentres | None = None,
    *,
    geom: torch.Tensor | None = None,
) -> torch.Tensor:
    """Starting point of the inner optimisation, ``[T, p]``.

    Lengthscale at the median heuristic (the prior mode; from the support's squared
    distances ``geom [T, n, n]`` when there is no lengthscale prior), outputscale 1 (labels
    are +-1 or standardised), noise at the prior mode, constant mean at the label mean.

    Raises:
        ValueError: the kernel has a lengthscale and neither a prior mode nor ``geom`` is given.
    """
    t = y.shape[0]
    cols = []
    if has_lengthscale(config.kernel):
        if centres is not None and centres.lengthscale_mode is not None:
            ls0 = centres.lengthscale_mode
        elif geom is not None:  # no lengthscale prior: the same start, without the prior
            ls0 = median_lengthscale(None, mask, sq=geom)
        else:
            raise ValueError(
                "initial_theta needs prior centres or the support geometry (median heuristic) "
                "for this kernel"
            )
        cols.append(ls0.to(y.dtype).log())
    cols.append(torch.zeros(t, dtype=y.dtype, device=y.device))
    noise0 = max(config.noise_prior_mode - config.min_noise, 1e-8)
    cols.append(torch.full((t,), math.log(noise0), dtype=y.dtype, device=y.device))
    if config.mean == "constant":
        m = mask.to(y.dtype) if mask is not None else torch.ones_like(y)
        cols.append(_zero_padded(y, mask).sum(-1) / m.sum(-1))
    return torch.stack(cols, dim=-1)


# ---------------------------------------------------------------------------- likelihood
def _check_batch(
    theta: torch.Tensor, geom: torch.Tensor, y: torch.Tensor, mask: torch.Tensor | None
) -> None:
    """Shapes of one batch of tasks (Python shape tests only: no device synchronisation)."""
    if geom.dim() != 3 or geom.shape[-1] != geom.shape[-2]:
        raise ValueError(f"support geometry must have shape [T, n, n], got {tuple(geom.shape)}")
    if theta.dim() == 2 and theta.shape[0] != geom.shape[0]:  # [1, p] broadcast silently
        raise ValueError(
            f"theta must have one row per task ({geom.shape[0]}), got {tuple(theta.shape)}; "
            "expand a shared theta with theta.expand(T, -1)"
        )
    if y.shape != geom.shape[:2]:
        raise ValueError(f"labels must have shape {tuple(geom.shape[:2])}, got {tuple(y.shape)}")
    if mask is not None and mask.shape != y.shape:
        raise ValueError(f"mask must have shape {tuple(y.shape)}, got {tuple(mask.shape)}")


def train_covariance(
    theta: torch.Tensor, config: GPConfig, geom: torch.Tensor, mask: torch.Tensor | None
) -> torch.Tensor:
    """``K + noise I`` on the support set, with padded rows/columns replaced by the identity."""
    h = unpack(theta, config)
    k = kernel_from_geometry(theta, config, geom)
    eye = torch.eye(k.shape[-1], dtype=k.dtype, device=k.device)
    if mask is None:
        return k + h.noise[:, None, None] * eye
    m = mask.to(k.dtype)
    return (
        k * (m[:, :, None] * m[:, None, :]) + eye * (h.noise[:, None] * m + (1.0 - m))[:, :, None]
    )


def _zero_padded(r: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """``r`` with the entries at padded points (``mask == False``) set to 0.

    Selected rather than multiplied by the mask, so a NaN / inf at a padded point (a missing
    label) changes nothing instead of turning the result into NaN.
    """
    return r if mask is None else torch.where(mask.bool(), r, r.new_zeros(()))


def _n_valid(y: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    if mask is None:
        return torch.full(y.shape[:1], y.shape[-1], dtype=y.dtype, device=y.device)
    return mask.sum(-1).to(y.dtype)


def neg_log_marginal_likelihood(
    theta: torch.Tensor,
    config: GPConfig,
    geom: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Negative log marginal likelihood ``-log N(y | m, K + noise I)`` per task, ``[T]``.

    Args:
        theta: ``[T, p]`` log hyperparameters.
        config: GP configuration.
        geom: ``[T, n, n]`` support geometry (:func:`geometry`).
        y: ``[T, n]`` targets (+-1 for classification, standardised for regression).
        mask: ``[T, n]`` bool, ``True`` for real points (``None``: all real).
    """
    _check_batch(theta, geom, y, mask)
    h = unpack(theta, config)
    chol = robust_cholesky(train_covariance(theta, config, geom, mask))
    r = _zero_padded(y - h.mean[:, None], mask)
    rr = r.to(chol.dtype)
    w = torch.linalg.solve_triangular(chol, rr[..., None], upper=False)[..., 0]
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    return (0.5 * w.pow(2).sum(-1) + 0.5 * logdet).to(r.dtype) + 0.5 * _n_valid(y, mask) * LOG_2PI


def inner_objective(
    theta: torch.Tensor,
    config: GPConfig,
    geom: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    centres: PriorCentres,
) -> torch.Tensor:
    """Per-task MAP objective ``(NLML - log prior) / n``, ``[T]`` (gpytorch's normalisation)."""
    nlml = neg_log_marginal_likelihood(theta, config, geom, y, mask)
    return (nlml - log_prior(theta, config, centres)) / _n_valid(y, mask)


def _correlation_and_derivatives(
    config: GPConfig, geom: torch.Tensor, lengthscale: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor | None, torch.Tensor | None]:
    """Correlation ``C`` and its first and second derivatives in ``log lengthscale``.

    Matern-5/2 with ``a = sqrt(5) r / l``: ``dC = a^2 (1 + a) e^-a / 3`` and
    ``d2C = -a^2 (2 + 2a - a^2) e^-a / 3``; RBF with ``u = r^2 / 2 l^2``: ``dC = 2 u C`` and
    ``d2C = (4 u^2 - 4 u) C``. Tanimoto has no lengthscale (``None``).
    """
    if config.kernel == "tanimoto":
        return geom, None, None
    ls = lengthscale[:, None, None]
    if config.kernel == "rbf":
        u = 0.5 * geom / ls.pow(2)
        c = torch.exp(-u)
        return c, 2.0 * u * c, (4.0 * u.pow(2) - 4.0 * u) * c
    a = matern_a(geom, ls)  # zero derivative at r = 0 (no inf x 0 on the diagonal)
    e = torch.exp(-a)
    a2 = a.pow(2)
    return (1.0 + a + a2 / 3.0) * e, a2 * (1.0 + a) * e / 3.0, -a2 * (2.0 + 2.0 * a - a2) * e / 3.0


def inner_objective_derivatives(
    theta: torch.Tensor,
    config: GPConfig,
    geom: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    centres: PriorCentres,
    *,
    hessian: bool = True,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
    """Value ``[T]``, gradient ``[T, p]`` and Hessian ``[T, p, p]`` of :func:`inner_objective`.

    Closed forms (Rasmussen & Williams, 2006, eq. 5.9, and its derivative): with
    ``A = K^-1``, ``alpha = A r`` and ``D_i = dK / dtheta_i``,

        dL/di     = tr(A D_i) / 2 - alpha^T D_i alpha / 2
        d2L/di dj = tr(A D_ij) / 2 - tr(A D_i A D_j) / 2 + alpha^T D_i A D_j alpha
                    - alpha^T D_ij alpha / 2,

    for the NLML in log hyperparameters, plus the log-normal prior terms and, for a constant
    mean, ``dL/dm = -1^T alpha``, ``d2L/dm2 = 1^T A 1``, ``d2L/dm di = (A 1)^T D_i alpha``.
    One Cholesky and ``p`` batched matrix products per call; no autograd. Equal to autograd
    derivatives of :func:`inner_objective` (tested). With ``hessian=False`` the Hessian is
    skipped (``None``) and the traces are elementwise sums; the result is then a cheap,
    differentiable function of ``geom`` (see :func:`inner_objective_grad`).
    """
    _check_batch(theta, geom, y, mask)
    h = unpack(theta, config)
    t, n = y.shape
    m = mask.to(theta.dtype) if mask is not None else torch.ones_like(y)
    c, dc, d2c = _correlation_and_derivatives(config, geom, h.lengthscale)
    s = h.outputscale[:, None, None]
    if mask is not None:  # padded rows and columns drop out of every kernel matrix
        mm = m[:, :, None] * m[:, None, :]
        c = c * mm
        dc = None if dc is None else dc * mm
        d2c = None if d2c is None else d2c * mm
    eye = torch.eye(n, dtype=theta.dtype, device=theta.device)
    cov = s * c + eye * (h.noise[:, None] * m + (1.0 - m))[:, :, None]
    chol = robust_cholesky(cov)
    dt = chol.dtype
    a_inv = torch.cholesky_inverse(chol)
    r = _zero_padded(y - h.mean[:, None], mask).to(dt)
    alpha = (a_inv @ r[..., None])[..., 0]
    n_valid = m.sum(-1)

    # first-derivative matrices D_i (dense, or a diagonal for the noise)
    dense: list[torch.Tensor | None] = []
    if h.lengthscale is not None:
        dense.append((s * dc).to(dt))
    dense.append((s * c).to(dt))
    noise_diag = ((h.noise - config.min_noise)[:, None] * m).to(dt)  # d noise / d log noise
    dense.append(None)
    p_k = len(dense)  # kernel/noise parameters
    bs = [noise_diag * alpha if d is None else (d @ alpha[..., None])[..., 0] for d in dense]
    if hessian:
        mats = [a_inv * noise_diag[:, None, :] if d is None else a_inv @ d for d in dense]  # A D_i
        cs = [(a_inv @ b[..., None])[..., 0] for b in bs]
        traces = [mt.diagonal(dim1=-2, dim2=-1).sum(-1) for mt in mats]
    else:  # tr(A D_i) as an elementwise sum (A and D_i symmetric): no matrix products
        traces = [
            (a_inv.diagonal(dim1=-2, dim2=-1) * noise_diag).sum(-1)
            if d is None
            else (a_inv * d).sum((-1, -2))
            for d in dense
        ]
    logdet = 2.0 * chol.diagonal(dim1=-2, dim2=-1).log().sum(-1)
    nlml = 0.5 * (r * alpha).sum(-1) + 0.5 * logdet + 0.5 * n_valid.to(dt) * LOG_2PI

    p = config.n_params
    g = torch.zeros(t, p, dtype=dt, device=theta.device)
    hess = torch.zeros(t, p, p, dtype=dt, device=theta.device) if hessian else None
    for i in range(p_k):
        g[:, i] = 0.5 * traces[i] - 0.5 * (alpha * bs[i]).sum(-1)
        for j in range(i, p_k) if hessian else ():
            val = -0.5 * (mats[i] * mats[j].transpose(-1, -2)).sum((-1, -2)) + (bs[i] * cs[j]).sum(
                -1
            )
            if i == j or (h.lengthscale is not None and i == 0 and j == 1):
                # second-derivative matrices: D_ll, D_ls = D_l, D_ss = D_s, D_nn = D_n
                if h.lengthscale is not None and i == 0 and j == 0:
                    d2 = (s * d2c).to(dt)
                    tr2 = (a_inv * d2).sum((-1, -2))
                    quad2 = (alpha * (d2 @ alpha[..., None])[..., 0]).sum(-1)
                else:  # D_ls = D_l for (i, j) = (l, s); D_ii = D_i otherwise
                    src = i
                    tr2 = mats[src].diagonal(dim1=-2, dim2=-1).sum(-1)
                    quad2 = (alpha * bs[src]).sum(-1)
                val = val + 0.5 * tr2 - 0.5 * quad2
            hess[:, i, j] = val
            hess[:, j, i] = val
    if config.mean == "constant":
        k = p - 1
        g[:, k] = -(m.to(dt) * alpha).sum(-1)
        a1 = (a_inv @ m.to(dt)[..., None])[..., 0]
        if hess is not None:
            hess[:, k, k] = (m.to(dt) * a1).sum(-1)
        for i in range(p_k) if hess is not None else ():
            v = (a1 * bs[i]).sum(-1)
            hess[:, k, i] = v
            hess[:, i, k] = v

    # log-normal priors, in log space: -log p(x) = x + ((x - loc) / s)^2 / 2 + const, x = log v
    sc = config.prior_scale
    value = nlml - log_prior(theta, config, centres).to(dt)
    if centres.lengthscale_mode is not None and h.lengthscale is not None:
        loc = centres.lengthscale_mode.to(dt).log() + sc**2
        g[:, 0] += 1.0 + (theta[:, 0].to(dt) - loc) / sc**2
        if hess is not None:
            hess[:, 0, 0] += 1.0 / sc**2
    if config.noise_prior:
        kn = p_k - 1
        x = h.noise.to(dt).log()
        rho = (h.noise - config.min_noise).to(dt) / h.noise.to(dt)
        q = 1.0 + (x - (math.log(config.noise_prior_mode) + sc**2)) / sc**2
        g[:, kn] += q * rho
        if hess is not None:
            hess[:, kn, kn] += rho.pow(2) / sc**2 + q * rho * (1.0 - rho)
    nv = n_valid.to(dt)
    return (
        (value / nv).to(theta.dtype),
        (g / nv[:, None]).to(theta.dtype),
        None if hess is None else (hess / nv[:, None, None]).to(theta.dtype),
    )


def inner_objective_grad(
    theta: torch.Tensor,
    config: GPConfig,
    geom: torch.Tensor,
    y: torch.Tensor,
    mask: torch.Tensor | None,
    centres: PriorCentres,
) -> torch.Tensor:
    """Closed-form gradient ``[T, p]`` of :func:`inner_objective` in ``theta``.

    Built from differentiable operations, so its derivative with respect to ``geom`` (and so
    the support features) is one backward pass: the mixed second derivative
    ``d2 L_in / dphi dtheta`` that the implicit hypergradient needs, without the double
    backward through a Cholesky factorisation that autograd of :func:`inner_objective` takes.
    """
    return inner_objective_derivatives(theta, config, geom, y, mask, centres, hessian=False)[1]


# ---------------------------------------------------------------------------- posterior
@dataclass
class Posterior:
    """GP posterior at query points.

    Attributes:
        mean: ``[T, m]`` posterior mean of the latent function.
        var: ``[T, m]`` posterior variance of the latent function.
        noise: ``[T]`` observation noise variance (add to ``var`` for the predictive).
        cov: ``[T, m, m]`` latent posterior covariance (only when asked for).
    """

    mean: torch.Tensor
    var: torch.Tensor
    noise: torch.Tensor
    cov: torch.Tensor | None = None


def posterior_from_geometry(
    theta: torch.Tensor,
    config: GPConfig,
    geom_ss: torch.Tensor,
    geom_sq: torch.Tensor,
    y_s: torch.Tensor,
    mask_s: torch.Tensor | None = None,
    geom_qq: torch.Tensor | None = None,
) -> Posterior:
    """Posterior of the latent function at the query points.

    ``mean = m + K_qs (K_ss + noise I)^-1 (y - m)``,
    ``cov = K_qq - K_qs (K_ss + noise I)^-1 K_sq`` (full when ``geom_qq`` is given).

    Args:
        geom_ss: ``[T, n, n]`` support geometry; geom_sq: ``[T, n, m]`` support-query;
        geom_qq: ``[T, m, m]`` query-query (for the full covariance) or ``None``.
    """
    _check_batch(theta, geom_ss, y_s, mask_s)
    h = unpack(theta, config)
    chol = robust_cholesky(train_covariance(theta, config, geom_ss, mask_s))
    dt = chol.dtype
    k_sq = kernel_from_geometry(theta, config, geom_sq)
    r = y_s - h.mean[:, None]
    if mask_s is not None:
        m = mask_s.to(k_sq.dtype)
        k_sq = k_sq * m[:, :, None]
        r = _zero_padded(r, mask_s)
    v = torch.linalg.solve_triangular(chol, k_sq.to(dt), upper=False)  # [T, n, m]
    w = torch.linalg.solve_triangular(chol, r.to(dt)[..., None], upper=False)  # [T, n, 1]
    out_dtype = geom_sq.dtype
    mean = h.mean[:, None] + (v.transpose(-1, -2) @ w)[..., 0].to(out_dtype)
    var = (h.outputscale[:, None].to(dt) - v.pow(2).sum(-2)).clamp_min(1e-10).to(out_dtype)
    cov = None
    if geom_qq is not None:
        k_qq = kernel_from_geometry(theta, config, geom_qq)
        cov = (k_qq.to(dt) - v.transpose(-1, -2) @ v).to(out_dtype)
    return Posterior(mean, var, h.noise, cov)


def posterior(
    theta: torch.Tensor,
    config: GPConfig,
    z_s: torch.Tensor,
    y_s: torch.Tensor,
    z_q: torch.Tensor,
    mask_s: torch.Tensor | None = None,
    *,
    full_cov: bool = False,
) -> Posterior:
    """:func:`posterior_from_geometry` from features ``z_s [T, n, d]`` and ``z_q [T, m, d]``."""
    if (
        z_s.dim() != 3
        or z_q.dim() != 3
        or z_q.shape[0] != z_s.shape[0]
        or z_q.shape[-1] != z_s.shape[-1]
    ):
        raise ValueError(
            f"support and query features must be [T, n, d] and [T, m, d] with the same T and d, "
            f"got {tuple(z_s.shape)} and {tuple(z_q.shape)}"
        )
    g_qq = geometry(config, z_q, z_q) if full_cov else None
    return posterior_from_geometry(
        theta, config, geometry(config, z_s, z_s), geometry(config, z_s, z_q), y_s, mask_s, g_qq
    )


def predictive_nll(
    post: Posterior,
    y_q: torch.Tensor,
    mask_q: torch.Tensor | None = None,
    *,
    joint: bool = True,
) -> torch.Tensor:
    """Negative log predictive density of the query labels per task, ``[T]`` (summed).

    Args:
        post: posterior at the query points (with ``cov`` when ``joint``).
        y_q: ``[T, m]`` query targets.
        mask_q: ``[T, m]`` bool mask of real query points.
        joint: the joint Gaussian ``N(y | mean, cov + noise I)`` (ADKF-IFT's outer loss)
            instead of the sum of marginal log densities.

    Raises:
        ValueError: ``y_q`` or ``mask_q`` is not of the posterior mean's shape ``[T, m]`` (a
            ``[m]`` vector would broadcast over the tasks).
    """
    for name, t in (("y_q", y_q), ("mask_q", mask_q)):
        if t is not None and tuple(t.shape) != tuple(post.mean.shape):
            raise ValueError(
                f"{name} must have the posterior's shape {tuple(post.mean.shape)}, got "
                f"{tuple(t.shape)}"
            )
    r = _zero_padded(y_q - post.mean, mask_q)
    m = mask_q.to(r.dtype) if mask_q is not None else torch.ones_like(r)
    if not joint:
        var = post.var + post.noise[:, None]
        return (0.5 * (r.pow(2) / var + var.log() + LOG_2PI) * m).sum(-1)
    if post.cov is None:
        raise ValueError("the joint predictive NLL needs a posterior computed with full_cov=True")
    if mask_q is None or bool(mask_q.all()):
        cov = post.cov.clone()
        cov.diagonal(dim1=-2, dim2=-1).add_(post.noise[:, None])
    else:
        eye = torch.eye(post.cov.shape[-1], dtype=post.cov.dtype, device=post.cov.device)
        pad = (post.noise[:, None] * m + (1 - m))[:, :, None]
        cov = post.cov * (m[:, :, None] * m[:, None, :]) + eye * pad
    return gaussian_nll(cov, r).to(r.dtype) + 0.5 * m.sum(-1) * LOG_2PI
