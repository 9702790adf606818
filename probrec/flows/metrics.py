"""Metrics of annotator simulation (Wu, Chen, Zhang & Woodland, 2023, Section 5).

All functions take per-item label distributions ``[n, K]`` (predicted probabilities) and the
humans' per-item label counts ``[n, K]`` (:func:`probrec.data.annotation_counts`) over the
ordered label values ``[K]``, as NumPy arrays or tensors:

* :func:`nll` -- negative log-likelihood per individual annotation,
  ``-sum_ik n_ik log p_ik / sum_ik n_ik``; with ``per_item=True`` each item weighs the same,
  ``-mean_i sum_k (n_ik / n_i) log p_ik`` (the paper's "NLL-all": the cross-entropy of the
  item's empirical label distribution, averaged over items). :func:`evaluate` adds
  ``nll_panel``, the likelihood of each item's annotations jointly (one panel) per
  annotation, which rewards a model whose simulated annotators of one item agree as much as
  the humans do.
* :func:`mean_rmse` -- RMSE between the predicted mean label and the annotators' mean.
* :func:`std_rmse` -- RMSE between the predicted standard deviation and the annotators'
  (population form, ``ddof = 0``, as in the paper's scoring), over items with at least two
  annotations.
* :func:`wasserstein1` -- per-item ``W1`` between the predicted and the empirical label
  distribution on the label line, ``sum_j |F_p(v_j) - F_e(v_j)| (v_{j+1} - v_j)``. Against
  a panel of a few annotators this is an absolute error on the panel's empirical CDF, whose
  expectation is minimised by the CDF's median over panels, not by the true distribution
  (not a proper score): for an item where 20% of annotators say 1, a point mass on 0 has
  a lower expected W1 to 3-annotator panels than the truth (0.200 vs 0.205). It rewards
  predictions more concentrated than the population on skewed items.
* :func:`majority_accuracy` -- the predicted most likely label is one of the item's most
  frequent human labels (ties count as hits for any tied label).
* :func:`fleiss_kappa` -- Fleiss' kappa (Fleiss, 1971) for items with possibly different
  numbers of raters: ``P_i = (sum_j n_ij^2 - n_i) / (n_i (n_i - 1))`` over items with
  ``n_i >= 2``, ``p_j`` the pooled label proportions, ``kappa = (mean P_i - sum_j p_j^2) /
  (1 - sum_j p_j^2)``; equal to the textbook formula when every item has the same count.
* :func:`kl_to_truth` -- mean over items of ``KL(p_true || p)``, for synthetic items whose
  label distribution is known (the expected per-annotation NLL minus its floor, the entropy).
* :func:`panel_std` -- the expected standard deviation (``ddof = 0``) of a simulated panel
  with as many annotators as the human panel of the item, estimated from simulated panels.
* :func:`evaluate` -- all of the above for a fitted model on held-out items, with the
  simulated annotators' Fleiss' kappa (as many simulated as human annotators per item)
  next to the humans'.

Two per-item spread metrics: ``std_rmse`` compares the standard deviation of the model's
distribution for one item (for panel models, of ``p(y | x, u)`` averaged over ``u``) with the
human panel's ``ddof = 0`` standard deviation; but a human panel of ``n`` annotators has an
expected ``ddof = 0`` standard deviation below the population one (by the factor
``sqrt((n - 1) / n)`` on the variance and by Jensen's gap on the square root), so a
calibrated model is penalised. ``std_rmse_panel`` compares like with like: the standard
deviation of ``n`` simulated annotators against that of the ``n`` humans, in expectation over
simulated panels -- the squared-error-optimal prediction of the human value if the model is
right.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np

from probrec.checks import check_positive_int, host_array

if TYPE_CHECKING:
    from torch import Tensor

__all__ = [
    "distribution_moments",
    "evaluate",
    "fleiss_kappa",
    "kl_to_truth",
    "majority_accuracy",
    "mean_rmse",
    "nll",
    "panel_std",
    "std_rmse",
    "wasserstein1",
]


def _np(a: Any, name: str, ndim: int | None = 2) -> np.ndarray:
    arr = host_array(a)
    if ndim is not None and arr.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimensions, got shape {arr.shape}")
    if not np.isfinite(arr).all() and name != "log_probs":
        raise ValueError(f"{name} contains non-finite values")
    return arr


def _counts(counts: Any) -> np.ndarray:
    c = _np(counts, "counts")
    if (c < 0).any():
        raise ValueError("counts must be non-negative")
    return c


def _check_pair(probs: Any, counts: Any) -> tuple[np.ndarray, np.ndarray]:
    p, c = _np(probs, "probs"), _counts(counts)
    if p.shape != c.shape:
        raise ValueError(f"probs {p.shape} and counts {c.shape} must have the same shape")
    if p.shape[0] == 0:
        raise ValueError("probs and counts hold no items")
    if (p < -1e-12).any():
        raise ValueError("probs must be non-negative")
    return p, c


def _values(values: Any, k: int) -> np.ndarray:
    v = _np(values, "values", 1)
    if v.shape != (k,) or (np.diff(v) <= 0).any():
        raise ValueError(f"values must be {k} increasing label values, got {v.tolist()}")
    return v


def _normalise(p: np.ndarray, name: str = "probs") -> np.ndarray:
    s = p.sum(-1, keepdims=True)
    if (s <= 0).any():
        rows = np.flatnonzero(s[..., 0] <= 0)
        raise ValueError(
            f"{name}: {len(rows)} row(s) sum to zero (first: row {int(rows[0])}); every item "
            "needs a label distribution" + (" (an annotation)" if name == "counts" else "")
        )
    return p / s


def nll(log_probs: Any, counts: Any, *, per_item: bool = False) -> float:
    """Mean negative log-likelihood per annotation (or per item).

    Args:
        log_probs: ``[n, K]`` predicted log-probabilities.
        counts: ``[n, K]`` human label counts.
        per_item: weigh every item the same: the mean over items of the cross-entropy
            ``-sum_k (n_ik / n_i) log p_ik`` (Wu et al.'s "NLL-all"); items without
            annotations are skipped. Default: every annotation weighs the same.
    """
    lp, c = _np(log_probs, "log_probs"), _counts(counts)
    if lp.shape != c.shape:
        raise ValueError(f"log_probs {lp.shape} and counts {c.shape} must have the same shape")
    if np.isnan(lp).any() or np.isposinf(lp).any():
        raise ValueError("log_probs contains NaN or +inf")
    if (lp > 1e-6).any():  # e.g. probabilities passed for log-probabilities
        raise ValueError(
            f"log_probs must be log-probabilities (<= 0), got values up to {lp.max():.3g}; "
            "pass the log of the probabilities"
        )
    if not c.sum() > 0:
        raise ValueError("counts has no annotations")
    terms = c * np.where(c > 0, lp, 0.0)  # 0 * -inf for unused labels is 0
    if not per_item:
        return float(-terms.sum() / c.sum())
    n_i = c.sum(-1)
    has = n_i > 0
    return float(-(terms[has].sum(-1) / n_i[has]).mean())


def kl_to_truth(true_probs: Any, probs: Any) -> float:
    """Mean over items of ``KL(true || predicted)`` in nats.

    Args:
        true_probs: ``[n, K]`` the items' true label distributions (e.g. synthetic data's
            ``metadata["true_probs"]``).
        probs: ``[n, K]`` predicted label distributions (rows renormalised).

    Returns:
        ``mean_i sum_k t_ik (log t_ik - log p_ik)``; ``inf`` if a prediction puts zero mass
        on a label the truth uses.
    """
    t, p = _np(true_probs, "true_probs"), _np(probs, "probs")
    if t.shape != p.shape:
        raise ValueError(f"true_probs {t.shape} and probs {p.shape} must have the same shape")
    if (t < 0).any() or (p < 0).any():
        raise ValueError("true_probs and probs must be non-negative")
    t, p = _normalise(t, "true_probs"), _normalise(p, "probs")
    with np.errstate(divide="ignore"):
        used = t > 0
        terms = np.where(
            used, t * (np.log(np.where(used, t, 1.0)) - np.log(np.where(used, p, 1.0))), 0.0
        )
    return float(terms.sum(-1).mean())


def distribution_moments(probs: Any, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[n]`` of per-item distributions over ``values``."""
    return _moments(_normalise(_np(probs, "probs"), "probs"), values)


