"""MoG-40 at equal budget: DiGS, parallel tempering, MALA and HMC in the two regimes of issue 4.

- regime (a), the DiGS paper's: 10 chains started at the origin keep 1,000 samples each after
  burn-in (``--chains 10``);
- regime (b): 10,000 independent chains from the origin, each contributing its last state.

Runs ``samplers.bench`` (the runner behind ``probrec bench samplers``) for both regimes, then
prints mean +- standard error over seeds of MMD^2 against 10,000 exact samples, its noise floor
(two independent exact draws, same seed), MMD^2 / floor, mode coverage, mode-weight TV and the
relative error of E||x||^2, checks the targets of the issue (DiGS: 40/40 modes, TV <= 0.035 and
MMD^2 <= 1.5 x floor at 1,000 evaluations per sample in both regimes; DiGS better than PT in (a)
and at the lower budgets of (b)) and writes everything to ``--out/summary.json``.

Usage: ``python benchmarks/samplers_mog40.py [--seeds 0,1,2] [--out bench-results/mog40]``
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

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


def _regime(out: Path, chains: int, budgets: str, args: argparse.Namespace) -> list[dict]:
    parser = argparse.ArgumentParser()
    bench.add_arguments(parser)
    argv = [
        "--targets",
        "mog40",
        "--samplers",
        args.samplers,
        "--budgets",
        budgets,
        "--seeds",
        args.seeds,
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
        argv += ["--settings", args.settings]
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


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--samplers", default="digs,pt,mala,hmc")
    p.add_argument("--n-samples", type=int, default=10_000)
    p.add_argument("--budgets-a", default="1000", help="budgets of regime (a)")
    p.add_argument("--budgets-b", default="100,300,1000", help="budgets of regime (b)")
    p.add_argument(
        "--regimes", default="a,b", help="regimes to run; others are summarised from --out if there"
    )
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    p.add_argument("--settings", default=None, help="JSON sampler-setting overrides")
    p.add_argument("--out", type=Path, default=Path("bench-results") / "samplers_mog40")
    p.add_argument("--no-progress", action="store_true")
    args = p.parse_args(argv)
    regimes = [r.strip() for r in args.regimes.split(",")]
    summary: dict = {
        "benchmark": "samplers_mog40",
        "seeds": args.seeds,
        "n_samples": args.n_samples,
    }
    table_a: list[dict] = []
    table_b: list[dict] = []
    for name, chains, budgets, title in (
        ("a", 10, args.budgets_a, "regime (a): 10 chains from the origin, 1,000 samples each"),
        ("b", 0, args.budgets_b, "regime (b): 10,000 independent chains from the origin"),
    ):
        folder = args.out / f"regime_{name}"
        if name in regimes:
            rows = _regime(folder, chains, budgets, args)
        elif (folder / "results.json").is_file():  # summarise an earlier run of this regime
            rows = json.loads((folder / "results.json").read_text())["rows"]
        else:
            continue
        table = _table(rows)
        summary[f"regime_{name}"] = table
        if name == "a":
            table_a = table
        else:
            table_b = table
        _print(title, table)
    budgets_b = [float(b) for b in args.budgets_b.split(",")]
    summary["checks"] = _checks(table_a, table_b, budgets_b)
    print()
    for k, v in summary["checks"].items():
        print(f"{'PASS' if v else 'FAIL'}  {k}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "summary.json").write_text(json.dumps(json_safe(summary), indent=2))
    print(f"-> {args.out / 'summary.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
