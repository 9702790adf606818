"""``probrec demo``: an end-to-end tour on embedded data only (no network, no ``../shared``).

The demo runs a list of sections; each is a function ``section(ctx) -> dict`` that may write
figures into ``ctx.out_dir`` and returns JSON-serialisable results. The report is
``report.json`` plus one PNG per section in the output folder, which the demo prints.
Sections register here by import path so that :mod:`probrec` never imports :mod:`metalearn`
or :mod:`samplers` at module level.
"""

from __future__ import annotations

import argparse
import importlib
import json
import platform
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from probrec.argtypes import choice_list, whole

# (name, "module:function", one-line description)
SECTIONS: list[tuple[str, str, str]] = [
    (
        "data",
        "probrec.demo:data_section",
        "embedded ChEMBL assay, featurised, single-task baselines",
    ),
    (
        "fewshot",
        "metalearn.demo:run_section",
        "meta-train ADKF-IFT / DKT on NCI pretext tasks, adapt to ChEMBL",
    ),
    (
        "annotators",
        "probrec.flows.demo:run_section",
        "simulate annotators of a synthetic population: integer flow vs rounded Gaussian, softmax",
    ),
    (
        "samplers",
        "samplers.demo:run_section",
        "MoG-40: DiGS against parallel tempering at equal gradient budget",
    ),
]


@dataclass
class DemoContext:
    """What a demo section gets: where to write, the seed, and whether to show progress."""

    out_dir: Path
    seed: int
    progress: bool | None
    quick: bool


def data_section(ctx: DemoContext) -> dict[str, Any]:
    """Loads the RDKit-shipped ChEMBL assay, featurises it and fits single-task baselines.

    Reports few-shot numbers: for support sizes 16 and 64, a random forest and a
    kNN classifier fitted on the support set, scored by delta-AUPRC on the query set.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np
    from sklearn.ensemble import RandomForestClassifier
    from sklearn.metrics import average_precision_score
    from sklearn.neighbors import KNeighborsClassifier

    from probrec.data import MoleculeFeaturizer, load_rdkit_chembl_assay, sample_episode
    from probrec.reporting import mean_and_se

    reg = load_rdkit_chembl_assay("regression")
    task = load_rdkit_chembl_assay("classification")
    feat = MoleculeFeaturizer(descriptors=False, progress=ctx.progress)
    x = feat.fit_transform(list(task.inputs))
    task = task.with_inputs(x)
    results: dict[str, Any] = {
        "task": task.name,
        "n_molecules": len(task),
        "n_features": int(x.shape[1]),
        "threshold": task.metadata["threshold"],
        "delta_auprc": {},
    }
    n_rep = 3 if ctx.quick else 10
    for size in (16, 64):
        scores: dict[str, list[float]] = {"random_forest": [], "knn": []}
        for rep in range(n_rep):
            ep = sample_episode(task, size, seed=ctx.seed + rep)
            base = float(ep.query_y.mean())
            models = {
                "random_forest": RandomForestClassifier(200, random_state=rep, n_jobs=1),
                "knn": KNeighborsClassifier(min(5, size // 2)),
            }
            for name, m in models.items():
                m.fit(ep.support_x, ep.support_y)
                p = m.predict_proba(ep.query_x)[:, 1]
                scores[name].append(average_precision_score(ep.query_y, p) - base)
        results["delta_auprc"][str(size)] = {
            k: dict(zip(("mean", "se"), mean_and_se(v))) for k, v in scores.items()
        }
    fig, ax = plt.subplots(1, 2, figsize=(9, 3.2))
    ax[0].hist(reg.labels, bins=40, color="tab:blue")
    ax[0].axvline(results["threshold"], color="k", ls="--", label="threshold (median)")
    ax[0].set(xlabel="activity (pIC50)", ylabel="molecules", title=task.name)
    ax[0].legend()
    u, s, _ = np.linalg.svd(x - x.mean(0), full_matrices=False)
    ax[1].scatter(u[:, 0] * s[0], u[:, 1] * s[1], c=reg.labels, s=4, cmap="viridis")
    ax[1].set(title="Morgan counts, first two PCs", xticks=[], yticks=[])
    fig.tight_layout()
    fig.savefig(ctx.out_dir / "data.png", dpi=110)
    plt.close(fig)
    results["figure"] = "data.png"
    return results


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", default="probrec-demo", help="output folder (created)")
    parser.add_argument("--seed", type=whole(0), default=0, help="seed (default: 0)")
    parser.add_argument("--quick", action="store_true", help="smaller settings (for tests)")
    parser.add_argument(
        "--sections",
        type=choice_list([n for n, _, _ in SECTIONS]),
        default=[n for n, _, _ in SECTIONS],
        help=f"comma-separated subset of: {', '.join(n for n, _, _ in SECTIONS)}",
    )
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    parser.add_argument(
        "--threads",
        type=whole(1),
        default=None,
        help="torch CPU threads (default: torch's; 1 is faster on a machine busy with other jobs)",
    )


def run(args: argparse.Namespace) -> int:
    import torch

    from probrec.reporting import json_safe
    from probrec.runrecord import code_version

    wanted = args.sections
    if isinstance(wanted, str):  # code calling run() directly
        try:
            wanted = choice_list([n for n, _, _ in SECTIONS])(wanted)
        except argparse.ArgumentTypeError as exc:
            raise ValueError(f"--sections: {exc}") from None
    if args.seed < 0:
        raise ValueError(f"--seed must be >= 0 (NumPy seeds are non-negative), got {args.seed}")
    threads = getattr(args, "threads", None)
    if threads is not None:
        if threads < 1:
            raise ValueError(f"--threads must be a positive number of threads, got {threads}")
        torch.set_num_threads(threads)
    out = Path(args.out).resolve()
    out.mkdir(parents=True, exist_ok=True)
    ctx = DemoContext(out, args.seed, False if args.no_progress else True, args.quick)
    report: dict[str, Any] = {
        **code_version(),  # probrec version and git commit
        "python": platform.python_version(),
        "torch": torch.__version__,
        "seed": args.seed,
        "quick": args.quick,
        "sections": {},
    }
    print(f"probrec demo: writing the report to {out}")
    t_all = time.perf_counter()
    for i, (name, target, desc) in enumerate(s for s in SECTIONS if s[0] in wanted):
        print(f"[{i + 1}/{len(wanted)}] {name}: {desc}", flush=True)
        module, func = target.split(":")
        t = time.perf_counter()
        res = getattr(importlib.import_module(module), func)(ctx)
        res["seconds"] = round(time.perf_counter() - t, 2)
        report["sections"][name] = res
        print(f"    done in {res['seconds']:.1f} s: {_summary(res)}", flush=True)
        (out / "report.json").write_text(json.dumps(json_safe(report), indent=2))
    report["seconds"] = round(time.perf_counter() - t_all, 2)
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=2))
    print(f"report: {out / 'report.json'} (+ PNG figures) in {report['seconds']:.0f} s")
    return 0


def _summary(res: dict[str, Any]) -> str:
    """One line of the headline numbers of a section."""
    head = res.get("headline")
    if head:
        return str(head)
    return ", ".join(f"{k}={v}" for k, v in res.items() if isinstance(v, (int, float, str)))[:200]
