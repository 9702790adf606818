"""Train-and-evaluate helpers shared by ``examples/annotators.py`` and the demo section.

:data:`MODELS` names every annotator simulator of :mod:`probrec.flows`;
:func:`compare_models` fits the chosen ones on a training split (early stopping on a
validation split) and scores them on held-out items with :func:`probrec.flows.metrics.evaluate`;
:func:`summarise` turns repeats over seeds into mean and standard error;
:func:`format_table` prints them; :func:`plot_histograms` draws predicted against human label
histograms for a few held-out items.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probrec.data.annotations import AnnotationSet
from probrec.flows.base import DEFAULT_DROPOUT, AnnotatorModel
from probrec.flows.baselines import (
    DeepEnsemble,
    GaussianHead,
    MCDropoutHead,
    OrdinalLogisticHead,
    SoftmaxHead,
)
from probrec.flows.ensemble import ModelEnsemble
from probrec.flows.integer import ConditionalIntegerFlow
from probrec.flows.metrics import evaluate
from probrec.flows.softmax import ConditionalSoftmaxFlow
from probrec.reporting import format_mean_se, mean_se_summary

__all__ = [
    "METRICS",
    "MODELS",
    "compare_models",
    "comparison_table",
    "format_table",
    "paired_difference",
    "plot_histograms",
    "summarise",
]

#: model name -> (class, constructor arguments, description)
MODELS: dict[str, tuple[type[AnnotatorModel], dict[str, Any], str]] = {
    "integer_flow": (
        ConditionalIntegerFlow,
        {},
        "conditional integer flow, annotators independent given x",
    ),
    "integer_flow_panel": (
        ConditionalIntegerFlow,
        {"item_latent": 1, "quadrature": 32},
        "conditional integer flow with a 1-d item latent (panels; 32-node Gauss-Hermite)",
    ),
    "softmax_flow": (
        ConditionalSoftmaxFlow,
        {"latent": "annotation"},
        "conditional softmax flow, one latent per annotation (as in HAS)",
    ),
    "softmax_flow_panel": (
        ConditionalSoftmaxFlow,
        {"latent": "item"},
        "conditional softmax flow, one latent per item (panels)",
    ),
    "integer_flow_panel_x5": (
        ModelEnsemble,
        {"model": "ConditionalIntegerFlow", "members": 5, "item_latent": 1, "quadrature": 32},
        "ensemble of 5 integer flows with item latents (one member per simulated panel)",
    ),
    "softmax_flow_panel_x5": (
        ModelEnsemble,
        {"model": "ConditionalSoftmaxFlow", "members": 5, "latent": "item"},
        "ensemble of 5 softmax flows with item latents (one member per simulated panel)",
    ),
    "gaussian": (GaussianHead, {}, "Gaussian head, density-trained, rounded (original base)"),
    "gaussian_discretised": (
        GaussianHead,
        {"objective": "discretised"},
        "Gaussian head trained on its discretised (rounded) probabilities",
    ),
    "gaussian_x5": (
        ModelEnsemble,
        {"model": "GaussianHead", "members": 5},
        "ensemble of 5 rounded Gaussian heads (one member per simulated panel)",
    ),
    "gaussian_discretised_x5": (
        ModelEnsemble,
        {"model": "GaussianHead", "members": 5, "objective": "discretised"},
        "ensemble of 5 discretised-likelihood Gaussian heads (one member per simulated panel)",
    ),
    "ordinal_logistic": (OrdinalLogisticHead, {}, "ordinal-logistic (cumulative link) head"),
    "softmax": (SoftmaxHead, {}, "softmax head on all individual annotations"),
    "ensemble": (DeepEnsemble, {}, "deep ensemble of 5 softmax heads (one member per panel)"),
    "mc_dropout": (MCDropoutHead, {}, "softmax head with MC dropout (50 passes)"),
}

#: metric -> (label, lower is better)
METRICS: dict[str, tuple[str, bool]] = {
    "nll": ("NLL", True),
    "nll_item": ("NLL (item avg.)", True),
    "nll_panel": ("NLL (panel)", True),
    "mean_rmse": ("RMSE mean", True),
    "std_rmse": ("RMSE std", True),
    "std_rmse_panel": ("RMSE std (panel)", True),
    "std_bias": ("mean std - human", False),
    "w1": ("W1", True),
    "accuracy": ("acc. (majority)", False),
    "kappa_sim": ("kappa sim.", False),
}


def _check_split(data: AnnotationSet, name: str) -> np.ndarray:
    if not isinstance(data, AnnotationSet):
        raise TypeError(f"{name} must be an AnnotationSet, got {type(data).__name__}")
    if data.features is None:
        raise ValueError(f"{name} has no features; attach them with with_features()")
    return np.asarray(data.features, dtype=np.float32)


def compare_models(
    train: AnnotationSet,
    valid: AnnotationSet,
    test: AnnotationSet,
    *,
    models: Sequence[str] = tuple(MODELS),
    seed: int = 0,
    common_kwargs: dict[str, Any] | None = None,
    model_kwargs: dict[str, dict[str, Any]] | None = None,
    fit_kwargs: dict[str, Any] | None = None,
    model_fit_kwargs: dict[str, dict[str, Any]] | None = None,
    device: str | None = None,
    progress: bool | None = None,
    keep_models: bool = False,
    score: bool = True,
    callback: Callable[[str, dict[str, float]], None] | None = None,
) -> dict[str, dict[str, Any]]:
    """Fits and scores annotator simulators on one split.

    Args:
        train: training items (with ``features``).
        valid: validation items (early stopping).
        test: held-out items.
        models: names from :data:`MODELS`.
        seed: seed of every model's initialisation, training and evaluation.
        common_kwargs: constructor arguments for every model (e.g. ``hidden``, ``dropout``;
            MC dropout keeps a dropout of at least 0.25; without one, every model takes the
            library default ``DEFAULT_DROPOUT``).
        model_kwargs: per-model constructor overrides, by name.
        fit_kwargs: :meth:`AnnotatorModel.fit` options for every model.
        model_fit_kwargs: per-model overrides of ``fit_kwargs`` (e.g. ``input_dropout``), by
            name.
        device: torch device (default CPU).
        progress: progress bars.
        keep_models: also return the fitted models (key ``"model"``).
        score: score the models on ``test`` with :func:`probrec.flows.metrics.evaluate`;
            ``False`` only fits them (for callers that score the models themselves, e.g.
            against known true distributions, with ``keep_models=True``).
        callback: called with ``(name, metrics)`` after each model.

    Returns:
        name -> metrics of :func:`probrec.flows.metrics.evaluate` (with ``score``) plus
        ``fit_seconds`` and ``epochs``.
    """
    xtr, xva, xte = (
        _check_split(d, n) for d, n in ((train, "train"), (valid, "valid"), (test, "test"))
    )
    unknown = [m for m in models if m not in MODELS]
    if unknown:
        raise ValueError(f"unknown models {unknown}; expected names from {sorted(MODELS)}")
    out: dict[str, dict[str, Any]] = {}
    for name in models:
        klass, defaults, _ = MODELS[name]
        kw = {**(common_kwargs or {}), **defaults, **(model_kwargs or {}).get(name, {})}
        if klass is MCDropoutHead:
            kw["dropout"] = max(kw.get("dropout", DEFAULT_DROPOUT), 0.25)
        model = klass(xtr.shape[1], train.label_values, seed=seed, **kw)
        if device is not None:
            model.to(device)
        t0 = time.perf_counter()
        model.fit(
            xtr,
            train.labels,
            train.mask,
            valid=(xva, valid.labels, valid.mask),
            seed=seed,
            progress=progress,
            **{**(fit_kwargs or {}), **(model_fit_kwargs or {}).get(name, {})},
        )
        fit_s = time.perf_counter() - t0
        res: dict[str, Any] = (
            evaluate(model, xte, test.labels, test.mask, seed=seed) if score else {}
        )
        res["fit_seconds"] = fit_s
        res["epochs"] = len(model.history)
        if keep_models:
            res["model"] = model
        out[name] = res
        if callback is not None:
            callback(name, res)
    return out


def summarise(runs: Sequence[dict[str, dict[str, Any]]]) -> dict[str, dict[str, dict[str, float]]]:
    """Mean and standard error over repeats (``s.e. = sd / sqrt(r)``, ``ddof = 1``).

    Args:
        runs: one :func:`compare_models` result per seed.

    Returns:
        name -> metric -> ``{"mean", "se", "n"}`` (``se`` NaN with one repeat: undefined).
    """
    if not runs:
        raise ValueError("runs is empty")
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name in runs[0]:
        out[name] = {}
        for key, val in runs[0][name].items():
            if not isinstance(val, (int, float)):
                continue
            out[name][key] = mean_se_summary([r[name][key] for r in runs if name in r])
    return out


def paired_difference(
    runs: Sequence[dict[str, dict[str, Any]]], model: str, baseline: str, metric: str
) -> dict[str, float]:
    """``metric(model) - metric(baseline)`` per seed (same split), mean and standard error.

    Pairing removes the between-split variation that dominates the per-model standard errors,
    so this is the statistic for "does ``model`` beat ``baseline``".
    """
    diffs = np.array(
        [r[model][metric] - r[baseline][metric] for r in runs if model in r and baseline in r],
        dtype=float,
    )
    if diffs.size == 0:
        raise ValueError(f"no run has both {model!r} and {baseline!r}")
    return mean_se_summary(diffs)


def comparison_table(
    runs: Sequence[dict[str, dict[str, Any]]],
    pairs: Sequence[tuple[str, str]],
    metrics: Sequence[str] = ("nll", "std_rmse", "std_rmse_panel"),
    digits: int = 3,
) -> str:
    """Markdown table of paired differences (model - baseline; negative is better)."""
    lines = [
        "| model - baseline | " + " | ".join(METRICS[m][0] for m in metrics) + " |",
        "|---|" + "---|" * len(metrics),
    ]
    for a, b in pairs:
        cells = []
        for m in metrics:
            d = paired_difference(runs, a, b, m)
            cells.append(_cell(d, digits, signed=True))
        lines.append(f"| {a} - {b} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def _cell(stat: dict[str, float], digits: int, *, signed: bool = False) -> str:
    """``mean ± se`` of a :func:`summarise` / :func:`paired_difference` entry; the mean alone
    where the standard error is undefined (one repeat)."""
    return format_mean_se(stat, f".{digits}f", signed=signed, sep=" ± ")


def format_table(
    summary: dict[str, dict[str, dict[str, float]]],
    *,
    title: str = "",
    metrics: Sequence[str] = tuple(METRICS),
    digits: int = 3,
) -> str:
    """A markdown table of ``mean +- s.e.``; the human kappa is appended to the kappa header."""
    names = list(summary)
    head = []
    for m in metrics:
        label = METRICS[m][0] if m in METRICS else m
        if m == "kappa_sim" and names and "kappa_human" in summary[names[0]]:
            label += f" (human {summary[names[0]]['kappa_human']['mean']:.3f})"
        head.append(label)
    lines = []
    if title:
        lines.append(f"**{title}**\n")
    lines.append("| model | " + " | ".join(head) + " |")
    lines.append("|---|" + "---|" * len(metrics))
    for n in names:
        cells = []
        for m in metrics:
            s = summary[n].get(m)
            cells.append("-" if s is None else _cell(s, digits))
        lines.append(f"| {n} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def plot_histograms(
    models: dict[str, AnnotatorModel],
    test: AnnotationSet,
    items: Sequence[int],
    path: str | Path,
    *,
    title: str = "",
    n_simulated: int = 0,
    seed: int = 0,
) -> Path:
    """Bar charts of predicted label distributions against the human label histogram.

    Args:
        models: name -> fitted model.
        test: the held-out items (with features).
        items: positions in ``test`` to draw (one panel each).
        path: PNG to write.
        title: figure title.
        n_simulated: if > 0, also show the histogram of that many simulated annotations of
            the first model.
        seed: seed of the simulated annotations.

    Returns:
        The path written.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = _check_split(test, "test")[list(items)]
    counts = test.counts()[list(items)]
    values = np.asarray(test.label_values)
    probs = {n: m.predict_proba(x, seed=seed).double().cpu().numpy() for n, m in models.items()}
    sims = None
    if n_simulated > 0 and models:
        first = next(iter(models))
        sims = models[first].sample(x, n_simulated, seed=seed).cpu().numpy()
    fig, axes = plt.subplots(1, len(items), figsize=(3.2 * len(items), 2.9), squeeze=False)
    k = len(models) + 1 + (sims is not None)
    width = 0.8 / k
    for j, ax in enumerate(axes[0]):
        human = counts[j] / counts[j].sum()
        ax.bar(
            values - 0.4 + width / 2,
            human,
            width,
            color="black",
            label=f"humans (n={int(counts[j].sum())})",
        )
        for i, (n, p) in enumerate(probs.items()):
            ax.bar(values - 0.4 + width * (i + 1.5), p[j] / p[j].sum(), width, label=n)
        if sims is not None:
            h = (sims[:, j][:, None] == values[None, :]).mean(0)
            ax.bar(
                values - 0.4 + width * (k - 0.5),
                h,
                width,
                color="0.7",
                hatch="//",
                label=f"{next(iter(models))}: {n_simulated} simulated",
            )
        ax.set_xticks(values)
        ax.set_ylim(0, 1)
        ax.set_title(f"item {test.item_ids[items[j]]}", fontsize=9)
        ax.set_xlabel("label")
    axes[0][0].set_ylabel("probability")
    axes[0][-1].legend(fontsize=7, loc="upper right")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
