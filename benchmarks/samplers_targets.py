"""DiGS against parallel tempering (and MALA, HMC) on Many-Well-32, DW-4, LJ-13 and the BNN.

Runs ``samplers.bench`` (the runner behind ``probrec bench samplers``) per target at one budget
(target evaluations per sample) and prints mean +- standard error over seeds of

- MW-32, DW-4, LJ-13: W1 between 200-bin energy histograms of the samples and of reference
  samples (exact samples for MW-32; ``../shared/data/samplers/*.npy`` for DW-4 and LJ-13), with
  the floor of the reference against an independent reference set; for DW-4 / LJ-13 also W1 of
  interatomic-distance histograms;
- BNN: the test NLL (the DiGS paper's expected NLL) of DiGS, HMC, MALA, PT and the MAP estimate.

Writes ``--out/summary.json``. ``--data`` defaults to ``../shared/data`` beside the repository
when it exists; a target scored against reference files that are not there is a usage error.

Usage: ``python benchmarks/samplers_targets.py --data ../shared/data [--targets mw32,dw4,lj13]
[--budget 1000] [--n-samples 2000] [--seeds 0,1,2]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from probrec.argtypes import choice_list, existing_path, number, seed_list, whole
from probrec.reporting import format_mean_se, json_safe, mean_and_se
from samplers import bench

DEFAULT_DATA = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SAMPLER_NAMES = [*bench.SAMPLERS, "map"]
#: targets scored against reference samples from ``--data`` (without them: no W1 metric)
NEEDS_REFERENCE = ("dw4", "lj13", "lj55")

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
        ",".join(samplers),
        "--budgets",
        repr(args.budget),
        "--seeds",
        ",".join(map(str, args.seeds)),
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
        argv += ["--settings", json.dumps(args.settings)]
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


def missing_references(targets: list[str], data: Path | None) -> list[str]:
    """Messages for the requested targets whose reference samples are not under ``data``
    (their rows would hold no W1 metric and their table would be empty)."""
    out = []
    for t in targets:
        if t not in NEEDS_REFERENCE:
            continue
        rel = bench.REFERENCE_FILES.get(t)
        if rel is None:
            out.append(f"{t}: samplers.bench.REFERENCE_FILES names no reference samples for it")
        elif data is None:
            out.append(f"{t}: needs {rel} under a --data root (none given, none found)")
        elif not (data / rel).is_file():
            out.append(f"{t}: {data / rel} does not exist")
    return out


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--targets",
        type=choice_list(COLUMNS),
        default="mw32,dw4,lj13,bnn",
        help=f"comma-separated targets, of {','.join(COLUMNS)}",
    )
    p.add_argument(
        "--samplers",
        type=choice_list(SAMPLER_NAMES),
        default="digs,pt,mala,hmc",
        help=f"samplers of the targets other than bnn, of {','.join(SAMPLER_NAMES)}",
    )
    p.add_argument(
        "--bnn-samplers",
        type=choice_list(SAMPLER_NAMES),
        default="digs,pt,mala,hmc,map",
        help="samplers of the bnn target",
    )
    p.add_argument(
        "--budget", type=number(0.0), default=1000.0, help="target evaluations per sample"
    )
    p.add_argument(
        "--n-samples", type=whole(1), default=2000, help="samples per run (targets but bnn)"
    )
    p.add_argument(
        "--chains",
        type=whole(0),
        default=0,
        help="chains per run (targets but bnn); 0: one independent chain per sample",
    )
    p.add_argument("--bnn-samples", type=whole(1), default=1000, help="samples per bnn run")
    p.add_argument("--bnn-chains", type=whole(0), default=10, help="chains per bnn run")
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="distinct seeds")
    p.add_argument(
        "--data",
        type=existing_path("dir"),
        default=DEFAULT_DATA if DEFAULT_DATA.is_dir() else None,
        help="data root holding the reference samples samplers/*.npy of dw4 and lj13 "
        "(default: %(default)s; ../shared/data beside the repository, when it exists)",
    )
    bench.add_run_options(
        p,
        Path("bench-results") / "samplers_targets",
        "output folder (one folder per target, summary.json)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    missing = missing_references(args.targets, args.data)
    if missing:
        parser.error("argument --data: reference samples missing: " + "; ".join(missing))
    summary: dict = {
        "benchmark": "samplers_targets",
        "targets": args.targets,
        "budget": args.budget,
        "seeds": args.seeds,
        "n_samples": args.n_samples,
        "chains": args.chains,
        "bnn_samples": args.bnn_samples,
        "bnn_chains": args.bnn_chains,
        "data": None if args.data is None else str(args.data),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for t in args.targets:
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
        # after every target, so that a later target's failure keeps the earlier tables
        (args.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"-> {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
