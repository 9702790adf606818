"""Convergence diagnostics of multiple chains: effective sample sizes and R-hat.

All follow Vehtari, Gelman, Simpson, Carpenter & Buerkner (2021), *Rank-normalization,
folding, and localization: an improved R-hat*, Bayesian Analysis 16(2): chains are split in
halves; with ``rank=True`` the draws are first replaced by normal scores of their ranks
(``bulk`` versions, robust to heavy tails). :func:`ess` uses Geyer's initial monotone sequence
on the autocorrelation combined across chains, with the paper's improved estimate (the even
lag that ends the positive sequence, when positive). :func:`ess_tail` is the smaller ESS of the
5% and 95% quantile indicators; :func:`rhat` is the larger of the bulk split R-hat and the
split R-hat of the folded draws ``|x - median|`` (the paper's recommended R-hat). The figures
equal ArviZ's (``ess(method="bulk" | "mean" | "tail")``, ``rhat(method="rank")``) except
where the combined autocorrelation never turns negative (very short chains, or chains that
disagree): ArviZ then stops three lags before the end, this module uses every lag (two 9-draw
chains, e.g.: ArviZ 19.3, here 7.2). Computed in float64 NumPy.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.special import ndtri
from scipy.stats import rankdata

__all__ = ["ess", "ess_tail", "rhat", "split_rhat", "summary"]


def _as_chains(chains: torch.Tensor | np.ndarray) -> np.ndarray:
    a = (
        chains.detach().cpu().double().numpy()
        if isinstance(chains, torch.Tensor)
        else np.asarray(chains, float)
    )
    if a.ndim == 2:
        a = a[..., None]
    if a.ndim != 3 or 0 in (a.shape[0], a.shape[2]):
        raise ValueError(f"chains must have shape (n_chains, n_draws[, dim]), got {a.shape}")
    if a.shape[1] < 4:
        raise ValueError(f"need at least 4 draws per chain, got {a.shape[1]}")
    if not np.isfinite(a).all():
        raise ValueError("chains contain non-finite values")
    return a


def _split(a: np.ndarray) -> np.ndarray:
    half = a.shape[1] // 2
    return np.concatenate([a[:, :half], a[:, a.shape[1] - half :]], axis=0)


def _rank_normalize(a: np.ndarray) -> np.ndarray:
    c, n, d = a.shape
    flat = a.reshape(c * n, d)
    r = rankdata(flat, method="average", axis=0)  # one sort per column, no Python loop
    z = ndtri((r - 3.0 / 8.0) / (c * n + 0.25))
    return z.reshape(c, n, d)


def _rhat_of(a: np.ndarray) -> np.ndarray:
    """Split R-hat per dimension of already split chains ``a`` (``2c x n x d``)."""
    n = a.shape[1]
    w = a.var(axis=1, ddof=1).mean(0)
    b_over_n = a.mean(1).var(axis=0, ddof=1)
    var_plus = (n - 1) / n * w + b_over_n
    with np.errstate(divide="ignore", invalid="ignore"):
        r = np.sqrt(var_plus / w)
    return np.where(w > 0, r, np.where(b_over_n > 0, np.inf, np.nan))


def split_rhat(chains: torch.Tensor | np.ndarray, rank: bool = True) -> np.ndarray:
    """Split R-hat per dimension.

    Args:
        chains: a ``c x n [x d]`` array of draws (``c`` chains of ``n`` draws).
        rank: rank-normalise first (the "bulk" R-hat of Vehtari et al., 2021).

    Returns:
        A ``d``-dim array; values near 1 indicate mixing, above ~1.01 trouble; ``inf`` where
        every chain is constant but the chains differ (stuck apart), NaN where all draws are
        equal (undefined).
    """
    a = _split(_as_chains(chains))
    return _rhat_of(_rank_normalize(a) if rank else a)


def rhat(chains: torch.Tensor | np.ndarray) -> np.ndarray:
    """Rank-normalised split R-hat of Vehtari et al. (2021), their recommended diagnostic.

    The larger of the bulk R-hat (:func:`split_rhat` with ``rank=True``) and the bulk R-hat of
    the folded draws ``|x - median(x)|`` (the median over all draws of the dimension), which
    catches chains that agree in location but differ in scale.

    Args:
        chains: a ``c x n [x d]`` array of draws.

    Returns:
        A ``d``-dim array (``inf`` / NaN as :func:`split_rhat`; NaN if either part is NaN).
    """
    a = _split(_as_chains(chains))
    return _rank_rhat(_rhat_of(_rank_normalize(a)), a)


def _rank_rhat(bulk: np.ndarray, a: np.ndarray) -> np.ndarray:
    """:func:`rhat` from the bulk R-hat ``bulk`` of the split chains ``a`` (``2c x n x d``)."""
    folded = np.abs(a - np.median(a.reshape(-1, a.shape[2]), axis=0))
    tail = _rhat_of(_rank_normalize(folded))
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(bulk) | np.isnan(tail), np.nan, np.maximum(bulk, tail))


def _autocov(a: np.ndarray) -> np.ndarray:
    """Autocovariance of each chain and dimension by FFT (``c x n x d``)."""
    n = a.shape[1]
    x = a - a.mean(1, keepdims=True)
    m = 1 << int(np.ceil(np.log2(2 * n)))
    f = np.fft.rfft(x, n=m, axis=1)
    acov = np.fft.irfft(f * np.conj(f), n=m, axis=1)[:, :n]
    return acov / n


def _ess_of(a: np.ndarray) -> np.ndarray:
    """ESS per dimension of already split (and transformed) chains ``a`` (``2c x n x d``)."""
    c, n, d = a.shape
    acov = _autocov(a)  # c x n x d
    chain_var = acov[:, 0] * n / (n - 1)
    w = chain_var.mean(0)
    var_plus = w * (n - 1) / n + (a.mean(1).var(axis=0, ddof=1) if c > 1 else 0.0)
    out = np.empty(d)
    n_pairs = n // 2
    for j in range(d):
        if var_plus[j] <= 0:
            out[j] = np.nan
            continue
        rho = 1.0 - (w[j] - acov[:, :, j].mean(0)) / var_plus[j]
        rho[0] = 1.0
        # Geyer's initial positive sequence of pair sums, made monotone
        pairs = rho[: 2 * n_pairs].reshape(n_pairs, 2).sum(1)
        neg = np.nonzero(pairs <= 0)[0]
        k = neg[0] if len(neg) else n_pairs
        p = np.minimum.accumulate(pairs[:k]) if k > 0 else pairs[:0]
        tau = -1.0 + 2.0 * p.sum()
        if k < n_pairs:  # improved estimate: the ending pair's even lag when positive
            tau += max(rho[2 * k], 0.0)
        tau = max(tau, 1.0 / np.log10(c * n))
        out[j] = c * n / tau
    return out


def ess(chains: torch.Tensor | np.ndarray, rank: bool = True) -> np.ndarray:
    """Effective sample size per dimension (bulk ESS when ``rank``).

    Args:
        chains: a ``c x n [x d]`` array of draws.
        rank: rank-normalise first.

    Returns:
        A ``d``-dim array of effective sample sizes (at most ``c * n * log10(c n)`` as in the
        reference implementation's antithetic cap); NaN where all draws are equal (undefined).
    """
    a = _split(_as_chains(chains))
    return _ess_of(_rank_normalize(a) if rank else a)


def ess_tail(
    chains: torch.Tensor | np.ndarray, probs: tuple[float, float] = (0.05, 0.95)
) -> np.ndarray:
    """Tail effective sample size per dimension (Vehtari et al., 2021).

    The smaller of the ESS of the indicators ``x <= q_p`` for ``p`` in ``probs``, ``q_p`` the
    (linearly interpolated) quantile of all draws of the dimension: how well the chains
    estimate the 5% and 95% quantiles, which mix more slowly than the bulk when tails are
    sampled rarely.

    Args:
        chains: a ``c x n [x d]`` array of draws.
        probs: the two quantile levels, each in ``(0, 1)``.

    Returns:
        A ``d``-dim array; NaN where an indicator is constant (e.g. all draws equal).

    Raises:
        ValueError: ``probs`` not two levels in ``(0, 1)``.
    """
    probs = tuple(float(p) for p in probs)
    if len(probs) != 2 or not all(0.0 < p < 1.0 for p in probs):
        raise ValueError(f"probs must be two levels in (0, 1), got {probs!r}")
    return _ess_tail_of(_as_chains(chains), probs)


def _ess_tail_of(a: np.ndarray, probs: tuple[float, ...]) -> np.ndarray:
    """:func:`ess_tail` of checked (unsplit) chains ``a`` (``c x n x d``)."""
    flat = a.reshape(-1, a.shape[2])
    out = []
    for p in probs:
        below = (a <= np.quantile(flat, p, axis=0)).astype(float)
        out.append(_ess_of(_split(below)))
    with np.errstate(invalid="ignore"):
        return np.where(np.isnan(out[0]) | np.isnan(out[1]), np.nan, np.minimum(*out))


def summary(chains: torch.Tensor | np.ndarray) -> dict[str, np.ndarray]:
    """Every diagnostic of a sampler run at once, the draws rank-normalised once.

    Args:
        chains: a ``c x n [x d]`` array of draws.

    Returns:
        ``ess_bulk`` (:func:`ess`), ``ess_tail`` (:func:`ess_tail`), ``rhat_split``
        (:func:`split_rhat`) and ``rhat`` (:func:`rhat`), each ``d``-dim; the same numbers as
        the four calls, which rank-normalised the same draws three times.
    """
    a = _as_chains(chains)
    split = _split(a)
    z = _rank_normalize(split)
    bulk = _rhat_of(z)
    return {
        "ess_bulk": _ess_of(z),
        "ess_tail": _ess_tail_of(a, (0.05, 0.95)),
        "rhat_split": bulk,
        "rhat": _rank_rhat(bulk, split),
    }
