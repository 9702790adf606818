"""Few-shot section of ``probrec demo``: meta-train on an embedded task family, adapt to ChEMBL.

Meta-training tasks are built from the NCI molecules shipped with RDKit
(:func:`~probrec.data.descriptor_tasks`: thresholded combinations of RDKit descriptors, with
Morgan count fingerprints as inputs). ADKF-IFT and DKT are meta-trained briefly on them, then
adapted to the real ChEMBL assay shipped with RDKit (CHEMBL2321810, active = pIC50 above the
median) with support sets of 16 and 64, against a Tanimoto GP and a random forest fitted per
task. Reports delta-AUPRC (mean +- s.e. over support sets) and a PNG.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def run_section(ctx: Any) -> dict[str, Any]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import torch

    from metalearn import ADKFIFT, DKT, GPST, RandomForest
    from metalearn.metrics import delta_auprc, mean_and_se
    from probrec.data import (
        MoleculeFeaturizer,
        descriptor_tasks,
        featurize_tasks,
        load_nci_smiles,
        load_rdkit_chembl_assay,
        sample_episode,
        split_tasks,
    )

    torch.manual_seed(ctx.seed)
    n_mol, n_tasks, steps = (800, 40, 40) if ctx.quick else (2500, 150, 250)
    family = descriptor_tasks(load_nci_smiles(n_mol), n_tasks, 96, seed=ctx.seed)
    chembl = load_rdkit_chembl_assay("classification")
    fp = MoleculeFeaturizer(descriptors=False, count_transform="log1p", progress=False)
    feats = featurize_tasks(list(family) + [chembl], fp, fit_on=list(family))
    train, valid, _ = split_tasks(feats[:-1], (0.85, 0.15, 0.0), seed=ctx.seed)
    target = feats[-1]
    cfg = dict(
        hidden=(256,),
        out_dim=64,
        n_steps=steps,
        batch_size=8,
        support_size=16,
        query_size=48,
        lr=1e-3,
        eval_every=max(steps // 5, 1),
        valid_support_size=16,
        valid_seeds=1,
    )
    learners = {
        "ADKF-IFT": ADKFIFT(seed=ctx.seed, **cfg),
        "DKT": DKT(seed=ctx.seed, **cfg),
        "GP-ST (Tanimoto)": GPST(seed=ctx.seed),
        "random forest": RandomForest(seed=ctx.seed, n_estimators=100),
    }
    for m in learners.values():
        m.meta_fit(train, valid, progress=ctx.progress)
    n_rep = 3 if ctx.quick else 8
    sizes = (16, 64)
    scores: dict[str, dict[int, list[float]]] = {k: {s: [] for s in sizes} for k in learners}
    for size in sizes:
        for rep in range(n_rep):
            ep = sample_episode(target, size, seed=ctx.seed + rep)
            for name, m in learners.items():
                p = m.adapt(ep.support_x, ep.support_y).predict_proba(ep.query_x)
                scores[name][size].append(delta_auprc(ep.query_y, np.asarray(p, dtype=float)))
    table = {
        k: {str(s): dict(zip(("mean", "se"), mean_and_se(v[s]))) for s in sizes}
        for k, v in scores.items()
    }
    fig, ax = plt.subplots(figsize=(6, 3.5))
    width = 0.8 / len(learners)
    for i, (name, d) in enumerate(table.items()):
        xs = np.arange(len(sizes)) + i * width
        ax.bar(
            xs,
            [d[str(s)]["mean"] for s in sizes],
            width,
            yerr=[d[str(s)]["se"] for s in sizes],
            capsize=3,
            label=name,
        )
    ax.set_xticks(np.arange(len(sizes)) + 0.4 - width / 2, [f"support {s}" for s in sizes])
    ax.set(
        ylabel="delta-AUPRC",
        title=f"{target.name}: few-shot after meta-training on NCI pretext tasks",
    )
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "fewshot.png", dpi=110)
    plt.close(fig)
    best = max(table, key=lambda k: table[k]["16"]["mean"])
    return {
        "meta_train_tasks": len(train),
        "meta_train_steps": steps,
        "target": target.name,
        "delta_auprc": table,
        "figure": "fewshot.png",
        "headline": "support 16 delta-AUPRC: "
        + ", ".join(f"{k} {v['16']['mean']:.3f}" for k, v in table.items())
        + f" (best: {best})",
    }
