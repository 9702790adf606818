"""LoopFM on MovieLens-100k: transfer from a foundation model to a small vertical model.

Chronological protocol (see :mod:`probrec.recsys.pipeline`): the foundation model (a DLRM
with a sequence encoder) is trained on the first 70% of the ratings by time; its event
embeddings of all logged events go to a frozen store keyed by (user, item, time); vertical
models (small hashed-id DLRMs) are trained on the next 15% -- alone, with distillation (KD),
with LoopFM inputs (histories of stored FM embeddings), with both, and with ExFM's auxiliary
head -- and everything is scored on the last 15%. Prints AUC / log loss (mean +- s.e. over
seeds), transfer ratios and a gain decomposition; writes JSON and markdown to ``--out``.

Positive = rating >= 4. Default: 3 seeds on one CPU thread, about 26 minutes measured on a
2-core machine shared with other jobs (load ~5); the FM takes ~1 minute per seed unloaded.

Example:
    python examples/recsys_loopfm.py --seeds 0,1,2 --out runs/recsys_loopfm
    python examples/recsys_loopfm.py --download data/ml-100k   # fetch MovieLens-100k first
    python examples/recsys_loopfm.py --format taobao \
        --data ../shared/data/recsys/ctr_samples/taobaoad_tiny_train.csv
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from probrec.argtypes import seed_list, torch_device, whole
from probrec.recsys.pipeline import add_log_source_arguments, resolve_log_source
from probrec.reporting import json_safe

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared/data/recsys/ml-100k"


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_log_source_arguments(p, DEFAULT_DATA)
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="comma-separated seeds")
    p.add_argument("--out", default="runs/recsys_loopfm", help="output folder")
    p.add_argument(
        "--no-ablation", action="store_true", help="skip the untrained-FM-store ablation"
    )
    p.add_argument("--fm-epochs", type=whole(1), default=None, help="maximum FM epochs")
    p.add_argument("--vm-epochs", type=whole(1), default=None, help="maximum VM epochs")
    p.add_argument("--threads", type=whole(1), default=1, help="torch CPU threads")
    p.add_argument(
        "--device", type=torch_device, default="cpu", help="torch device of the models (e.g. cuda)"
    )
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    resolve_log_source(p, args, DEFAULT_DATA)
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    from probrec.recsys.pipeline import (
        UNTRAINED,
        VARIANTS,
        LoopFMConfig,
        load_log,
        run_loopfm,
        summarize_runs,
        summary_markdown,
    )

    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    log = load_log(args.data, args.format, download=args.download)
    print(log)
    cfg = LoopFMConfig(variants=VARIANTS if args.no_ablation else (*VARIANTS, UNTRAINED))
    if args.fm_epochs is not None:
        cfg.fm_train.epochs = args.fm_epochs
    if args.vm_epochs is not None:
        cfg.vm_train.epochs = args.vm_epochs
    t0 = time.perf_counter()
    runs = []
    for seed in args.seeds:
        run, _ = run_loopfm(
            log,
            out,
            seed=seed,
            config=cfg,
            progress=False if args.no_progress else None,
            device=args.device,
        )
        runs.append(run)
    summary = summarize_runs(runs)
    md = summary_markdown(summary)
    print(f"\n## LoopFM on {log.name}: sizes {runs[0].sizes}\n\n{md}")
    (out / "loopfm.md").write_text(md + "\n")
    report = {
        "args": vars(args),
        "config": {k: str(v) for k, v in vars(cfg).items()},
        "summary": summary,
        "runs": [r.to_json() for r in runs],
        "seconds": time.perf_counter() - t0,
    }
    (out / "loopfm.json").write_text(json.dumps(json_safe(report), indent=1, default=str))
    print(f"\nwrote {out}/loopfm.md and loopfm.json in {report['seconds'] / 60:.1f} min")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
