"""Figures of the sampler benchmarks (matplotlib, Agg backend; imported lazily by callers)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
from torch import Tensor

from probrec.checks import host_array
from probrec.reporting import mean_and_se

__all__ = ["plot_mog_samples", "plot_histograms", "plot_metric_vs_budget"]


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_mog_samples(
    samples: Mapping[str, Tensor],
    means: Tensor,
    path: str | Path,
    title: str = "",
    limit: float = 50.0,
) -> Path:
    """One scatter panel per sampler with the mixture means marked (2-D targets).

    Args:
        samples: sampler name -> ``n x 2`` samples.
        means: ``K x 2`` component means.
        path: PNG file to write.
    """
    plt = _plt()
    k = len(samples)
    fig, axes = plt.subplots(1, k, figsize=(3.2 * k, 3.3), squeeze=False)
    mu = host_array(means)
    for ax, (name, x) in zip(axes[0], samples.items()):
        xs = host_array(x)
        ax.scatter(xs[:, 0], xs[:, 1], s=1, alpha=0.3, color="tab:blue", rasterized=True)
        ax.scatter(mu[:, 0], mu[:, 1], s=14, marker="x", color="tab:red", linewidths=1)
        ax.set(xlim=(-limit, limit), ylim=(-limit, limit), title=name, xticks=[], yticks=[])
        ax.set_aspect("equal")
    if title:
        fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_histograms(
    values: Mapping[str, Tensor | np.ndarray],
    reference: Tensor | np.ndarray,
    path: str | Path,
    xlabel: str,
    title: str = "",
    bins: int = 100,
) -> Path:
    """Overlaid density histograms of a 1-D statistic per sampler against the reference."""
    plt = _plt()
    ref = host_array(reference).reshape(-1)
    lo, hi = np.quantile(ref, [0.001, 0.999])
    pad = 0.15 * (hi - lo)
    edges = np.linspace(lo - pad, hi + pad, bins + 1)
    fig, ax = plt.subplots(figsize=(5.2, 3.4))
    ax.hist(
        np.clip(ref, edges[0], edges[-1]), bins=edges, density=True, color="0.75", label="reference"
    )
    for name, v in values.items():
        vv = np.clip(host_array(v).reshape(-1), edges[0], edges[-1])
        ax.hist(vv, bins=edges, density=True, histtype="step", linewidth=1.4, label=name)
    ax.set(xlabel=xlabel, ylabel="density", title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_metric_vs_budget(
    rows: Sequence[Mapping[str, Any]],
    metric: str,
    path: str | Path,
    title: str = "",
    floor_metric: str | None = None,
    log_y: bool = True,
) -> Path:
    """Metric (mean +- standard error over seeds) against evaluations per sample, per sampler.

    Args:
        rows: result rows with keys ``sampler``, ``budget``, ``seed`` and ``metric``.
        metric: the key to plot.
        floor_metric: optional key of a noise floor drawn as a dashed line (mean over rows).
    """
    plt = _plt()
    fig, ax = plt.subplots(figsize=(5.2, 3.6))
    names = sorted({r["sampler"] for r in rows if r.get(metric) is not None})
    for name in names:
        by_budget: dict[float, list[float]] = {}
        for r in rows:
            if r["sampler"] == name and r.get(metric) is not None:
                by_budget.setdefault(float(r["budget"]), []).append(float(r[metric]))
        b = np.array(sorted(by_budget))
        stats = [mean_and_se(by_budget[x]) for x in b]
        m = np.array([mean for mean, _ in stats])
        se = np.nan_to_num(np.array([s for _, s in stats]))  # one seed: no band
        ax.errorbar(b, m, yerr=se, marker="o", capsize=3, label=name)
    if floor_metric:
        fl = [float(r[floor_metric]) for r in rows if r.get(floor_metric) is not None]
        if fl:
            ax.axhline(float(np.mean(fl)), color="k", ls="--", lw=1, label="noise floor")
    ax.set_xscale("log")
    if log_y:
        ax.set_yscale("log")
    ax.set(xlabel="target evaluations per sample", ylabel=metric, title=title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    path = Path(path)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