def _moments(p: np.ndarray, values: Any) -> tuple[np.ndarray, np.ndarray]:
    """Mean and standard deviation ``[n]`` of normalised rows ``p`` over ``values``."""
    v = _values(values, p.shape[1])
    mean = p @ v
    var = np.clip(p @ v**2 - mean**2, 0.0, None)
    return mean, np.sqrt(var)


def mean_rmse(probs: Any, counts: Any, values: Any) -> float:
    """RMSE of the predicted mean label vs the annotators' mean, over items.

    Raises:
        ValueError: an item without annotations (its mean is undefined), or a row of
            ``probs`` summing to zero.
    """
    p, c = _check_pair(probs, counts)
    mp = _moments(_normalise(p, "probs"), values)[0]
    mc = _moments(_normalise(c, "counts"), values)[0]
    return float(np.sqrt(np.mean((mp - mc) ** 2)))


def std_rmse(probs: Any, counts: Any, values: Any, *, min_annotations: int = 2) -> float:
    """RMSE of the predicted per-item standard deviation vs the annotators' (``ddof = 0``).

    Items with fewer than ``min_annotations`` annotations are left out (their empirical
    standard deviation is 0 by construction).
    """
    p, c = _check_pair(probs, counts)
    min_annotations = check_positive_int(min_annotations, "min_annotations")
    keep = c.sum(-1) >= min_annotations
    if not keep.any():
        raise ValueError(f"counts: no item has >= {min_annotations} annotations")
    sp = _moments(_normalise(p, "probs")[keep], values)[1]
    sc = _moments(_normalise(c[keep], "counts"), values)[1]
    return float(np.sqrt(np.mean((sp - sc) ** 2)))


