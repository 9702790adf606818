"""Benchmark: vertical-model serving with stored FM embeddings vs running the FM per request.

LoopFM's point (Jiang et al., 2026) is that the vertical model reads the foundation model's
embeddings of a user's and an item's earlier events from a frozen store instead of calling the
foundation model at serving time. For batches of ``--batch`` test-period requests this times:

* **stored**: gather the request features, read the FM embeddings of each request's history
  events from the memory-mapped store by key (``lookup_histories`` ->
  ``build_history_batch``), run the VM;
* **stored, pre-resolved rows**: the same with the store rows of every logged event resolved
  once in advance (``StoredHistory``: one tensor gather per batch);
* **FM per request**: the same VM, but the FM embeddings of the history events are computed by
  running the FM on them for every request (what serving without the store would do);
* **FM alone**: the FM scoring the requests itself (for reference).

Throughput is requests per second (median over ``--repeats`` interleaved repeats); the ratio
stored / FM-per-request is measured in the same run. Models are untrained (speed does not
depend on the weights) with the sizes of ``LoopFMConfig``.

Run from the repository root::

    python benchmarks/recsys_throughput.py
    python benchmarks/recsys_throughput.py --data none --batch 512
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

import numpy as np
import torch
from _common import (
    REPO,
    environment,
    format_table,
    ratio_summary,
    setup,
    summarize,
    time_interleaved,
    write_json,
)

from probrec.argtypes import HelpFormatter, path_or_word, single_seed, whole

NAME = "recsys_throughput"
DEFAULT_ML = REPO.parent / "shared" / "data" / "recsys" / "ml-100k"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--data",
        type=path_or_word("dir"),
        default="auto",
        help="MovieLens folder; 'auto' uses ../shared/data/recsys/ml-100k when present, "
        "'none' a synthetic log",
    )
    p.add_argument("--batch", type=whole(1), default=256, help="requests per batch")
    p.add_argument("--batches", type=whole(1), default=4, help="batches per timed call")
    p.add_argument(
        "--device", default="cuda" if torch.cuda.is_available() else "cpu", help="torch device"
    )
    p.add_argument("--threads", type=whole(1), default=1, help="torch CPU threads")
    p.add_argument("--repeats", type=whole(1), default=5, help="timed repeats (median reported)")
    p.add_argument("--warmup", type=whole(0), default=1, help="untimed calls per variant first")
    p.add_argument(
        "--seed", type=single_seed, default=0, help="seed of the models and the requests"
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / f"{NAME}.json",
        help="JSON output file",
    )
    return p


def parse_args(argv=None) -> argparse.Namespace:
    return build_parser().parse_args(argv)


def _synthetic_log(n: int = 20_000, seed: int = 0):
    from probrec.data.movielens import InteractionLog

    rng = np.random.default_rng(seed)
    u, i = rng.integers(1, 900, n), rng.integers(1, 1600, n)
    t = np.sort(rng.choice(10 * n, n, replace=False))
    y = rng.integers(0, 2, n).astype(np.float32)
    mh = (rng.random((n, 19)) < 0.1).astype(np.float32)
    fields = {"a": rng.integers(0, 8, n), "b": rng.integers(0, 20, n)}
    return InteractionLog.sorted_by_time(
        u, i, t, y, fields, {"a": 8, "b": 20}, multi_hot=mh, name="synthetic"
    )


def main(argv=None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    device = setup(args)
    from probrec.data.movielens import load_movielens
    from probrec.recsys import (
        EventTable,
        LoopFMConfig,
        StoredHistory,
        chronological_split,
        lookup_histories,
        write_fm_store,
    )
    from probrec.recsys.pipeline import build_fm, build_vm

    if args.data == "none" or (args.data == "auto" and not DEFAULT_ML.is_dir()):
        log = _synthetic_log(seed=args.seed)
    else:
        log = load_movielens(DEFAULT_ML if args.data == "auto" else args.data)
    cfg = LoopFMConfig()
    fm_idx, _, test_idx = chronological_split(log.time, cfg.fractions)
    if args.batch > len(test_idx):  # requests of a batch are distinct test-period events
        parser.error(
            f"argument --batch: {args.batch} is more than the {len(test_idx)} test-period "
            f"events of {log.name} a batch is drawn from"
        )
    table = EventTable.build(
        log, fm_idx, user_history=cfg.user_history, item_history=cfg.item_history
    )
    fm = build_fm(table, cfg, args.seed).eval()
    tmp = tempfile.TemporaryDirectory()
    store = write_fm_store(fm, table, Path(tmp.name) / "fm")
    stored = StoredHistory(store, table, device)  # its copy of the vectors on the device
    vm = build_vm(table, cfg, "VM+LoopFM", store.dim, args.seed).eval().to(device)
    fm = fm.to(device)
    rng = np.random.default_rng(args.seed)
    requests = [rng.choice(test_idx, args.batch, replace=False) for _ in range(args.batches)]

    @torch.no_grad()
    def serve_stored() -> None:
        for idx in requests:
            vm(lookup_histories(store, table, table.batch(idx, device)))

    @torch.no_grad()
    def serve_rows() -> None:
        for idx in requests:
            vm(stored(table.batch(idx, device)))

    @torch.no_grad()
    def serve_fm_per_request() -> None:
        for idx in requests:
            b = table.batch(idx)
            ev = torch.cat([b["hist_event"], b["ihist_event"]], dim=1)
            valid = ev >= 0
            emb = torch.zeros(*ev.shape, fm.embed_dim, device=device)
            if valid.any():
                h, _ = fm(table.batch(ev[valid].numpy(), device))
                emb[valid.to(device)] = h
            b = {k: v.to(device) for k, v in b.items()}
            L = b["hist_event"].shape[1]
            b["fm_hist"], b["fm_ihist"] = emb[:, :L], emb[:, L:]
            vm(b)

    @torch.no_grad()
    def serve_fm_alone() -> None:
        for idx in requests:
            fm(table.batch(idx, device))

    fns = {
        "stored": serve_stored,
        "stored, pre-resolved rows": serve_rows,
        "FM per request": serve_fm_per_request,
        "FM alone": serve_fm_alone,
    }
    times = time_interleaved(fns, args.repeats, args.warmup, device)
    n_req = args.batch * args.batches
    results = {
        k: {"seconds": summarize(v), "requests_per_s": n_req / statistics.median(v)}
        for k, v in times.items()
    }
    ratio = ratio_summary(times["FM per request"], times["stored"])
    rows = [
        [k, f"{r['requests_per_s']:.0f}", f"{r['seconds']['median'] * 1e3:.1f}"]
        for k, r in results.items()
    ]
    print(format_table(rows, ["variant", "requests / s", f"ms per {n_req} requests"]))
    print(
        f"\nthroughput ratio stored / FM per request: {ratio['ratio_of_medians']:.1f}x "
        f"(per-repeat {ratio['per_repeat_min']:.1f}-{ratio['per_repeat_max']:.1f}x)"
    )
    payload = {
        "benchmark": NAME,
        "config": {k: str(v) for k, v in vars(args).items()},
        "data": log.name,
        "history": {"user": cfg.user_history, "item": cfg.item_history},
        "params": {
            "fm": sum(p.numel() for p in fm.parameters()),
            "vm": sum(p.numel() for p in vm.parameters()),
        },
        "environment": environment(device),
        "results": results,
        "raw_seconds": times,
        "ratio_stored_over_fm_per_request": ratio,
    }
    print(f"wrote {write_json(args.out, payload)}")
    tmp.cleanup()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
