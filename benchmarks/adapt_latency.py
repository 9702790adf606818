"""Benchmark: adapt + predict latency per task of the few-shot learners.

For each support size (``--support``, default 16 and 64) and query size (``--query``, default
256 and 1000), every learner adapts to the support set of each of ``--tasks`` tasks and
predicts class probabilities for its query set, through the common learner interface
(``learner.adapt(x_s, y_s).predict_proba(x_q)``):

* **ADKF-IFT**: encoder (freshly built; latency does not depend on training) + GP whose
  hyperparameters are fitted on the support set by batched Newton steps;
* **DKT**: encoder + GP with meta-learned (here: initial) hyperparameters, no fit;
* **GP-ST**: Tanimoto GP on the fingerprint counts, fitted per task (``metalearn.GPST``);
* **RF**: scikit-learn random forest per task (``metalearn.RandomForest``, its defaults);
* **ADKF-IFT batched**: the same model adapting all ``--tasks`` tasks in one call (encoder on
  the stacked support sets, one batched inner fit and posterior through ``probrec.gp.GPHead``),
  reported per task.

Times are medians over ``--repeats`` interleaved repeats of all tasks, divided by the number of
tasks (milliseconds per task). The summary ratio is RF's latency over ADKF-IFT's.

Run from the repository root::

    python benchmarks/adapt_latency.py
    python benchmarks/adapt_latency.py --data none --support 16 --query 256
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from typing import Any

import numpy as np
import torch
from _common import (
    TaskBatch,
    add_common_arguments,
    environment,
    episodes_batch,
    format_table,
    load_tasks,
    resolve_data,
    setup,
    summarize,
    time_interleaved,
    write_json,
)

from metalearn import ADKFIFT, DKT, GPST, RandomForest
from probrec.argtypes import whole
from probrec.gp import GPHead

NAME = "adapt_latency"
LEARNERS = ("ADKF-IFT", "ADKF-IFT batched", "DKT", "GP-ST", "RF")


def build_learners(
    in_dim: int, fp_columns: int, args: argparse.Namespace, device: torch.device
) -> dict[str, Any]:
    """The learners for inputs of width ``in_dim`` (deep-kernel encoders built, untrained);
    GP-ST uses the first ``fp_columns`` columns (the fingerprint counts)."""
    hidden = tuple(args.hidden)
    adkf = ADKFIFT(kind="classification", seed=args.seed, device=device, hidden=hidden)
    dkt = DKT(kind="classification", seed=args.seed, device=device, hidden=hidden)
    for m in (adkf, dkt):
        m.build(in_dim)
        m.encoder.eval()
    gpst = GPST(kind="classification", seed=args.seed, columns=(0, fp_columns))
    rf = RandomForest(kind="classification", seed=args.seed)
    return {"ADKF-IFT": adkf, "DKT": dkt, "GP-ST": gpst, "RF": rf}


def adapt_all(learner: Any, tb: TaskBatch) -> Callable[[], list[Any]]:
    """Adapts ``learner`` to every task of ``tb`` in turn and predicts its query set."""

    def fn() -> list[Any]:
        return [
            learner.adapt(tb.support_x[i], tb.support_y[i]).predict_proba(tb.query_x[i])
            for i in range(len(tb.names))
        ]

    return fn


def adapt_batched(learner: ADKFIFT, tb: TaskBatch, device: torch.device) -> Callable[[], Any]:
    """ADKF-IFT adapting all tasks at once: one encoder call, one batched fit and posterior."""
    head = GPHead(
        learner.gp_config,
        tol=learner.config["inner_tol"],
        max_iter=learner.config["inner_max_iter"],
    )

    def fn() -> torch.Tensor:
        with torch.no_grad():
            xs = torch.as_tensor(tb.support_x, device=device)
            xq = torch.as_tensor(tb.query_x, device=device)
            b, n_s, d = xs.shape
            z = learner.encoder(torch.cat([xs.reshape(-1, d), xq.reshape(-1, d)]))
            z = z.to(learner.gp_dtype)
            z_s, z_q = z[: b * n_s].reshape(b, n_s, -1), z[b * n_s :].reshape(b, xq.shape[1], -1)
            y = torch.as_tensor(tb.support_y, dtype=learner.gp_dtype, device=device)
            return head.fit(z_s, y).predict_proba(z_q)

    return fn


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(p, NAME, repeats=3)
    p.add_argument("--tasks", type=whole(1), default=4, help="tasks timed (default %(default)s)")
    p.add_argument(
        "--support",
        type=whole(2),
        nargs="+",
        default=[16, 64],
        help="support sizes, each >= 2 (default %(default)s)",
    )
    p.add_argument(
        "--query",
        type=whole(1),
        nargs="+",
        default=[256, 1000],
        help="query sizes (default %(default)s)",
    )
    p.add_argument(
        "--dim",
        type=whole(1),
        default=2048,
        help="width of synthetic inputs (default %(default)s)",
    )
    p.add_argument(
        "--descriptors",
        action="store_true",
        help="real data: Morgan counts + RDKit descriptors (2265 columns); GP-ST and "
        "the deep kernels see the same inputs, GP-ST only the counts",
    )
    p.add_argument(
        "--hidden",
        type=whole(1),
        nargs="+",
        default=[512, 256],
        help="encoder widths of ADKF-IFT and DKT (default %(default)s)",
    )
    p.add_argument(
        "--learners",
        nargs="+",
        default=list(LEARNERS),
        choices=LEARNERS,
        metavar="NAME",
        help=f"learners to time (default: all of {list(LEARNERS)})",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the table and the ratio, writes the JSON; returns the payload."""
    parser = build_parser()
    args = parser.parse_args(argv)
    for key in ("support", "query", "learners"):  # a repeat would overwrite its own results
        values = getattr(args, key)
        if len(set(values)) < len(values):
            parser.error(f"argument --{key}: repeats a value in {values}")
    device = setup(args)
    data = resolve_data(args.data)
    tasks, source = load_tasks(
        data,
        args.tasks,
        max(args.support) + max(args.query),
        args.seed,
        dim=args.dim,
        descriptors=args.descriptors,
    )
    names = [t.name for t in tasks]
    in_dim = int(np.asarray(tasks[0].inputs[:1]).shape[-1])
    learners = build_learners(in_dim, 2048 if data is not None else in_dim, args, device)
    results: dict[str, dict[str, Any]] = {}
    for n_s in args.support:
        for n_q in args.query:
            tb = episodes_batch(tasks, n_s, n_q, args.seed, source)
            fns = {}
            for name in args.learners:
                if name == "ADKF-IFT batched":
                    fns[name] = adapt_batched(learners["ADKF-IFT"], tb, device)
                else:
                    fns[name] = adapt_all(learners[name], tb)
            times = time_interleaved(fns, args.repeats, args.warmup, device, args.clock)
            key = f"support={n_s},query={n_q}"
            results[key] = {
                name: {
                    "times_s": times[name],
                    "ms_per_task": summarize([t * 1e3 / args.tasks for t in times[name]]),
                }
                for name in args.learners
            }
            print(
                f"  {key}: "
                + ", ".join(
                    f"{n} {results[key][n]['ms_per_task']['median']:.1f} ms" for n in args.learners
                ),
                flush=True,
            )

    keys = list(results)
    rows = []
    for name in args.learners:
        row: list[Any] = [name]
        for k in keys:
            s = results[k][name]["ms_per_task"]
            row.append(f"{s['median']:.1f} [{s['min']:.1f}, {s['max']:.1f}]")
        rows.append(row)
    print(
        f"adapt + predict latency, ms per task (median [min, max] over {args.repeats} repeats of "
        f"{args.tasks} tasks), {device}, {torch.get_num_threads()} threads, {args.clock} clock, "
        f"inputs {in_dim}-d ({source})"
    )
    print(
        format_table(
            rows,
            ["learner"]
            + [k.replace("support=", "n_s ").replace(",query=", " / n_q ") for k in keys],
        )
    )
    ratios = {}
    if "ADKF-IFT" in args.learners and "RF" in args.learners:
        ratios = {
            k: results[k]["RF"]["ms_per_task"]["median"]
            / results[k]["ADKF-IFT"]["ms_per_task"]["median"]
            for k in keys
        }
        print(
            "SUMMARY adapt_latency: RF / ADKF-IFT latency ratio "
            + ", ".join(f"{k}: {r:.2f}x" for k, r in ratios.items())
        )
    payload = {
        "benchmark": NAME,
        "config": {
            k: (v if isinstance(v, (int, float, bool, list, type(None))) else str(v))
            for k, v in vars(args).items()
        },
        "data": {"source": source, "tasks": names},
        "environment": environment(device),
        "results": results,
        "ratio_rf_over_adkf_ift": ratios,
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