def wasserstein1(probs: Any, counts: Any, values: Any) -> np.ndarray:
    """Per-item Wasserstein-1 distance ``[n]`` between predicted and empirical distributions.

    Raises:
        ValueError: an item without annotations, or a row of ``probs`` summing to zero.
    """
    p, c = _check_pair(probs, counts)
    v = _values(values, p.shape[1])
    fp = np.cumsum(_normalise(p, "probs"), -1)[:, :-1]
    fc = np.cumsum(_normalise(c, "counts"), -1)[:, :-1]
    return np.abs(fp - fc) @ np.diff(v)


def majority_accuracy(probs: Any, counts: Any) -> float:
    """Fraction of items whose most likely predicted label is a most frequent human label
    (items without annotations are left out).

    Ties: a prediction that hits any of the item's tied most frequent human labels counts as
    a hit; among tied most likely predicted labels the first (lowest) one is the prediction
    (``argmax``), so a uniform prediction predicts the lowest label.

    Raises:
        ValueError: no item has annotations, or a row of ``probs`` sums to zero (it has no
            most likely label).
    """
    p, c = _check_pair(probs, counts)
    has = c.sum(-1) > 0
    if not has.any():
        raise ValueError("counts has no annotations")
    _normalise(p, "probs")  # an all-zero row predicted the first label
    pred = p[has].argmax(-1)
    hit = c[has][np.arange(int(has.sum())), pred] == c[has].max(-1)
    return float(hit.mean())


def fleiss_kappa(counts: Any) -> float:
    """Fleiss' kappa of ``[n, K]`` rating counts (items with fewer than 2 ratings dropped).

    Raises:
        ValueError: fewer than one item with two ratings, or all ratings in one category
            (kappa undefined).
    """
    c = _counts(counts)
    if not np.all(c == np.round(c)):
        raise ValueError("counts must be non-negative integers")
    n_i = c.sum(-1)
    c = c[n_i >= 2]
    n_i = n_i[n_i >= 2]
    if len(c) == 0:
        raise ValueError("counts: Fleiss' kappa needs items with at least two ratings")
    p_i = ((c**2).sum(-1) - n_i) / (n_i * (n_i - 1))
    p_j = c.sum(0) / c.sum()
    p_e = float((p_j**2).sum())
    if p_e >= 1 - 1e-12:
        raise ValueError("counts: all ratings fall in one category; Fleiss' kappa is undefined")
    return float((p_i.mean() - p_e) / (1 - p_e))


