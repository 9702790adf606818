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
later runs (``--models`` points at another run's folder) that have the same ``--data``,
``--seed``, ``--n-valid``, ``--n-test`` and ``--steps``, recorded in ``<models>/run_options.json``
(with others a run stops before loading anything: use another ``--out``, or delete the folder).
Meta-training checkpoints (``<out>/checkpoints``) are resumed under the same rule (``--steps``
may grow there).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from probrec.argtypes import choice_list, existing_path, int_list, torch_device, whole
from probrec.reporting import format_mean_se, mean_and_se, mean_se_summary
from probrec.runrecord import (
    META_TRAINING_OPTION_NAMES,
    RECORD,
    check_run_record,
    meta_training_options,
    write_run_record,
)

# data set -> (sign that turns the label into an objective to maximise, objective's name)
GOALS = {
    "covid_moonshot": (-1.0, "pIC50"),  # label: negated pIC50
    "dockstring_esr2": (-1.0, "-docking score"),  # label: ESR2 docking score (lower binds)
    "cep_pce": (1.0, "PCE"),
}
DEEP = ("ADKF-IFT", "DKT")
DEFAULT_ROOT = Path(__file__).resolve().parents[1].parent / "shared/data"
OPTION_OF = META_TRAINING_OPTION_NAMES


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument(
        "--data",
        type=existing_path("file"),
        default=str(DEFAULT_ROOT / "molecules/moleculenet/toxcast_500.csv.gz"),
        help="meta-training tasks (wide MoleculeNet CSV)",
    )
    p.add_argument(
        "--root",
        type=existing_path("dir"),
        default=str(DEFAULT_ROOT),
        help="folder holding molecules/ood/",
    )
    p.add_argument(
        "--datasets", type=choice_list(GOALS), default=",".join(GOALS), help="out-of-domain sets"
    )
    p.add_argument("--out", default="runs/molecular_bo", help="output folder")
    p.add_argument("--models", default=None, help="folder of saved learners (default <out>/models)")
    p.add_argument("--seed", type=whole(0), default=0)
    p.add_argument("--n-valid", type=whole(1), default=30, help="ToxCast validation assays")
    p.add_argument(
        "--n-test", type=whole(1), default=100, help="ToxCast assays held out of training"
    )
    p.add_argument(
        "--steps", type=whole(1), default=None, help="meta-training steps (preset default)"
    )
    p.add_argument(
        "--sizes", type=int_list(2), default="32,64", help="training-set sizes for prediction"
    )
    p.add_argument("--pred-repeats", type=whole(1), default=None, help="default 20 (--full: 100)")
    p.add_argument("--bo-repeats", type=whole(1), default=None, help="default 4 (--full: 20)")
    p.add_argument("--n-init", type=whole(1), default=16)
    p.add_argument("--n-iter", type=whole(1), default=30)
    p.add_argument("--full", action="store_true", help="the paper's numbers of repeats")
    p.add_argument(
        "--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--threads", type=whole(1), default=None, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.data, args.root = str(args.data), str(args.root)
    if args.pred_repeats is None:
        args.pred_repeats = 100 if args.full else 20
    if args.bo_repeats is None:
        args.bo_repeats = 20 if args.full else 4
    return args


def run_options(args: argparse.Namespace) -> dict:
    """The options that determine the ToxCast split and the meta-trained models (what the
    saved models and the checkpoints were trained with), in JSON form."""
    from metalearn.training import preset

    config = preset("cpu", args.steps)
    return meta_training_options(
        args.data, seed=args.seed, n_valid=args.n_valid, n_test=args.n_test, config=config
    )


def check_reuse(folder: Path, options: dict, state: list[Path], resumable=()) -> None:
    """Stops (``SystemExit``) if ``state`` (files of ``folder`` a run would reuse) was written
    with other ``options`` than ``folder/run_options.json`` records, or without that record
    (:func:`probrec.runrecord.check_run_record`)."""
    try:
        check_run_record(folder, options, state, resumable=resumable, option_names=OPTION_OF,
                         ignore=("data",))  # fmt: skip
    except ValueError as exc:
        raise SystemExit(str(exc)) from None


def models_folder(args: argparse.Namespace, out: Path) -> Path:
    return Path(args.models) if args.models else out / "models"


def check_saved(args: argparse.Namespace, out: Path, options: dict) -> bool:
    """Whether complete saved models will be loaded; stops (``SystemExit``) before any work if
    the saved models or the checkpoints to resume were trained with other options."""
    folder = models_folder(args, out)
    saved = [folder / "featurizer.json", *(folder / f"{name}.pt" for name in DEEP)]
    if all(p.exists() for p in saved):
        check_reuse(folder, options, saved)
        return True
    ckpts = out / "checkpoints"
    state = sorted(ckpts.glob("*/last.pt")) if ckpts.is_dir() else []
    check_reuse(ckpts, options, state, resumable=("steps",))
    return False


def meta_trained(args: argparse.Namespace, out: Path, progress, options: dict, saved: bool):
    """ADKF-IFT and DKT meta-trained on ToxCast (loaded if ``saved``, see :func:`check_saved`)
    and the fitted featurizer."""
    import metalearn
    from metalearn.training import preset
    from probrec.data import MoleculeFeaturizer, featurize_tasks, load_moleculenet, split_tasks

    folder = models_folder(args, out)
    feat_path = folder / "featurizer.json"
    paths = {name: folder / f"{name}.pt" for name in DEEP}
    if saved:
        feat = MoleculeFeaturizer.from_state_dict(json.loads(feat_path.read_text()))
        learners = {n: metalearn.MetaLearner.load(p, device=args.device) for n, p in paths.items()}
        print(f"loaded {', '.join(learners)} and the featurizer from {folder}")
        return learners, feat, {}
    # the models' record is written once all of them are saved (an interrupted run leaves no
    # record, so its files are not reused); the checkpoints' before they are written
    (folder / RECORD).unlink(missing_ok=True)
    write_run_record(out / "checkpoints", options)
    tasks = load_moleculenet(args.data)
    n_train = len(tasks) - args.n_valid - args.n_test
    if n_train < 1:
        raise SystemExit(
            f"--n-valid {args.n_valid} + --n-test {args.n_test} leave no training assays of the "
            f"{len(tasks)} in {args.data}"
        )
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
    write_run_record(folder, options)
    return learners, feat, seconds


def markdown_table(rows: dict[str, dict[str, str]], first: str) -> str:
    cols = list(next(iter(rows.values())))
    lines = [f"| {first} | " + " | ".join(cols) + " |", "|---" * (len(cols) + 1) + "|"]
    lines += [f"| {k} | " + " | ".join(v[c] for c in cols) + " |" for k, v in rows.items()]
    return "\n".join(lines)


def plot_bo(
    curves: dict[str, np.ndarray], title: str, ylabel: str, path: Path, n_init: int = 16
) -> None:
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
    ax.set_xlabel(f"iteration (after {n_init} random molecules)")
    ax.set_ylabel(f"best {ylabel} found (mean +- s.e.)")
    ax.set_title(title)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> int:
    args = parse_args(argv)
    out = Path(args.out)
    options = run_options(args)
    saved = check_saved(args, out, options)  # before any work: no reuse under other options
    from metalearn.metrics import json_safe
    from metalearn.ood import default_surrogates, optimise_out_of_domain, predict_out_of_domain
    from probrec.data import load_regression_set

    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    progress = False if args.no_progress else None
    t_start = time.perf_counter()
    # the out-of-domain sets before meta-training: sizes they cannot hold stop the run here
    sets = {name: load_regression_set(name, args.root) for name in args.datasets}
    for name, task in sets.items():
        n = len(task.labels)
        if max(args.sizes) >= n or args.n_init + args.n_iter > n:
            raise SystemExit(
                f"{name} has {n} molecules: --sizes must be below it and --n-init + --n-iter "
                f"at most it (got --sizes {','.join(map(str, args.sizes))}, --n-init "
                f"{args.n_init}, --n-iter {args.n_iter})"
            )
    learners, feat, train_seconds = meta_trained(args, out, progress, options, saved)
    surrogates = default_surrogates(DEEP)
    sizes = args.sizes
    report: dict = {
        "args": vars(args),
        "models": {"folder": str(models_folder(args, out)), "trained_with": options},
        "train_seconds": train_seconds,
        "datasets": {},
    }
    pred_rows: dict[str, dict[str, str]] = {s.name: {} for s in surrogates}
    bo_rows: dict[str, dict[str, str]] = {s.name: {} for s in surrogates}
    bo_rows["random"] = {}
    for name in args.datasets:
        task = sets[name]
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
                r2, nll = mean_se_summary(metrics["r2"]), mean_se_summary(metrics["nll"])
                entry["prediction"][f"{s}@{n_train}"] = {
                    "r2": [r2["mean"], r2["se"]],
                    "nll": [nll["mean"], nll["se"]],
                    "r2_per_repeat": metrics["r2"].tolist(),
                    "nll_per_repeat": metrics["nll"].tolist(),
                }
                # one repeat: the mean alone (its s.e. is undefined)
                pred_rows[s][f"{name} R2 @{n_train}"] = format_mean_se(r2)
                pred_rows[s][f"{name} NLL @{n_train}"] = format_mean_se(nll)
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
            final = mean_se_summary(v[:, -1])
            entry["bo"][s] = {"final": [final["mean"], final["se"]], "curves": v.tolist()}
            bo_rows[s][f"{name} ({label}; pool best {best_possible:.2f})"] = format_mean_se(final)
        plot_bo(curves, name, label, out / f"bo_{name}.png", args.n_init)
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
