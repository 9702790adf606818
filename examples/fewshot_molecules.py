"""Few-shot molecular property prediction on ToxCast (and Tox21 as an out-of-distribution family).

Meta-trains ADKF-IFT, ADKF, DKT and ProtoNet on ToxCast assays split by assay (train / valid /
test, seeded), fits the single-task baselines (GP-ST with a Tanimoto kernel, random forest,
kNN, logistic regression, DKL) per task, and evaluates every learner by the FS-Mol protocol
(stratified support sets, query = rest of the task, delta-AUPRC, mean +- s.e. across tasks).

Default: a configuration that finishes on 2 CPU cores in about 30 minutes. ``--full``: the
reference sizes of Chen et al. (ICLR 2023) -- 16 tasks per meta-step, support 64, query 256,
Adam 1e-4, 10,000 steps, a 2048-2048 MLP -- for a GPU.

Example:
    python examples/fewshot_molecules.py --out runs/toxcast
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

try:  # CPU-time accounting (Unix)
    import resource
except ImportError:  # pragma: no cover - Windows
    resource = None

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/molecules/moleculenet"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--data", default=str(DEFAULT_DATA / "toxcast_500.csv.gz"), help="ToxCast wide CSV"
    )
    p.add_argument(
        "--tox21", default=str(DEFAULT_DATA / "tox21.csv.gz"), help="Tox21 CSV ('' to skip)"
    )
    p.add_argument("--out", default="runs/fewshot_molecules", help="output folder")
    p.add_argument(
        "--seed", type=int, default=0, help="seed of the split, the models and the episodes"
    )
    p.add_argument("--n-valid", type=int, default=30, help="validation assays")
    p.add_argument("--n-test", type=int, default=100, help="test assays (>= 100 for the report)")
    p.add_argument("--sizes", default="16,64", help="support sizes to evaluate")
    p.add_argument("--eval-seeds", type=int, default=3, help="support sets per task and size")
    p.add_argument("--learners", default="ADKF-IFT,ADKF,DKT,ProtoNet,GP-ST,RF,kNN,LogReg,DKL")
    p.add_argument(
        "--steps", type=int, default=None, help="meta-training steps (default 400; --full 10000)"
    )
    p.add_argument("--full", action="store_true", help="reference sizes (GPU)")
    p.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    p.add_argument("--dkl-steps", type=int, default=100, help="Adam steps of DKL per task")
    p.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    p.add_argument(
        "--jobs",
        type=int,
        default=-1,
        help="worker processes for the per-episode evaluation (-1, default: one per core)",
    )
    p.add_argument("--no-progress", action="store_true")
    return p.parse_args(argv)


def learner_configs(args: argparse.Namespace) -> dict[str, dict]:
    """Meta-learner settings: a CPU default and the reference (``--full``) sizes."""
    from metalearn.training import preset

    common = preset("reference" if args.full else "cpu", args.steps)
    return {"ADKF-IFT": common, "ADKF": common, "DKT": common, "ProtoNet": common}


def main(argv=None) -> int:
    args = parse_args(argv)
    import metalearn
    from metalearn.metrics import json_safe
    from probrec.data import MoleculeFeaturizer, featurize_tasks, load_moleculenet, split_tasks

    torch.manual_seed(args.seed)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = False if args.no_progress else None
    t_start = time.perf_counter()

    tasks = load_moleculenet(args.data)
    n_train = len(tasks) - args.n_valid - args.n_test
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

    wanted = [s.strip() for s in args.learners.split(",") if s.strip()]
    cfgs = learner_configs(args)
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
    unknown = [w for w in wanted if w not in factories]
    if unknown:
        raise ValueError(f"unknown --learners {unknown}; choose from {sorted(factories)}")
    learners, train_seconds = {}, {}
    for name in wanted:
        m = factories[name]()
        t0 = time.perf_counter()
        m.meta_fit(train_f, valid_f, checkpoint_dir=out / "checkpoints" / name, progress=progress)
        train_seconds[name] = time.perf_counter() - t0
        if m.history.get("best_step") is not None and "valid_score" in m.history:
            print(
                f"  {name}: meta-trained in {train_seconds[name]:.0f} s, best valid delta-AUPRC "
                f"{m.history['best_score']:.3f} at step {m.history['best_step']}"
            )
        learners[name] = m

    sizes = [int(s) for s in args.sizes.split(",")]
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
                    f"{d['mean']:+.3f} +- {d['se']:.3f}" for d in res.paired("ADKF-IFT", o).values()
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