def panel_std(
    model: Any,
    x: Any,
    panel_sizes: Any,
    *,
    panels: int = 64,
    seed: int = 0,
    batch_size: int = 4096,
) -> np.ndarray:
    """Expected ``ddof = 0`` standard deviation of a simulated panel per item ``[n]``.

    For item ``i`` draws ``panels`` independent panels of ``panel_sizes[i]`` simulated
    annotators (:meth:`~probrec.flows.AnnotatorModel.sample`: for models with an item latent,
    a fresh latent per panel) and averages their standard deviations.

    Args:
        model: a fitted :class:`probrec.flows.AnnotatorModel`.
        x: ``[n, d]`` features.
        panel_sizes: ``[n]`` annotators per panel (>= 1).
        panels: simulated panels per item.
        seed: seed of the simulation.
        batch_size: items per forward pass of :meth:`sample`.

    Returns:
        ``[n]`` Monte Carlo estimates (standard error about ``sd / sqrt(panels)``).
    """
    panels = check_positive_int(panels, "panels")
    xs = _np(x, "x")
    sizes = np.asarray(panel_sizes)
    if sizes.shape != (len(xs),) or (sizes < 1).any() or not np.all(sizes == np.round(sizes)):
        raise ValueError(f"panel_sizes must be {len(xs)} positive integers")
    sizes = sizes.astype(int)
    sims = model.sample(
        np.tile(xs, (panels, 1)), int(sizes.max()), seed=seed, batch_size=batch_size
    )
    sims = sims.double().cpu().numpy().reshape(-1, panels, len(xs))  # [m, panels, n]
    used = np.arange(sims.shape[0])[:, None, None] < sizes[None, None, :]
    mean = (sims * used).sum(0) / sizes
    var = np.clip((sims**2 * used).sum(0) / sizes - mean**2, 0.0, None)
    return np.sqrt(var).mean(0)


def _nll_jackknife_se(loo: Tensor | None, counts: np.ndarray) -> float:
    """Monte Carlo standard error of :func:`nll` of a model's estimated log-probabilities:
    the jackknife over the leave-one-replicate-out estimates ``loo`` ``[R, n, K]`` (the
    replicates' points are shared by the items, so the items' errors are correlated; 0 for
    closed forms, ``loo=None``)."""
    if loo is None:
        return 0.0
    lp = loo.double().cpu().numpy()  # [R, n, K]
    r = lp.shape[0]
    if r < 2:
        return float("nan")
    vals = -(counts * np.where(counts > 0, lp, 0.0)).sum((1, 2)) / counts.sum()
    return float(np.sqrt((r - 1) / r * ((vals - vals.mean()) ** 2).sum()))


