"""``probrec demo`` section: simulating annotators of a synthetic population.

A seeded population (:func:`probrec.data.synthetic_annotations`) rates items on a 1-5 scale
with item-dependent disagreement and, on some items, two opposed camps, so the true label
distribution ``p(y | x)`` of every item is known. The section fits the conditional integer flow
(independent annotators and with an item latent), the rounded-Gaussian head (the original
approach) and a softmax head on the training items and reports, on held-out items, the NLL of
the individual annotations, the KL divergence from the true distributions, the per-item
standard-deviation RMSE and Fleiss' kappa of simulated annotators next to the humans'.
"""

from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["run_section"]


def run_section(ctx: Any) -> dict[str, Any]:
    """Runs the section (``ctx``: :class:`probrec.demo.DemoContext`); writes ``annotators.png``.

    Quick mode: 300 items and at most 15 epochs (seconds); normal mode: 800 items (about 25 s
    on 2 CPU cores).
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from probrec.data import synthetic_annotations
    from probrec.flows.experiment import MODELS
    from probrec.flows.metrics import evaluate, kl_to_truth

    n_items = 300 if ctx.quick else 800
    epochs = 15 if ctx.quick else 120
    data = synthetic_annotations(n_items, dim=8, seed=ctx.seed)
    train, valid, test = data.split_items((0.6, 0.2, 0.2), seed=ctx.seed)
    names = ["integer_flow", "integer_flow_panel", "gaussian", "softmax"]
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    results: dict[str, Any] = {
        "n_items": n_items,
        "n_annotations": data.n_annotations,
        "models": {},
    }
    true = test.metadata["true_probs"]
    counts = test.counts()
    models = {}
    try:
        for name in names:
            klass, kw, _ = MODELS[name]
            model = klass(
                train.features.shape[1], train.label_values, hidden=(32,), seed=ctx.seed, **kw
            )
            model.fit(
                train.features,
                train.labels,
                train.mask,
                valid=(valid.features, valid.labels, valid.mask),
                epochs=epochs,
                batch_size=32,
                lr=3e-3,
                patience=10,
                seed=ctx.seed,
                progress=ctx.progress,
            )
            res = evaluate(model, test.features, test.labels, test.mask, seed=ctx.seed)
            p = model.predict_proba(test.features, seed=ctx.seed).double().numpy()
            p = p / p.sum(1, keepdims=True)
            res["kl_true"] = kl_to_truth(true, p)
            results["models"][name] = {k: round(float(v), 4) for k, v in res.items()}
            models[name] = (model, p)
    finally:
        torch.set_num_threads(threads)
    oracle = float(-(counts * np.log(np.clip(true, 1e-12, None))).sum() / counts.sum())
    results["oracle_nll"] = round(oracle, 4)
    m = results["models"]
    results["headline"] = (
        f"held-out NLL: integer flow {m['integer_flow']['nll']:.3f}, rounded Gaussian "
        f"{m['gaussian']['nll']:.3f}, softmax {m['softmax']['nll']:.3f} (true p(y|x): "
        f"{oracle:.3f}); kappa of simulated panels {m['integer_flow_panel']['kappa_sim']:.2f} "
        f"vs humans {m['integer_flow']['kappa_human']:.2f}"
    )

    # three held-out items: the most polarised (two camps), a consensus item, a middle one
    v = np.asarray(test.label_values)
    dip = np.array([min(t[0], t[-1]) - t[1:-1].min() for t in true])
    sd = np.sqrt(true @ v**2 - (true @ v) ** 2)
    items = [int(np.argmax(dip)), int(np.argmin(sd)), int(np.argsort(sd)[len(sd) // 2])]
    fig, axes = plt.subplots(1, 3, figsize=(10.5, 3.0))
    width = 0.8 / (len(models) + 1)
    for ax, i in zip(axes, items):
        ax.bar(v - 0.4 + width / 2, true[i], width, color="black", label="true p(y|x)")
        for j, (name, (_, p)) in enumerate(models.items()):
            ax.bar(v - 0.4 + width * (j + 1.5), p[i], width, label=name)
        ax.plot(
            v, counts[i] / counts[i].sum(), "k*", ms=9, label=f"humans (n={int(counts[i].sum())})"
        )
        ax.set(xticks=v, ylim=(0, 1), xlabel="rating", title=f"held-out item {test.item_ids[i]}")
    axes[0].set_ylabel("probability")
    axes[-1].legend(fontsize=7)
    fig.suptitle(
        "Synthetic annotator population: predicted vs true label distributions", fontsize=10
    )
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "annotators.png", dpi=110)
    plt.close(fig)
    results["figure"] = "annotators.png"
    return results
