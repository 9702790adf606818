"""DiGS against parallel tempering (and MALA, HMC) on Many-Well-32, DW-4, LJ-13 and the BNN.

Runs ``samplers.bench`` (the runner behind ``probrec bench samplers``) per target at one budget
(target evaluations per sample) and prints mean +- standard error over seeds of

- MW-32, DW-4, LJ-13: W1 between 200-bin energy histograms of the samples and of reference
  samples (exact samples for MW-32; ``../shared/data/samplers/*.npy`` for DW-4 and LJ-13), with
  the floor of the reference against an independent reference set; for DW-4 / LJ-13 also W1 of
  interatomic-distance histograms;
- BNN: the test NLL (the DiGS paper's expected NLL) of DiGS, HMC, MALA, PT and the MAP estimate.

Writes ``--out/summary.json``.

Usage: ``python benchmarks/samplers_targets.py --data ../shared/data [--targets mw32,dw4,lj13]
[--budget 1000] [--n-samples 2000] [--seeds 0,1,2]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from probrec.reporting import format_mean_se, json_safe, mean_and_se
from samplers import bench

COLUMNS = {
    "mw32": ("energy_w1", "energy_w1_floor", "energy_w2", "right_well_fraction", "wall_time"),
    "dw4": ("energy_w1", "energy_w1_floor", "energy_w2", "distance_w1", "energy_mean", "wall_time"),
    "lj13": (
        "energy_w1",
        "energy_w1_floor",
        "energy_w2",
        "distance_w1",
        "energy_mean",
        "wall_time",
    ),
    "lj55": (
        "energy_w1",
        "energy_w1_floor",
        "energy_w2",
        "distance_w1",
        "energy_mean",
        "wall_time",
    ),
    "bnn": ("test_nll", "test_nll_predictive", "wall_time"),
}


def _run(target: str, args: argparse.Namespace) -> list[dict]:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    samplers = args.samplers if target != "bnn" else args.bnn_samplers
    out = args.out / target
    argv = [
        "--targets",
        target,
        "--samplers",
        samplers,
        "--budgets",
        str(args.budget),
        "--seeds",
        args.seeds,
        "--n-samples",
        str(args.n_samples if target != "bnn" else args.bnn_samples),
        "--chains",
        str(args.chains if target != "bnn" else args.bnn_chains),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
    ]
    if args.data:
        argv += ["--data", str(args.data)]
    if args.settings:
        argv += ["--settings", args.settings]
    if args.no_progress:
        argv.append("--no-progress")
    bench.run(parser.parse_args(argv))
    return json.loads((out / "results.json").read_text())["rows"]


def _table(target: str, rows: list[dict]) -> list[dict]:
    groups: dict[str, list[dict]] = {}
    for r in rows:
        if "skipped" not in r:
            groups.setdefault(r["sampler"], []).append(r)
    out = []
    for s, rs in groups.items():
        e = {"sampler": s, "seeds": len(rs)}
        for m in COLUMNS[target]:
            v = np.array([r[m] for r in rs if r.get(m) is not None], float)
            if len(v) == 0:
                continue
            e[m], e[m + "_se"] = mean_and_se(v)  # s.e. nan (null in JSON) for one seed
            e[m + "_values"] = v.tolist()
        out.append(e)
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--targets", default="mw32,dw4,lj13,bnn")
    p.add_argument("--samplers", default="digs,pt,mala,hmc")
    p.add_argument("--bnn-samplers", default="digs,pt,mala,hmc,map")
    p.add_argument("--budget", type=float, default=1000.0)
    p.add_argument("--n-samples", type=int, default=2000)
    p.add_argument("--chains", type=int, default=0, help="0: one independent chain per sample")
    p.add_argument("--bnn-samples", type=int, default=1000)
    p.add_argument("--bnn-chains", type=int, default=10)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--data", type=Path, default=None, help="../shared/data")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--settings", default=None)
    p.add_argument("--out", type=Path, default=Path("bench-results") / "samplers_targets")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    summary: dict = {"benchmark": "samplers_targets", "budget": args.budget, "seeds": args.seeds}
    for t in [x.strip() for x in args.targets.split(",") if x.strip()]:
        table = _table(t, _run(t, args))
        summary[t] = table
        print(f"\n{t}: {args.budget:g} target evaluations per sample")
        for e in table:
            cells = []
            for m in COLUMNS[t]:
                if m in e:
                    stat = {"mean": e[m], "se": e.get(m + "_se")}
                    cells.append(f"{m} {format_mean_se(stat, '.4g', sep='+-')}")
            print(f"  {e['sampler']:6s} " + "  ".join(cells))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"-> {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
