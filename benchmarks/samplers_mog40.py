"""MoG-40 at equal budget: DiGS, parallel tempering, MALA and HMC in the two regimes of issue 4.

- regime (a), the DiGS paper's: 10 chains started at the origin keep 1,000 samples each after
  burn-in (``--chains 10`` of ``samplers.bench``; ``--n-samples`` / 10 each);
- regime (b): 10,000 independent chains from the origin (``--n-samples``), each contributing
  its last state.

Runs ``samplers.bench`` (the runner behind ``probrec bench samplers``) for both regimes, then
prints mean +- standard error over seeds of MMD^2 against 10,000 exact samples, its noise floor
(two independent exact draws, same seed), MMD^2 / floor, mode coverage, mode-weight TV and the
relative error of E||x||^2, checks the targets of the issue (DiGS: 40/40 modes, TV <= 0.035 and
MMD^2 <= 1.5 x floor at 1,000 evaluations per sample in both regimes; DiGS better than PT in (a)
and at the lower budgets of (b)) and writes this run's options, tables and checks to
``--out/summary.json`` (rewritten by every run: a regime not run this time is not in it).

Usage: ``python benchmarks/samplers_mog40.py [--seeds 0,1,2] [--out bench-results/mog40]``
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import numpy as np

from probrec.argtypes import choice_list, float_list, seed_list, whole
from probrec.reporting import format_mean_se, json_safe, mean_and_se
from samplers import bench

METRICS = (
    "mmd2",
    "mmd2_floor",
    "mmd2_over_floor",
    "modes_covered",
    "mode_weight_tv",
    "sq_norm_rel_error",
    "wall_time",
)


def _regime(out: Path, chains: int, budgets: list[float], args: argparse.Namespace) -> list[dict]:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = [
        "--targets",
        "mog40",
        "--samplers",
        ",".join(args.samplers),
        "--budgets",
        ",".join(map(repr, budgets)),
        "--seeds",
        ",".join(map(str, args.seeds)),
        "--n-samples",
        str(args.n_samples),
        "--chains",
        str(chains),
        "--out",
        str(out),
        "--threads",
        str(args.threads),
        "--compile",
        args.compile,
    ]
    if args.settings:
        argv += ["--settings", json.dumps(args.settings)]
    if args.no_progress:
        argv.append("--no-progress")
    bench.run(parser.parse_args(argv))
    return json.loads((out / "results.json").read_text())["rows"]


def _table(rows: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in rows:
        if "skipped" not in r:
            groups.setdefault((r["sampler"], r["budget"]), []).append(r)
    out = []
    for (s, b), rs in sorted(groups.items(), key=lambda kv: (kv[0][1], kv[0][0])):
        entry = {"sampler": s, "budget": b, "seeds": len(rs)}
        for m in METRICS:
            v = np.array([r[m] for r in rs], float)
            entry[m], entry[m + "_se"] = mean_and_se(v)  # s.e. nan (null in JSON) for one seed
            entry[m + "_values"] = v.tolist()
        out.append(entry)
    return out


def _pm(e: dict, m: str, fmt: str) -> str:
    return format_mean_se({"mean": e[m], "se": e[m + "_se"]}, fmt, sep="+-")


def _print(title: str, table: list[dict]) -> None:
    print(f"\n{title}")
    cols = ("sampler", "budget", "MMD^2", "floor", "MMD^2/floor", "modes", "TV", "relE |x|^2")
    print("{:7s} {:>6s} {:>18s} {:>9s} {:>13s} {:>6s} {:>15s} {:>15s}".format(*cols))
    for e in table:
        cells = (
            e["sampler"],
            f"{e['budget']:g}",
            _pm(e, "mmd2", ".5f"),
            f"{e['mmd2_floor']:.5f}",
            _pm(e, "mmd2_over_floor", ".2f"),
            f"{e['modes_covered']:.1f}",
            _pm(e, "mode_weight_tv", ".4f"),
            _pm(e, "sq_norm_rel_error", ".4f"),
        )
        print("{:7s} {:>6s} {:>18s} {:>9s} {:>13s} {:>6s} {:>15s} {:>15s}".format(*cells))


def _checks(table_a: list[dict], table_b: list[dict], budgets_b: list[float]) -> dict:
    def get(table, s, b):
        return next((e for e in table if e["sampler"] == s and e["budget"] == b), None)

    checks = {}
    for name, table in (("a", table_a), ("b", table_b)):
        d = get(table, "digs", 1000.0)
        if d is None:
            continue
        checks[f"{name}: digs reaches all 40 modes (every seed)"] = (
            min(d["modes_covered_values"]) == 40
        )
        checks[f"{name}: digs mode-weight TV <= 0.035 (mean)"] = d["mode_weight_tv"] <= 0.035
        checks[f"{name}: digs MMD^2 <= 1.5 x floor (mean)"] = d["mmd2_over_floor"] <= 1.5
    d, p = get(table_a, "digs", 1000.0), get(table_a, "pt", 1000.0)
    if d and p:
        checks["a: digs MMD^2 < pt MMD^2"] = d["mmd2"] < p["mmd2"]
    for b in sorted(budgets_b)[:-1]:
        d, p = get(table_b, "digs", b), get(table_b, "pt", b)
        if d and p:
            checks[f"b: digs MMD^2 < pt MMD^2 at {b:g}"] = d["mmd2"] < p["mmd2"]
    return checks


SAMPLER_NAMES = list(bench.SAMPLERS)
REGIMES = ("a", "b")
CHAINS_A = 10


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--seeds", type=seed_list, default="0,1,2", help="distinct seeds")
    p.add_argument(
        "--samplers",
        type=choice_list(SAMPLER_NAMES),
        default="digs,pt,mala,hmc",
        help=f"comma-separated samplers, of {','.join(SAMPLER_NAMES)}",
    )
    p.add_argument(
        "--n-samples",
        type=whole(1),
        default=10_000,
        help="samples per run (regime (a): split over its 10 chains; (b): one chain each)",
    )
    p.add_argument(
        "--budgets-a",
        type=float_list(0.0),
        default="1000",
        help="target evaluations per sample in regime (a), comma-separated",
    )
    p.add_argument(
        "--budgets-b",
        type=float_list(0.0),
        default="100,300,1000",
        help="target evaluations per sample in regime (b), comma-separated",
    )
    p.add_argument(
        "--regimes",
        type=choice_list(REGIMES),
        default="a,b",
        help="regimes to run, of a,b; summary.json describes only these (a regime's earlier "
        "results stay in --out/regime_<name>/results.json)",
    )
    p.add_argument(
        "--compile", default="auto", choices=["auto", "on", "off"], help="torch.compile steps"
    )
    bench.add_run_options(
        p,
        Path("bench-results") / "samplers_mog40",
        "output folder (regime_a/, regime_b/, summary.json)",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    per_chain = math.ceil(args.n_samples / CHAINS_A)
    regimes = {
        "a": (
            CHAINS_A,
            args.budgets_a,
            f"regime (a): {CHAINS_A} chains from the origin, {per_chain:,} samples each "
            f"({args.n_samples:,} in all)",
        ),
        "b": (
            0,
            args.budgets_b,
            f"regime (b): {args.n_samples:,} independent chains from the origin",
        ),
    }
    # the summary is this run's alone: a header that names its options and the tables of the
    # regimes it ran (an earlier run's rows were summarised under this run's header)
    summary: dict = {
        "benchmark": "samplers_mog40",
        "regimes": args.regimes,
        "seeds": args.seeds,
        "samplers": args.samplers,
        "n_samples": args.n_samples,
        "budgets": {f"regime_{r}": regimes[r][1] for r in args.regimes},
        "chains": {f"regime_{r}": regimes[r][0] for r in args.regimes},
    }
    tables: dict[str, list[dict]] = {"a": [], "b": []}
    for name in REGIMES:
        if name not in args.regimes:
            continue
        chains, budgets, title = regimes[name]
        table = _table(_regime(args.out / f"regime_{name}", chains, budgets, args))
        summary[f"regime_{name}"] = tables[name] = table
        _print(title, table)
    summary["checks"] = _checks(tables["a"], tables["b"], args.budgets_b)
    print()
    for k, v in summary["checks"].items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"-> {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
