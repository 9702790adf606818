"""Out-of-domain prediction and Bayesian optimisation on frozen meta-learned molecular features.

Feature extractors meta-trained on ToxCast (ADKF-IFT and DKT) are frozen and reused on three
regression sets from other domains (COVID Moonshot: pIC50; DOCKSTRING: ESR2 docking score;
Harvard CEP: power conversion efficiency), with a GP head whose hyperparameters are fitted on
the molecules observed. Baselines: a GP with a Tanimoto kernel on Morgan count fingerprints and
a random forest on the same fingerprints (and random search for optimisation). Protocol of
Chen, Tripp & Hernandez-Lobato (ICLR 2023, Section 5.3).

    python examples/molecular_bo.py --out runs/molecular_bo          # default, ~10 min, 2 cores
    python examples/molecular_bo.py --out runs/molecular_bo --full   # 100 / 20 repeats

Meta-trained learners and the fitted featurizer are saved under ``<out>/models`` and reused by
later runs (``--models`` points at another run's folder).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from probrec.reporting import mean_and_se

# data set -> (sign that turns the label into an objective to maximise, objective's name)
GOALS = {
    "covid_moonshot": (-1.0, "pIC50"),  # label: negated pIC50
    "dockstring_esr2": (-1.0, "-docking score"),  # label: ESR2 docking score (lower binds)
    "cep_pce": (1.0, "PCE"),
}
DEEP = ("ADKF-IFT", "DKT")


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        default="../shared/data/molecules/moleculenet/toxcast_500.csv.gz",
        help="meta-training tasks (wide MoleculeNet CSV)",
    )
    p.add_argument("--root", default="../shared/data", help="folder holding molecules/ood/")
    p.add_argument("--datasets", default=",".join(GOALS), help="out-of-domain sets")
    p.add_argument("--out", default="runs/molecular_bo", help="output folder")
    p.add_argument("--models", default=None, help="folder of saved learners (default <out>/models)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--n-valid", type=int, default=30, help="ToxCast validation assays")
    p.add_argument("--n-test", type=int, default=100, help="ToxCast assays held out of training")
    p.add_argument("--steps", type=int, default=None, help="meta-training steps (preset default)")
    p.add_argument("--sizes", default="32,64", help="training-set sizes for prediction")
    p.add_argument("--pred-repeats", type=int, default=None, help="default 20 (--full: 100)")
    p.add_argument("--bo-repeats", type=int, default=None, help="default 4 (--full: 20)")
    p.add_argument("--n-init", type=int, default=16)
    p.add_argument("--n-iter", type=int, default=30)
    p.add_argument("--full", action="store_true", help="the paper's numbers of repeats")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    unknown = [d for d in args.datasets.split(",") if d not in GOALS]
    if unknown:
        p.error(f"unknown --datasets {unknown}; choose from {list(GOALS)}")
    args.pred_repeats = args.pred_repeats or (100 if args.full else 20)
    args.bo_repeats = args.bo_repeats or (20 if args.full else 4)
    return args


def meta_trained(args: argparse.Namespace, out: Path, progress):
    """ADKF-IFT and DKT meta-trained on ToxCast (loaded if saved) and the fitted featurizer."""
    import metalearn
    from metalearn.training import preset
    from probrec.data import MoleculeFeaturizer, featurize_tasks, load_moleculenet, split_tasks

    folder = Path(args.models) if args.models else out / "models"
    feat_path = folder / "featurizer.json"
    paths = {name: folder / f"{name}.pt" for name in DEEP}
    if feat_path.exists() and all(p.exists() for p in paths.values()):
        feat = MoleculeFeaturizer.from_state_dict(json.loads(feat_path.read_text()))
        learners = {n: metalearn.MetaLearner.load(p, device=args.device) for n, p in paths.items()}
        print(f"loaded {', '.join(learners)} and the featurizer from {folder}")
        return learners, feat, {}
    tasks = load_moleculenet(args.data)
    n_train = len(tasks) - args.n_valid - args.n_test
    train, valid, _ = split_tasks(tasks, (n_train, args.n_valid, args.n_test), seed=args.seed)
    feat = MoleculeFeaturizer(progress=progress)
    feats = featurize_tasks(list(train) + list(valid), feat, fit_on=train)
    train_f, valid_f = feats[: len(train)], feats[len(train) :]
    config = preset("cpu", args.steps)
    classes = {"ADKF-IFT": metalearn.ADKFIFT, "DKT": metalearn.DKT}
    learners, seconds = {}, {}
    for name in DEEP:
        m = classes[name](seed=args.seed, device=args.device, **config)
        t0 = time.perf_counter()
        m.meta_fit(train_f, valid_f, checkpoint_dir=out / "checkpoints" / name, progress=progress)
        seconds[name] = time.perf_counter() - t0
        m.save(paths[name])
        learners[name] = m
        print(f"  {name}: meta-trained on {len(train)} ToxCast assays in {seconds[name]:.0f} s")
    feat_path.write_text(json.dumps(feat.state_dict()))
    return learners, feat, seconds


def markdown_table(rows: dict[str, dict[str, str]], first: str) -> str:
    cols = list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(v[c] for c in cols) + " |" for k, v in rows.items()]
    return "\n".join(lines)


def plot_bo(curves: dict[str, np.ndarray], title: str, ylabel: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(5.5, 4))
    for name, v in curves.items():
        stats = [mean_and_se(c) for c in v.T]  # per iteration, over the repeats
        mean = np.array([m for m, _ in stats])
        se = np.nan_to_num(np.array([s for _, s in stats]))  # one repeat: no band
        it = np.arange(len(mean))
        ax.plot(it, mean, label=name, ls="--" if name == "random" else "-")
        ax.fill_between(it, mean - se, mean + se, alpha=0.2)
    ax.set_xlabel("iteration (after 16 random molecules)")
    ax.set_ylabel(f"best {ylabel} found (mean +- s.e.)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    from metalearn.metrics import json_safe, mean_and_se
    from metalearn.ood import default_surrogates, optimise_out_of_domain, predict_out_of_domain
    from probrec.data import load_regression_set

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = False if args.no_progress else None
    t_start = time.perf_counter()
    learners, feat, train_seconds = meta_trained(args, out, progress)
    surrogates = default_surrogates(DEEP)
    sizes = [int(s) for s in args.sizes.split(",")]
    report: dict = {"args": vars(args), "train_seconds": train_seconds, "datasets": {}}
    pred_rows: dict[str, dict[str, str]] = {s.name: {} for s in surrogates}
    bo_rows: dict[str, dict[str, str]] = {s.name: {} for s in surrogates}
    bo_rows["random"] = {}
    for name in args.datasets.split(","):
        task = load_regression_set(name, args.root)
        x = feat.transform(list(task.inputs))
        inputs = {"fingerprint": torch.as_tensor(x[:, : feat.n_bits], dtype=torch.float64)}
        for deep, learner in learners.items():
            inputs[deep] = learner.encode(x).to(torch.float64).cpu()
        y = np.asarray(task.labels, dtype=np.float64)
        entry: dict = {"n": len(y), "prediction": {}, "bo": {}}
        for n_train in sizes:
            t0 = time.perf_counter()
            res = predict_out_of_domain(
                inputs,
                y,
                surrogates,
                n_train=n_train,
                repeats=args.pred_repeats,
                seed=args.seed,
                progress=progress,
            )
            secs = time.perf_counter() - t0
            print(f"{name}: prediction with {n_train} molecules in {secs:.0f} s")
            for s, metrics in res.items():
                r2, r2_se = mean_and_se(metrics["r2"])
                nll, nll_se = mean_and_se(metrics["nll"])
                entry["prediction"][f"{s}@{n_train}"] = {
                    "r2": [r2, r2_se],
                    "nll": [nll, nll_se],
                    "r2_per_repeat": metrics["r2"].tolist(),
                    "nll_per_repeat": metrics["nll"].tolist(),
                }
                pred_rows[s][f"{name} R2 @{n_train}"] = f"{r2:.3f} +- {r2_se:.3f}"
                pred_rows[s][f"{name} NLL @{n_train}"] = f"{nll:.3f} +- {nll_se:.3f}"
        sign, label = GOALS[name]
        t0 = time.perf_counter()
        curves = optimise_out_of_domain(
            inputs,
            sign * y,
            surrogates,
            n_init=args.n_init,
            n_iter=args.n_iter,
            repeats=args.bo_repeats,
            seed=args.seed,
            progress=progress,
        )
        print(f"{name}: Bayesian optimisation in {time.perf_counter() - t0:.0f} s")
        best_possible = float((sign * y).max())
        entry["bo"] = {"objective": label, "pool_best": best_possible}
        for s, v in curves.items():
            m, se = mean_and_se(v[:, -1])
            entry["bo"][s] = {"final": [m, se], "curves": v.tolist()}
            bo_rows[s][f"{name} ({label}; pool best {best_possible:.2f})"] = f"{m:.3f} +- {se:.3f}"
        plot_bo(curves, name, label, out / f"bo_{name}.png")
        report["datasets"][name] = entry
    md_pred = markdown_table(pred_rows, "model")
    md_bo = markdown_table(bo_rows, f"best after {args.n_iter} iterations")
    print(f"\n## Out-of-domain prediction ({args.pred_repeats} repeats)\n\n{md_pred}")
    print(f"\n## Bayesian optimisation ({args.bo_repeats} repeats)\n\n{md_bo}")
    (out / "prediction.md").write_text(md_pred + "\n")
    (out / "bo.md").write_text(md_bo + "\n")
    report["seconds"] = time.perf_counter() - t_start
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=1))
    print(f"\ntotal {report['seconds'] / 60:.1f} min; results in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