def evaluate(
    model: Any,
    x: Any,
    annotations: Any,
    mask: Any = None,
    *,
    seed: int = 0,
    n_samples: int | None = None,
    panels: int = 64,
) -> dict[str, float]:
    """All metrics of a fitted model on held-out items.

    Predicted means, standard deviations, W1 and majority accuracy use the model's label
    probabilities (renormalised to sum to one for Monte Carlo estimates); the simulated
    kappa draws as many simulated annotators per item as the item has human annotations.

    Args:
        model: a fitted :class:`probrec.flows.AnnotatorModel`.
        x: ``[n, d]`` features.
        annotations: padded ``[n, m]`` labels (with ``mask``) or per-item lists.
        mask: ``[n, m]`` bool.
        seed: seed of every Monte Carlo estimate and of the simulated annotators.
        n_samples: Monte Carlo samples for stochastic models (``None``: their default).
        panels: simulated panels per item for ``std_rmse_panel`` (:func:`panel_std`).

    Returns:
        ``nll``, ``nll_item`` (every item weighs the same, :func:`nll` with
        ``per_item=True``), ``nll_mc_se`` (Monte Carlo standard error of the NLL, the
        jackknife over the estimate's replicates, :meth:`label_log_probs_loo`; 0 for closed
        forms),
        ``nll_panel`` (each item's annotations as one panel, :meth:`panel_log_prob`, per
        annotation; equal to ``nll`` for models with independent annotators),
        ``mean_rmse``, ``std_rmse``, ``std_rmse_panel``, ``std_bias`` / ``std_bias_panel``
        (mean predicted minus mean human standard deviation), ``w1``, ``accuracy``, ``kappa_sim``,
        ``kappa_human`` (NaN where Fleiss' kappa is undefined: all labels in one category).

    Raises:
        ValueError: ``x`` and ``annotations`` of different lengths, or no item with at least
            two annotations (the spread metrics need them).
    """
    from probrec.data.annotations import annotation_counts, pad_annotations

    labels, m = pad_annotations(annotations, mask, label_values=model.labels)
    counts = annotation_counts(labels, m, model.labels)
    xs = _np(x, "x")
    if len(xs) != len(counts):
        raise ValueError(f"x has {len(xs)} items but annotations has {len(counts)}")
    n_h = counts.sum(-1)
    has2 = n_h >= 2
    if not has2.any():
        raise ValueError(
            "annotations: the spread metrics and kappa need items with at least 2 annotations"
        )
    values = np.asarray(model.labels, dtype=np.float64)
    logp_t, loo = model.label_log_probs_loo(x, seed=seed, n_samples=n_samples)
    logp = logp_t.double().cpu().numpy()
    probs = _normalise(np.exp(logp), "label_log_probs")
    # expected spread within one simulated item (for independent annotators: of p(y | x))
    item_sd = model.item_moments(x, seed=seed, n_samples=n_samples)[1].double().cpu().numpy()
    human_sd = distribution_moments(counts[has2], values)[1]
    sim_sd = panel_std(model, xs[has2], n_h[has2], panels=panels, seed=seed + 2)
    if model.panel_latent:
        panel_ll = model.panel_log_prob(x, labels, m, seed=seed, n_samples=n_samples)
        nll_panel = float(-panel_ll.double().sum().cpu() / counts.sum())
    else:  # independent annotators: the panel likelihood is the sum of the marginals
        nll_panel = nll(logp, counts)
    out = {
        "nll": nll(logp, counts),
        "nll_item": nll(logp, counts, per_item=True),
        # each item's annotations jointly (a panel), per annotation
        "nll_panel": nll_panel,
        "nll_mc_se": _nll_jackknife_se(loo, counts),
        "mean_rmse": mean_rmse(probs, counts, values),
        "std_rmse": float(np.sqrt(np.mean((item_sd[has2] - human_sd) ** 2))),
        "std_rmse_panel": float(np.sqrt(np.mean((sim_sd - human_sd) ** 2))),
        # level of the predicted spread (diagnostic): mean predicted minus mean human std
        "std_bias": float(np.mean(item_sd[has2] - human_sd)),
        "std_bias_panel": float(np.mean(sim_sd - human_sd)),
        "w1": float(wasserstein1(probs, counts, values).mean()),
        "accuracy": majority_accuracy(probs, counts),
    }
    n_per = m.sum(1)
    sims = model.sample(x, int(n_per.max()), seed=seed + 1)  # [m_max, n] label values
    sims = sims.T.cpu().numpy()
    sim_mask = np.arange(sims.shape[1])[None, :] < n_per[:, None]
    sim_counts = annotation_counts(
        np.where(sim_mask, sims, model.labels[0]), sim_mask, model.labels
    )
    for key, cc in (("kappa_sim", sim_counts), ("kappa_human", counts)):
        try:
            out[key] = fleiss_kappa(cc)
        except ValueError:
            out[key] = float("nan")
    return out
