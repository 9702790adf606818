"""Sample-quality metrics for multimodal targets.

- :func:`mmd`: squared maximum mean discrepancy, the biased V-statistic with a sum of RBF
  kernels (bandwidths 1, 2, 5, 10, 20 by default, as in the DiGS paper's MoG-40 benchmark),
  computed in blocks so that 10,000 x 10,000 comparisons fit in a few hundred MB.
- :func:`mode_weights`, :func:`mode_coverage`, :func:`mode_weight_tv` for Gaussian mixtures.
- :func:`relative_error` of ``E ||x||^2`` (or any statistic) against a true value.
- :func:`histogram_distance`: W1 / W2 / total variation between 200-bin histograms of 1-D
  statistics (energies, interatomic distances) of samples and reference samples
  (:func:`energy_distance`, :func:`interatomic_distance_distance`).
- :func:`ess`, :func:`ess_tail`, :func:`rhat`, :func:`split_rhat` (re-exported from
  :mod:`samplers.diagnostics`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import torch
from scipy.stats import chi2
from torch import Tensor

from probrec.checks import check_choice, check_positive_int, check_real

from .diagnostics import ess, ess_tail, rhat, split_rhat
from .targets.base import Target
from .targets.mixture import GaussianMixture
from .targets.particles import ParticleSystem

__all__ = [
    "mmd",
    "mode_weights",
    "mode_coverage",
    "mode_weight_tv",
    "mode_statistics",
    "relative_error",
    "expected_squared_norm",
    "histogram_distance",
    "wasserstein_1d",
    "energy_distance",
    "interatomic_distance_distance",
    "ess",
    "ess_tail",
    "rhat",
    "split_rhat",
]

DEFAULT_BANDWIDTHS = (1.0, 2.0, 5.0, 10.0, 20.0)


def _as_2d(x: Tensor | np.ndarray, name: str) -> Tensor:
    t = torch.as_tensor(x)
    if t.dim() == 1:
        t = t[:, None]
    if t.dim() != 2 or t.shape[0] == 0:
        raise ValueError(f"{name} must be a non-empty (n, d) array, got shape {tuple(t.shape)}")
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values")
    return t.to(torch.float64)


def _kernel_block_sum(a: np.ndarray, b: np.ndarray, gammas: Sequence[float]) -> float:
    """``sum_ij sum_h exp(-gamma_h ||a_i - b_j||^2)`` for one block.

    Squared distances are computed in float64 (no cancellation trouble for far-apart points);
    the exponentials in float32 (relative error ~1e-7 per term, far below the Monte Carlo error
    of any MMD estimate) and summed in float64.
    """
    d2 = (a * a).sum(-1)[:, None] + (b * b).sum(-1)[None, :] - 2.0 * (a @ b.T)
    np.maximum(d2, 0.0, out=d2)
    total = 0.0
    buf = np.empty(d2.shape, dtype=np.float32)
    for g in gammas:
        np.multiply(d2, -g, out=buf, casting="same_kind")
        np.exp(buf, out=buf)
        total += float(buf.sum(dtype=np.float64))
    return total


def _mean_kernel(
    a: np.ndarray, b: np.ndarray, gammas: Sequence[float], block: int, symmetric: bool
) -> float:
    total = 0.0
    for i in range(0, a.shape[0], block):
        ai = a[i : i + block]
        if symmetric:
            # blocks on and above the diagonal; off-diagonal blocks count twice
            total += _kernel_block_sum(ai, ai, gammas)
            if i + block < b.shape[0]:
                total += 2.0 * _kernel_block_sum(ai, b[i + block :], gammas)
        else:
            total += _kernel_block_sum(ai, b, gammas)
    return total / (a.shape[0] * b.shape[0])


def _bandwidths(bandwidths: float | Sequence[float]) -> list[float]:
    """``bandwidths`` (one number, or a sequence, array or tensor of them) as a list of floats,
    each checked positive and finite."""
    if isinstance(bandwidths, (str, bytes)):  # float("2") would have read it as a number
        raise TypeError(f"bandwidths must be numbers, got {type(bandwidths).__name__}")
    if isinstance(bandwidths, Tensor):
        bandwidths = bandwidths.detach().cpu().numpy()
    values = [bandwidths] if np.ndim(bandwidths) == 0 else list(np.ravel(bandwidths))
    out = []
    for h in values:
        if isinstance(h, np.ndarray):  # a 0-d array
            h = h.item()
        out.append(check_real(h, "bandwidths", strict=True))
    return out


def mmd(
    x: Tensor | np.ndarray,
    y: Tensor | np.ndarray,
    bandwidths: float | Sequence[float] = DEFAULT_BANDWIDTHS,
    *,
    squared: bool = True,
    block_size: int = 1024,
) -> float:
    """Maximum mean discrepancy with a sum of RBF kernels (biased V-statistic).

    .. math::
        \\mathrm{MMD}^2 = \\frac{1}{n^2}\\sum_{ij} k(x_i, x_j) + \\frac{1}{m^2}\\sum_{ij}
        k(y_i, y_j) - \\frac{2}{nm}\\sum_{ij} k(x_i, y_j), \\quad
        k(a, b) = \\sum_h \\exp\\left(-\\frac{\\|a - b\\|^2}{2 h^2}\\right).

    Computed in ``block_size`` row blocks (memory ``O(block_size * m)``), distances in float64,
    the kernel sums of symmetric terms over the upper triangle only.

    Args:
        x: ``n x d`` samples; y: ``m x d`` samples (e.g. exact ones).
        bandwidths: RBF bandwidths ``h``: a sequence, or one number for a single kernel.
        squared: return ``MMD^2`` (default, the number reported in the DiGS paper's tables);
            ``False`` returns its square root.
        block_size: rows per block.

    Returns:
        ``MMD^2`` (or ``MMD``) as a float, >= 0.

    Raises:
        TypeError: ``bandwidths`` is neither a number nor a sequence of numbers.
        ValueError: a bandwidth is not a positive finite number, or there is none.
    """
    xa, ya = _as_2d(x, "x").cpu().numpy(), _as_2d(y, "y").cpu().numpy()
    if xa.shape[1] != ya.shape[1]:
        raise ValueError(
            f"x and y must have the same dimension, got {xa.shape[1]} and {ya.shape[1]}"
        )
    bw = _bandwidths(bandwidths)
    if not bw:
        raise ValueError(f"bandwidths must be positive numbers, got {list(bandwidths)}")
    block = check_positive_int(block_size, "block_size")
    gammas = [1.0 / (2.0 * h * h) for h in bw]
    kxx = _mean_kernel(xa, xa, gammas, block, symmetric=True)
    kyy = _mean_kernel(ya, ya, gammas, block, symmetric=True)
    kxy = _mean_kernel(xa, ya, gammas, block, symmetric=False)
    val = max(kxx + kyy - 2.0 * kxy, 0.0)
    return val if squared else math.sqrt(val)


# ------------------------------------------------------------------------------ mixtures
def _check_mixture(target: GaussianMixture) -> GaussianMixture:
    if not isinstance(target, GaussianMixture):
        raise TypeError(f"mode metrics need a GaussianMixture target, got {type(target).__name__}")
    return target


def _mixture_points(x: Tensor, mix: GaussianMixture) -> Tensor:
    """Samples ``x`` as ``[n, d]`` in the mixture's dtype and on its device, ``d`` its
    dimension."""
    xa = _as_2d(x, "x").to(mix.means.device, mix.means.dtype)
    if xa.shape[1] != mix.dim:
        raise ValueError(f"x must have {mix.dim} columns (the target's dimension), got {xa.shape}")
    return xa


def mode_weights(x: Tensor, target: GaussianMixture) -> Tensor:
    """Empirical component weights ``w_hat_k = mean_i r_k(x_i)`` (``K``-dim).

    Soft assignment by the responsibilities ``r_k(x) = w_k N_k(x) / p(x)``: since
    ``E_p[r_k(x)] = w_k`` exactly, exact samples give unbiased weights even where components
    overlap (several MoG-40 means are less than one standard deviation apart, where a hard
    nearest-mode assignment would be biased).
    """
    mix = _check_mixture(target)
    xa = _mixture_points(x, mix)
    return mix.responsibilities(xa).double().mean(0)


def mode_coverage(
    x: Tensor, target: GaussianMixture, quantile: float = 0.999, min_count: int = 1
) -> int:
    """Number of components holding at least ``min_count`` samples within their core.

    A sample counts for component ``k`` when ``k`` is its most responsible component and its
    Mahalanobis distance to the mean of ``k`` is inside the ``quantile`` radius of that
    component (chi distribution with ``d`` degrees of freedom), so samples stranded between
    modes do not count. Components closer than about one standard deviation are not
    distinguishable this way (MoG-40 has two such pairs): samples of one may cover the other.
    """
    mix = _check_mixture(target)
    xa = _mixture_points(x, mix)
    if not 0.0 < quantile < 1.0:
        raise ValueError(f"quantile must be in (0, 1), got {quantile}")
    min_count = check_positive_int(min_count, "min_count")
    k = mix.assign(xa)
    z = (xa - mix.means[k]) / mix.scales[k]
    inside = (z * z).sum(-1) <= chi2.ppf(quantile, mix.dim)
    counts = torch.bincount(k[inside], minlength=mix.n_components)
    return int((counts >= min_count).sum())


def mode_weight_tv(x: Tensor, target: GaussianMixture) -> float:
    """Total variation ``0.5 sum_k |w_hat_k - w_k|`` between empirical and true mode weights."""
    mix = _check_mixture(target)
    return float(0.5 * (mode_weights(x, mix) - mix.weights.double()).abs().sum())


def mode_statistics(x: Tensor, target: GaussianMixture) -> dict[str, float | int]:
    """Coverage, mode-weight TV and the number of components, in one dictionary."""
    return {
        "modes_covered": mode_coverage(x, target),
        "n_modes": target.n_components,
        "mode_weight_tv": mode_weight_tv(x, target),
    }


# ------------------------------------------------------------------------------ moments
def expected_squared_norm(x: Tensor) -> float:
    """``mean_i ||x_i||^2``."""
    xa = _as_2d(x, "x")
    return float((xa * xa).sum(-1).mean())


def relative_error(estimate: float, truth: float) -> float:
    """``|estimate - truth| / |truth|``.

    Raises:
        ValueError: ``estimate`` or ``truth`` is not one finite number, or ``truth`` is 0.
    """
    est, tru = _scalar(estimate, "estimate"), _scalar(truth, "truth")
    if tru == 0:
        raise ValueError("truth must be non-zero (relative_error divides by it)")
    return abs(est - tru) / abs(tru)


def _scalar(value: float, name: str) -> float:
    """``value`` (a number, 0-d array or one-element tensor) as a finite float."""
    if isinstance(value, (str, bytes, bool)):
        raise ValueError(f"{name} must be a finite number, got {value!r}")
    if isinstance(value, Tensor):
        value = value.detach().cpu().numpy()
    arr = np.asarray(value)
    if arr.size != 1 or not np.issubdtype(arr.dtype, np.number):
        raise ValueError(f"{name} must be one finite number, got {value!r}")
    out = float(arr.reshape(-1)[0])
    if not np.isfinite(out):
        raise ValueError(f"{name} must be finite, got {out}")
    return out


# ------------------------------------------------------------------------------ histograms
def wasserstein_1d(
    u_values: np.ndarray,
    v_values: np.ndarray,
    u_weights: np.ndarray,
    v_weights: np.ndarray,
    p: int = 1,
) -> float:
    """``W_p`` between two weighted discrete distributions on the line (via quantile functions).

    ``W_p^p = int_0^1 |F_u^-1(t) - F_v^-1(t)|^p dt``, exact for discrete distributions.

    Raises:
        ValueError: values or weights not 1-D, empty, of unequal lengths or not finite,
            a negative weight, weights summing to 0, or ``p < 1``.
    """
    arrays = {}
    for name, a in (
        ("u_values", u_values),
        ("v_values", v_values),
        ("u_weights", u_weights),
        ("v_weights", v_weights),
    ):
        arr = np.asarray(a, float)
        if arr.ndim != 1 or arr.size == 0:
            raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
        if not np.isfinite(arr).all():  # a NaN value gave a NaN distance
            raise ValueError(f"{name} contains non-finite values")
        arrays[name] = arr
    u_values, v_values = arrays["u_values"], arrays["v_values"]
    u_w, v_w = arrays["u_weights"], arrays["v_weights"]
    for side, vals, w in (("u", u_values, u_w), ("v", v_values, v_w)):
        if w.shape != vals.shape:
            raise ValueError(
                f"{side}_values and {side}_weights must have equal lengths, got "
                f"{len(vals)} and {len(w)}"
            )
        if (w < 0).any():
            raise ValueError(f"{side}_weights must be non-negative")
        if w.sum() <= 0:
            raise ValueError(f"{side}_weights must have a positive sum")
    p = check_positive_int(p, "p")
    iu, iv = np.argsort(u_values), np.argsort(v_values)
    u_values, u_w = u_values[iu], u_w[iu] / u_w.sum()
    v_values, v_w = v_values[iv], v_w[iv] / v_w.sum()
    cu, cv = np.cumsum(u_w), np.cumsum(v_w)
    cu[-1] = cv[-1] = 1.0
    levels = np.unique(np.concatenate([[0.0], cu, cv]))
    mids = 0.5 * (levels[:-1] + levels[1:])
    qu = u_values[np.minimum(np.searchsorted(cu, mids, side="left"), len(cu) - 1)]
    qv = v_values[np.minimum(np.searchsorted(cv, mids, side="left"), len(cv) - 1)]
    val = float(np.sum(np.diff(levels) * np.abs(qu - qv) ** p))
    return val ** (1.0 / p)


def histogram_distance(
    values: Tensor | np.ndarray,
    reference: Tensor | np.ndarray,
    metric: str = "w1",
    bins: int = 200,
    value_range: tuple[float, float] | None = None,
) -> float:
    """Distance between 200-bin histograms of a 1-D statistic of samples and of reference samples.

    The histogram range is the reference's ``[min, max]`` widened by 10% on each side (or
    ``value_range``); sample values outside it, infinite ones included (an energy of ``+inf``
    outside a target's support), are clipped into the edge bins, so a few wild samples cost at
    most the range width instead of stretching every bin. Histograms are treated as discrete
    distributions on the bin centres.

    Args:
        values: sample statistics (any shape, flattened).
        reference: reference statistics.
        metric: ``"w1"``, ``"w2"`` (Wasserstein distances) or ``"tv"`` (total variation).
        bins: number of bins.
        value_range: explicit ``(low, high)``.
    """
    check_choice(metric, "metric", ["w1", "w2", "tv"])
    v = torch.as_tensor(values).detach().double().reshape(-1).cpu().numpy()
    r = torch.as_tensor(reference).detach().double().reshape(-1).cpu().numpy()
    if v.size == 0 or r.size == 0:
        raise ValueError("values and reference must be non-empty")
    if not np.isfinite(r).all():
        raise ValueError("reference contains non-finite values")
    if np.isnan(v).any():
        raise ValueError(f"values contain {int(np.isnan(v).sum())} NaN")
    if value_range is None:
        lo, hi = float(r.min()), float(r.max())
        pad = 0.1 * (hi - lo) if hi > lo else 1.0
        lo, hi = lo - pad, hi + pad
    else:
        lo, hi = map(float, value_range)
        if not (np.isfinite(lo) and np.isfinite(hi) and lo < hi):
            raise ValueError(
                f"value_range must be finite (low, high), low < high, got {value_range}"
            )
    edges = np.linspace(lo, hi, check_positive_int(bins, "bins") + 1)
    centres = 0.5 * (edges[:-1] + edges[1:])
    hv, _ = np.histogram(np.clip(v, lo, hi), bins=edges)
    hr, _ = np.histogram(np.clip(r, lo, hi), bins=edges)
    if metric == "tv":
        return float(0.5 * np.abs(hv / hv.sum() - hr / hr.sum()).sum())
    return wasserstein_1d(centres, centres, hv, hr, p=1 if metric == "w1" else 2)


def energy_distance(
    samples: Tensor, reference: Tensor, target: Target, metric: str = "w1", bins: int = 200
) -> float:
    """:func:`histogram_distance` between energies ``target.energy`` of samples and reference.

    ``samples`` and ``reference`` are ``[n, target.dim]`` arrays or tensors; the energies are
    computed in the target's dtype.

    Raises:
        ValueError: a shape other than ``[n, target.dim]``, NaN in ``samples`` or non-finite
            ``reference`` (samples at infinity count in the edge bin, see
            :func:`histogram_distance`).
    """
    if not isinstance(target, Target):
        raise TypeError(f"target must be a samplers Target, got {type(target).__name__}")
    check_choice(metric, "metric", ["w1", "w2", "tv"])
    xs = _points(samples, "samples", target.dim, finite=False)
    xr = _points(reference, "reference", target.dim, finite=True)
    with torch.no_grad():
        e_s = target.energy(xs.to(target._dtype()))
        e_r = target.energy(xr.to(target._dtype()))
    return histogram_distance(e_s, e_r, metric, bins)


def _points(x: Tensor | np.ndarray, name: str, dim: int, *, finite: bool) -> Tensor:
    """``x`` as a tensor of shape ``[n, dim]`` (``n >= 1``) without NaN (without inf too if
    ``finite``); the error names ``name``."""
    t = torch.as_tensor(x)
    if t.dim() != 2 or t.shape[0] == 0 or t.shape[1] != dim:
        raise ValueError(f"{name} must be a non-empty [n, {dim}] array, got {tuple(t.shape)}")
    if not t.is_floating_point():
        t = t.double()
    if bool(torch.isnan(t).any()):
        raise ValueError(f"{name} contains NaN")
    if finite and not bool(torch.isfinite(t).all()):
        raise ValueError(f"{name} contains non-finite values")
    return t


def interatomic_distance_distance(
    samples: Tensor, reference: Tensor, target: ParticleSystem, metric: str = "w1", bins: int = 200
) -> float:
    """:func:`histogram_distance` between pooled interatomic distances of samples and reference."""
    if not isinstance(target, ParticleSystem):
        raise TypeError(
            f"interatomic distances need a ParticleSystem target, got {type(target).__name__}"
        )
    check_choice(metric, "metric", ["w1", "w2", "tv"])
    xs = _points(samples, "samples", target.dim, finite=False)
    xr = _points(reference, "reference", target.dim, finite=True)
    return histogram_distance(
        target.interatomic_distances(xs), target.interatomic_distances(xr), metric, bins
    )
