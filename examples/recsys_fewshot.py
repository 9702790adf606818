"""Few-shot cold start on MovieLens-100k: new users as tasks, GP heads on FM-store features.

Runs the LoopFM protocol of ``examples/recsys_loopfm.py`` for one seed (FM on the first 70% by
time, FM event embeddings to the frozen store, vertical models on the next 15%), then turns every
user whose first rating falls in the test period (the last 15%) into a binary few-shot task
(label = rating >= 4). Features of a user's event come from the FM store (the stored embeddings
of the item's earlier events, by anyone) and never from the user's own labels. Tasks are split
by user into meta-train / valid / test; ADKF-IFT, DKT and ProtoNet are meta-trained on the
meta-train users, and every learner is scored by the FS-Mol protocol (stratified support sets,
query = the rest, delta-AUPRC, mean +- s.e. across test users) against fine-tuning the vertical
models' output layers, the vertical models without adaptation and an item-popularity baseline.

Default: about 10 minutes on one CPU thread (measured on a shared 2-core machine).

Example:
    python examples/recsys_fewshot.py --out runs/recsys_fewshot
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch

from probrec.argtypes import choice_list, int_list, whole
from probrec.recsys.pipeline import add_log_source_arguments, resolve_log_source
from probrec.reporting import format_mean_se, json_safe

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/recsys/ml-100k"
FM_LEARNERS = ("ADKF-IFT", "DKT", "ProtoNet", "LogReg", "kNN", "RF")  # on the FM-store block
FULL_LEARNERS = ("VM-finetune", "LoopVM-finetune", "LoopVM", "Popularity")  # on every column
LEARNERS = (*FM_LEARNERS, *FULL_LEARNERS)


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_log_source_arguments(p, DEFAULT_DATA)
    p.add_argument("--out", default="runs/recsys_fewshot", help="output folder")
    p.add_argument(
        "--seed", type=whole(0), default=0, help="seed of the models, split and episodes"
    )
    p.add_argument("--sizes", type=int_list(1), default="4,8,16", help="support sizes")
    p.add_argument("--eval-seeds", type=whole(1), default=3, help="support sets per task and size")
    p.add_argument("--n-train", type=whole(1), default=50, help="meta-train users")
    p.add_argument("--n-valid", type=whole(1), default=10, help="validation users")
    p.add_argument("--min-events", type=whole(1), default=20, help="test events a user needs")
    p.add_argument("--steps", type=whole(1), default=300, help="meta-training steps")
    p.add_argument(
        "--learners",
        type=choice_list(LEARNERS),
        default=",".join(LEARNERS),
        help=f"comma-separated subset of {', '.join(LEARNERS)}",
    )
    p.add_argument("--threads", type=whole(1), default=1, help="torch CPU threads")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    resolve_log_source(p, args, DEFAULT_DATA)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    import metalearn
    from metalearn.evaluation import EvalResult
    from probrec.data import split_tasks
    from probrec.recsys import (
        ColumnScore,
        HeadFineTune,
        LoopFMConfig,
        cold_start_features,
        cold_start_tasks,
        robust_std,
        run_loopfm,
    )
    from probrec.recsys.pipeline import load_log

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = False if args.no_progress else None
    t_start = time.perf_counter()
    log = load_log(args.data, args.format, download=args.download)
    print(log)
    cfg = LoopFMConfig(variants=("VM", "VM+LoopFM+KD"))
    run, obj = run_loopfm(log, out, seed=args.seed, config=cfg, progress=progress)
    table, test_idx = obj["table"], obj["split"]["test"]
    vms = {"VM": obj["vms"]["VM"], "LoopVM": obj["vms"]["VM+LoopFM+KD"]}
    feats = cold_start_features(table, obj["stored"], vms, test_idx)
    cols = feats.columns()
    x = feats.matrix()
    tasks = cold_start_tasks(table, test_idx, x, min_events=args.min_events)
    n_test = len(tasks) - args.n_train - args.n_valid
    if n_test < 2:
        raise ValueError(f"only {len(tasks)} cold-start users: lower --n-train / --n-valid")
    train, valid, test = split_tasks(tasks, (args.n_train, args.n_valid, n_test), seed=args.seed)
    sizes_ev = [len(t) for t in tasks]
    print(
        f"{len(tasks)} cold-start users (test events per user: median {np.median(sizes_ev):.0f},"
        f" min {min(sizes_ev)}): {len(train)} meta-train / {len(valid)} valid / {len(test)} test"
    )
    sizes = args.sizes
    a, b = cols["fm"]
    # the FM-store block mixes scales (embeddings ~0.05-0.3, a rate in [0, 1], a log count):
    # standardise it per dimension with the meta-training users' statistics (robust_std: an FM
    # dimension constant over those users' events must not be divided by ~0)
    fm_train = np.concatenate([np.asarray(t.inputs)[:, a:b] for t in train])
    mu, sd = fm_train.mean(0), robust_std(torch.from_numpy(fm_train).double()).numpy()

    def fm_only(ts):
        return [
            t.with_inputs(((np.asarray(t.inputs)[:, a:b] - mu) / sd).astype(np.float32)) for t in ts
        ]

    meta = dict(
        hidden=(64,),
        out_dim=32,
        n_steps=args.steps,
        batch_size=8,
        support_size=8,
        query_size=16,
        lr=1e-3,
        eval_every=50,
        valid_support_size=8,
        valid_seeds=1,
    )
    fm_learners = {
        "ADKF-IFT": lambda: metalearn.ADKFIFT(seed=args.seed, **meta),
        "DKT": lambda: metalearn.DKT(seed=args.seed, **meta),
        "ProtoNet": lambda: metalearn.ProtoNet(seed=args.seed, **meta),
        "LogReg": lambda: metalearn.LogisticRegression(seed=args.seed),
        "kNN": lambda: metalearn.KNN(seed=args.seed),
        "RF": lambda: metalearn.RandomForest(seed=args.seed, n_estimators=100),
    }

    def head(name: str):
        lin = vms[name].top.logit
        return lin.weight.detach().reshape(-1), lin.bias.item()

    def finetune(name: str, vm: str) -> HeadFineTune:
        """The output-layer fine-tuner with its L2 pull chosen on the validation users."""
        best = None
        for l2 in (1.0, 10.0, 100.0):
            ft = HeadFineTune(name, cols[f"{vm}/hidden"], *head(vm), l2=l2)
            r = metalearn.evaluate({name: ft}, list(valid), sizes, 1, progress=False)
            score = float(np.mean([v["mean"] for v in r.summary()[name].values()]))
            if best is None or score > best[0]:
                best = (score, l2, ft)
        print(f"  {name}: l2 = {best[1]:g} chosen on the validation users")
        chosen_l2[name] = best[1]
        return best[2]

    chosen_l2: dict[str, float] = {}
    full_learners = {
        "VM-finetune": lambda: finetune("VM-finetune", "VM"),
        "LoopVM-finetune": lambda: finetune("LoopVM-finetune", "LoopVM"),
        "VM": lambda: ColumnScore("VM", cols["VM/logit"][0], logit=True),
        "LoopVM": lambda: ColumnScore("LoopVM", cols["LoopVM/logit"][0], logit=True),
        "Popularity": lambda: ColumnScore("Popularity", cols["pop"][0]),
    }
    wanted = args.learners
    fm_set = {}
    train_seconds = {}
    for name in (w for w in wanted if w in fm_learners):
        m = fm_learners[name]()
        t0 = time.perf_counter()
        m.meta_fit(fm_only(train), fm_only(valid), progress=progress)
        train_seconds[name] = time.perf_counter() - t0
        fm_set[name] = m
    full_set = {w: full_learners[w]() for w in wanted if w in full_learners}
    # same labels and seeds -> the same episodes for both groups of learners
    res = metalearn.evaluate(fm_set, fm_only(test), sizes, args.eval_seeds, progress=progress)
    res2 = metalearn.evaluate(full_set, list(test), sizes, args.eval_seeds, progress=progress)
    merged = EvalResult(
        res.metric, res.rows + res2.rows, res.skipped, {**res.seconds, **res2.seconds}
    )
    md = merged.to_markdown()
    if "ADKF-IFT" in wanted:
        rows = []
        for o in wanted:
            if o == "ADKF-IFT":
                continue
            d = merged.paired("ADKF-IFT", o)
            rows.append(
                f"| ADKF-IFT - {o} | "
                + " | ".join(format_mean_se(d[s], signed=True) for s in sizes if s in d)
                + " |"
            )
        head_row = "| paired difference | " + " | ".join(str(s) for s in sizes) + " |"
        md += "\n\n" + "\n".join([head_row, "|---" * (len(sizes) + 1) + "|", *rows])
    print(f"\n## cold-start users of {log.name} ({len(test)} test users)\n\n{md}")
    (out / "fewshot.md").write_text(md + "\n")
    report = {
        "args": vars(args),
        "loopfm_run": run.to_json(),
        "n_tasks": {"train": len(train), "valid": len(valid), "test": len(test)},
        "train_seconds": train_seconds,
        "finetune_l2": chosen_l2,
        "result": merged.to_json(),
        "seconds": time.perf_counter() - t_start,
    }
    (out / "fewshot.json").write_text(json.dumps(json_safe(report), indent=1, default=str))
    print(f"\nwrote {out}/fewshot.md and fewshot.json in {report['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
