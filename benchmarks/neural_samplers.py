"""Neural samplers (issue 7): PTSD against parallel tempering on MoG-40 and Many-Well-32, and
DiKL on MoG-40 against DiGS.

Parts (``--parts``):

- ``mog40``: parallel tempering (the benchmark's ``pt``: MALA inside, 5 temperatures 1..1000) and
  PTSD (its ``mog40`` preset) at several budgets (target evaluations per sample, training
  included), 10,000 independent samples per run; MMD^2 against 10,000 exact samples (and its
  noise floor), mode coverage, mode-weight TV and W1 between energy histograms;
- ``mw32``: the same on Many-Well-32 with 2,000 samples (PT: MALA inside, 5 temperatures 1..10;
  PTSD: its ``mw32`` preset); W1 between energy histograms against exact samples (and its
  floor), the fraction of pairs in the heavier (right) well and the TV between the histograms
  of the number of pairs in the right well (a mode-weight TV over the 2^16 modes' classes);
- ``dikl``: DiKL (its ``mog40`` preset) on MoG-40: MMD^2, coverage, mode-weight TV, training
  time and evaluations, and the time to draw 10,000 samples from the trained generator, next
  to DiGS (the benchmark's settings, 300 evaluations per sample, 10,000 independent chains)
  timed in the same run; the samples (``dikl_mog40_samples_seed*.npy``) and a scatter plot
  per seed (``dikl_mog40_samples.png``).

For every metric it states how many times fewer evaluations PTSD needs than PT to reach the
quality PT reaches at each of its budgets (log-log interpolation along PTSD's mean curve; when
PTSD never gets there, or is better already at its smallest budget, the ratio is a bound or
missing). Writes ``results.json`` and ``quality_vs_evals.png`` into ``--out``.

Usage: ``python benchmarks/neural_samplers.py --seeds 1,2 --out bench-results/neural_samplers``;
runs of further seeds are merged (curves, ratios, figure; no training) with ``--from-json
a/results.json b/results.json --out merged``.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probrec.argtypes import choice_list, existing_path, json_objects_by_name, seed_list, whole
from probrec.reporting import format_mean_se, json_safe, mean_and_se, mean_se_summary
from probrec.runrecord import code_version
from samplers import bench, metrics
from samplers.dikl import DiKL

SETTINGS = {
    "mog40": {"n_samples": 10_000, "pt": [30, 100, 300, 1000], "ptsd": [40, 80, 160]},
    "mw32": {"n_samples": 2_000, "pt": [100, 300, 1000, 3000], "ptsd": [100, 300, 1000]},
}
METRICS = {
    "mog40": ["mmd2", "mode_weight_tv", "energy_w1"],
    "mw32": ["energy_w1", "n_right_tv", "right_well_fraction"],
}


def _n_right_tv(samples: torch.Tensor, ref: torch.Tensor) -> float:
    """TV between histograms of the number of pairs in the right well (0..16)."""
    m = samples.shape[1] // 2
    hs = torch.bincount((samples[:, 0::2] > 0).sum(1), minlength=m + 1).double()
    hr = torch.bincount((ref[:, 0::2] > 0).sum(1), minlength=m + 1).double()
    return float(0.5 * (hs / hs.sum() - hr / hr.sum()).abs().sum())


def _evaluate(tname: str, target, samples: torch.Tensor, seed: int, cache: dict) -> dict:
    out = bench.evaluate(tname, target, samples, seed, cache)
    n = samples.shape[0]
    ref = cache[f"{tname}/{n}/{seed}"][0]
    if tname == "mog40":
        out["energy_w1"] = metrics.energy_distance(samples, ref, target)
        key = f"mog40/floors/{n}/{seed}"
        if key not in cache:  # the same metrics for an independent exact draw
            other = target.sample(n, seed=20_000 + seed)
            cache[key] = (
                metrics.energy_distance(other, ref, target),
                metrics.mode_weight_tv(other, target),
            )
        out["energy_w1_floor"], out["mode_weight_tv_floor"] = cache[key]
    else:
        key = f"mw32/nright/{n}/{seed}"
        if key not in cache:
            cache[key] = _n_right_tv(target.sample(n, seed=20_000 + seed), ref)
        out["n_right_tv"] = _n_right_tv(samples, ref)
        out["n_right_tv_floor"] = cache[key]
    return out


def _run_one(
    tname: str, sname: str, budget: float, seed: int, target, cache, n: int, compile: bool
) -> dict:
    sampler = bench.make_sampler(
        sname, tname, n_chains=None, budget=budget, progress=False, compile=compile
    )
    res = sampler.run(target, n, seed=seed)
    row = {
        "target": tname,
        "sampler": sname,
        "budget": budget,
        "seed": seed,
        "n_samples": n,
        "n_evals": res.n_evals,
        "evals_per_sample": res.evals_per_sample,
        "wall_time": res.wall_time,
    }
    if sname == "ptsd":
        d = res.diagnostics
        row["hot_steps"], row["refine_steps"] = d["hot_steps"], d["refine_steps"]
        row["importance_ess"] = [lv["importance_ess_fraction"] for lv in d["levels"]]
        row["acceptance"] = [lv["acceptance_rate"] for lv in d["levels"]]
    row.update(_evaluate(tname, target, res.samples, seed, cache))
    print(
        f"{tname} {sname:5s} budget {budget:6g} seed {seed}: "
        + ", ".join(f"{m} {row[m]:.5g}" for m in METRICS[tname] if m in row)
        + f", evals/sample {row['evals_per_sample']:.1f}, {row['wall_time']:.0f} s",
        flush=True,
    )
    return row


def _curve(rows: list[dict], tname: str, sname: str, metric: str) -> list[dict]:
    by: dict[float, list[dict]] = {}
    for r in rows:
        if r["target"] == tname and r["sampler"] == sname and metric in r:
            by.setdefault(r["budget"], []).append(r)
    out = []
    for b in sorted(by):
        v = np.array([r[metric] for r in by[b]], float)
        e = np.array([r["evals_per_sample"] for r in by[b]], float)
        mean, se = mean_and_se(v)
        out.append(
            {
                "budget": b,
                "evals_per_sample": float(e.mean()),
                "mean": mean,
                "se": se,
                "n": len(v),
            }
        )
    return out


def _evals_to_reach(curve: list[dict], level: float) -> tuple[float | None, str]:
    """Evaluations per sample at which a decreasing mean curve reaches ``level`` (log-log)."""
    if not curve:
        return None, "no curve"
    if curve[0]["mean"] <= level:
        return curve[0]["evals_per_sample"], "at most"
    for a, b in zip(curve, curve[1:]):
        if a["mean"] > level >= b["mean"]:
            la, lb = math.log(a["mean"]), math.log(b["mean"])
            f = (math.log(level) - la) / (lb - la) if lb != la else 1.0
            le = math.log(a["evals_per_sample"]) + f * (
                math.log(b["evals_per_sample"]) - math.log(a["evals_per_sample"])
            )
            return math.exp(le), "interpolated"
    return None, "not reached"


def _evals_to_match(rows: list[dict], tname: str, given: str, other: str) -> list[dict]:
    """For each budget of sampler ``given``: the evaluations per sample ``other`` needs to
    reach ``given``'s mean quality (``given``, ``other``: ``"pt"`` / ``"ptsd"``)."""
    out = []
    for metric in METRICS[tname]:
        if metric == "right_well_fraction":
            continue
        ref, cmp_ = _curve(rows, tname, given, metric), _curve(rows, tname, other, metric)
        for q in ref:
            e, how = _evals_to_reach(cmp_, q["mean"])
            evals = {given: q["evals_per_sample"], other: e}
            out.append(
                {
                    "metric": metric,
                    f"{given}_budget": q["budget"],
                    f"{given}_quality": q["mean"],
                    f"{given}_evals_per_sample": q["evals_per_sample"],
                    f"{other}_evals_per_sample": e,
                    "how": how,
                    "ratio_pt_over_ptsd": None if e is None else evals["pt"] / evals["ptsd"],
                }
            )
    return out


def _savings(rows: list[dict], tname: str) -> list[dict]:
    """For each PT budget: PTSD's evaluations per sample to reach PT's mean quality."""
    return _evals_to_match(rows, tname, "pt", "ptsd")


def _pt_to_reach_ptsd(rows: list[dict], tname: str) -> list[dict]:
    """For each PTSD budget: PT's evaluations per sample to reach PTSD's mean quality."""
    return _evals_to_match(rows, tname, "ptsd", "pt")


def _plot(rows: list[dict], out: Path, targets: list[str]) -> Path:
    from samplers.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(len(targets), 3, figsize=(13, 3.6 * len(targets)), squeeze=False)
    for i, t in enumerate(targets):
        for j, metric in enumerate(METRICS[t]):
            ax = axes[i][j]
            for s in ("pt", "ptsd"):
                c = _curve(rows, t, s, metric)
                if not c:
                    continue
                ax.errorbar(
                    [p["evals_per_sample"] for p in c],
                    [p["mean"] for p in c],
                    yerr=np.nan_to_num([np.nan if p["se"] is None else p["se"] for p in c]),
                    marker="o",
                    capsize=3,
                    label={"pt": "parallel tempering", "ptsd": "PTSD"}[s],
                )
            floor = {
                "mmd2": "mmd2_floor",
                "energy_w1": "energy_w1_floor",
                "n_right_tv": "n_right_tv_floor",
                "mode_weight_tv": "mode_weight_tv_floor",
            }.get(metric)
            fl = [r[floor] for r in rows if r["target"] == t and floor and floor in r]
            if fl:
                ax.axhline(float(np.mean(fl)), color="k", ls="--", lw=1, label="noise floor")
            if metric == "right_well_fraction":
                ax.axhline(
                    float(
                        np.mean(
                            [
                                r["exact_right"]
                                for r in rows
                                if r["target"] == t and "exact_right" in r
                            ]
                            or [0.84]
                        )
                    ),
                    color="g",
                    ls=":",
                    lw=1,
                    label="exact",
                )
            ax.set_xscale("log")
            if metric != "right_well_fraction":
                ax.set_yscale("log")
            ax.set(
                xlabel="target evaluations per sample (training included)",
                ylabel=metric,
                title=f"{t}: {metric}",
            )
            ax.legend(fontsize=7)
    fig.tight_layout()
    path = out / "quality_vs_evals.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _plot_dikl(panels: list[tuple[int, torch.Tensor, dict]], target, out: Path) -> Path:
    """Scatter of DiKL samples (first 3,000) per seed over the MoG-40 means."""
    from samplers.plots import _plt

    plt = _plt()
    fig, axes = plt.subplots(1, len(panels), figsize=(4 * len(panels), 4), squeeze=False)
    for ax, (seed, x, row) in zip(axes[0], panels):
        x = x[:3000].cpu()
        ax.scatter(x[:, 0], x[:, 1], s=1, alpha=0.3)
        m = target.means.cpu()
        ax.scatter(m[:, 0], m[:, 1], c="r", marker="x", s=20)
        ax.set(xlim=(-50, 50), ylim=(-50, 50), aspect="equal")
        ax.set_title(
            f"seed {seed}: {row['modes_covered']}/40 modes, MMD^2 {row['mmd2']:.3f}, "
            f"TV {row['mode_weight_tv']:.2f}",
            fontsize=8,
        )
    fig.tight_layout()
    path = out / "dikl_mog40_samples.png"
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _dikl(seeds: list[int], cache: dict, out: Path, n: int = 10_000) -> list[dict]:
    target = bench.make_target("mog40", None)
    rows, panels = [], []
    for seed in seeds:
        s = bench.make_sampler("dikl", "mog40", n_chains=None, budget=None, progress=False)
        assert isinstance(s, DiKL)
        c0 = time.process_time()
        res = s.run(target, n, seed=seed)
        train_cpu = time.process_time() - c0
        draw = []
        for k in range(5):
            t0 = time.perf_counter()
            s.sample(n, seed=100 + k)
            draw.append(time.perf_counter() - t0)
        digs = bench.make_sampler(
            "digs", "mog40", n_chains=None, budget=300, progress=False, compile=False
        )
        rd = digs.run(target, n, seed=seed)
        row = {
            "target": "mog40",
            "sampler": "dikl",
            "seed": seed,
            "n_samples": n,
            "n_evals": res.n_evals,
            "evals_per_sample": res.evals_per_sample,
            "train_time": res.wall_time,
            "train_cpu_time": train_cpu,
            "draw_time_median": float(np.median(draw)),
            "draw_times": draw,
            "digs_wall_time": rd.wall_time,
            "digs_evals_per_sample": rd.evals_per_sample,
            **res.diagnostics,
        }
        row.update(_evaluate("mog40", target, res.samples, seed, cache))
        dg = _evaluate("mog40", target, rd.samples, seed, cache)
        row.update({f"digs_{k}": v for k, v in dg.items()})
        print(
            f"dikl seed {seed}: MMD^2 {row['mmd2']:.5f} (floor {row['mmd2_floor']:.5f}), modes "
            f"{row['modes_covered']}/40, TV {row['mode_weight_tv']:.4f}, "
            f"train {row['train_time']:.0f} s (CPU {train_cpu:.0f} s), "
            f"{row['evals_per_sample']:.0f} evals/sample, "
            f"draw 10k {row['draw_time_median'] * 1e3:.1f} ms; "
            f"DiGS (300/sample): MMD^2 "
            f"{row['digs_mmd2']:.5f}, TV {row['digs_mode_weight_tv']:.4f}, "
            f"{row['digs_wall_time']:.1f} s",
            flush=True,
        )
        rows.append(row)
        panels.append((seed, res.samples, row))
        np.save(out / f"dikl_mog40_samples_seed{seed}.npy", res.samples.cpu().numpy())
    _plot_dikl(panels, target, out)
    if len(rows) > 1:
        print("dikl: mean +- s.e. over seeds")
        for k in (
            "modes_covered",
            "mmd2",
            "mode_weight_tv",
            "train_time",
            "train_cpu_time",
            "draw_time_median",
            "digs_wall_time",
            "digs_mmd2",
            "digs_mode_weight_tv",
        ):
            stat = mean_se_summary([r[k] for r in rows])
            print(f"  {k:20s} {format_mean_se(stat, '.5g')}")
    return rows


def _summarise(rows: list[dict], t: str, result: dict) -> None:
    """Curves (mean +- s.e. per budget), the PT / PTSD evaluation ratios, printed tables."""
    result[f"{t}_curves"] = {
        s: {m: _curve(rows, t, s, m) for m in METRICS[t]} for s in ("pt", "ptsd")
    }
    print(f"\n{t}: mean +- s.e. over seeds")
    for s in ("pt", "ptsd"):
        for i, c in enumerate(result[f"{t}_curves"][s][METRICS[t][0]]):
            cells = []
            for m in METRICS[t]:
                e = result[f"{t}_curves"][s][m][i]
                cells.append(f"{m} {format_mean_se(e, '.5g')}")
            print(
                f"  {s:5s} budget {c['budget']:6g} ({c['evals_per_sample']:.1f}/sample, "
                f"{c['n']} seeds): " + ", ".join(cells)
            )
    result[f"{t}_pt_to_reach_ptsd"] = _pt_to_reach_ptsd(rows, t)
    print(f"{t}: evaluations PT needs to reach PTSD's quality")
    for e in result[f"{t}_pt_to_reach_ptsd"]:
        r = e["ratio_pt_over_ptsd"]
        print(
            f"  {e['metric']:14s} PTSD at {e['ptsd_evals_per_sample']:6.1f}/sample: "
            f"{e['ptsd_quality']:.5g} -> PT {e['how']} "
            f"{e['pt_evals_per_sample'] or float('nan'):.1f}/sample, "
            f"ratio {r if r is None else round(r, 2)}"
        )
    result[f"{t}_savings"] = _savings(rows, t)
    print(f"{t}: evaluations PT / PTSD to reach PT's quality")
    for e in result[f"{t}_savings"]:
        r = e["ratio_pt_over_ptsd"]
        print(
            f"  {e['metric']:14s} PT at {e['pt_budget']:6g}: {e['pt_quality']:.5g} -> "
            f"PTSD {e['how']} {e['ptsd_evals_per_sample'] or float('nan'):.1f}/sample, "
            f"ratio {r if r is None else round(r, 2)}"
        )


PARTS = ("mog40", "mw32", "dikl")


def budget_overrides(text: str) -> dict[str, dict[str, Any]]:
    """argparse type of ``--budgets``: a JSON object ``{target: {key: value}}`` over the
    targets and keys of :data:`SETTINGS` (``n_samples``: an integer >= 1; ``pt`` / ``ptsd``:
    non-empty lists of budgets > 0)."""
    value = json_objects_by_name(text, SETTINGS, "target")
    for t, by in value.items():
        for key, v in by.items():
            if key not in SETTINGS[t]:
                raise argparse.ArgumentTypeError(
                    f"unknown key {key!r} of {t!r}; choose from {', '.join(SETTINGS[t])}"
                )
            if key == "n_samples":
                if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                    raise argparse.ArgumentTypeError(
                        f"{t}.n_samples must be an integer >= 1, got {v!r}"
                    )
            elif (
                not isinstance(v, list)
                or not v
                or any(
                    isinstance(b, bool)
                    or not isinstance(b, (int, float))
                    or not math.isfinite(b)
                    or b <= 0
                    for b in v
                )
            ):
                raise argparse.ArgumentTypeError(
                    f"{t}.{key} must be a non-empty list of budgets > 0, got {v!r}"
                )
    return value


budget_overrides.__name__ = "JSON object"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=" ".join(__doc__.split("\n\n")[0].split()),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument(
        "--parts",
        type=choice_list(PARTS),
        default=None,
        help="comma-separated parts, of mog40,mw32,dikl; None: all three, or with --from-json "
        "mog40,mw32 (merging rows trains nothing)",
    )
    p.add_argument("--seeds", type=seed_list, default="1,2", help="distinct seeds")
    p.add_argument(
        "--samplers",
        type=choice_list(("pt", "ptsd")),
        default="pt,ptsd",
        help="samplers of the mog40 / mw32 parts, of pt,ptsd",
    )
    p.add_argument("--threads", type=whole(1), default=1, help="torch threads")
    p.add_argument(
        "--compile",
        default="off",
        choices=["on", "off"],
        help="torch.compile for PT (off: in this tree the compiled MALA-PT step mis-samples "
        "MoG-40, mode-weight TV 0.63 against 0.025 eager at 300 evaluations per sample)",
    )
    p.add_argument("--out", default="bench-results/neural_samplers", help="output folder")
    p.add_argument(
        "--budgets",
        type=budget_overrides,
        default=None,
        help='JSON overrides of the budgets and sizes, e.g. \'{"mw32": {"ptsd": [100, 300]}}\' '
        f"(targets {', '.join(SETTINGS)}; keys n_samples, pt, ptsd)",
    )
    p.add_argument(
        "--from-json",
        type=existing_path("file"),
        nargs="+",
        default=None,
        help="recompute curves, ratios and the figure from the rows of these results.json files",
    )
    return p


def _merged_settings(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The sizes and budgets the merged ``rows`` hold, per target (shaped as :data:`SETTINGS`;
    ``n_samples`` a list where the rows differ)."""
    out: dict[str, dict[str, Any]] = {}
    for t in SETTINGS:
        mine = [r for r in rows if r["target"] == t]
        if not mine:
            continue
        sizes = sorted({int(r["n_samples"]) for r in mine})
        entry: dict[str, Any] = {"n_samples": sizes[0] if len(sizes) == 1 else sizes}
        for s in ("pt", "ptsd"):
            budgets = sorted({r["budget"] for r in mine if r["sampler"] == s})
            if budgets:
                entry[s] = budgets
        out[t] = entry
    return out


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    settings = copy.deepcopy(SETTINGS)  # --budgets changes this run's copy only
    for t, by in (args.budgets or {}).items():
        settings[t].update(by)
    torch.set_num_threads(args.threads)
    seeds = args.seeds
    parts = args.parts or (["mog40", "mw32"] if args.from_json else list(PARTS))
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows: list[dict[str, Any]] = []
    cache: dict[str, Any] = {}
    targets = [t for t in ("mog40", "mw32") if t in parts]
    result: dict[str, Any] = {
        "parts": parts,
        # what this run runs: the targets of --parts, the samplers of --samplers
        "settings": {
            t: {"n_samples": settings[t]["n_samples"], **{s: settings[t][s] for s in args.samplers}}
            for t in targets
        },
        "seeds": seeds,
        "threads": args.threads,
        **code_version(),  # probrec version and git commit
        "torch": torch.__version__,
        "python": platform.python_version(),
    }

    def save() -> None:
        (out / "results.json").write_text(json.dumps(json_safe({**result, "rows": rows}), indent=2))

    if args.from_json:
        sources = []
        for f in args.from_json:
            saved = json.loads(Path(f).read_text())
            mine = [r for r in saved["rows"] if "budget" in r]
            rows += mine
            sources.append(
                {
                    "file": str(f),
                    "rows": len(mine),
                    "seeds": sorted({r["seed"] for r in mine}),
                    **{k: saved.get(k) for k in ("threads", "torch", "python")},
                }
            )
        targets = [t for t in targets if any(r["target"] == t for r in rows)]
        rows = [r for r in rows if r["target"] in targets]
        # the header describes the merged rows, not this invocation's defaults
        result["settings"] = _merged_settings(rows)
        result["seeds"] = sorted({r["seed"] for r in rows})
        result["parts"] = [p for p in parts if p in targets or p == "dikl"]
        result["merged_from"] = sources
        mog = bench.make_target("mog40", None)
        for r in rows:  # rows written before the MoG-40 floors were recorded
            if r["target"] == "mog40" and "energy_w1_floor" not in r:
                key = f"mog40/floors/{r['n_samples']}/{r['seed']}"
                if key not in cache:
                    ref = mog.sample(r["n_samples"], seed=10_000 + r["seed"])
                    other = mog.sample(r["n_samples"], seed=20_000 + r["seed"])
                    cache[key] = (
                        metrics.energy_distance(other, ref, mog),
                        metrics.mode_weight_tv(other, mog),
                    )
                r["energy_w1_floor"], r["mode_weight_tv_floor"] = cache[key]
    for t in targets:
        if args.from_json:
            break
        target = bench.make_target(t, None)
        n = settings[t]["n_samples"]
        for s in args.samplers:
            for b in settings[t][s]:
                for seed in seeds:
                    rows.append(
                        _run_one(t, s, float(b), seed, target, cache, n, args.compile == "on")
                    )
                    if t == "mw32":
                        ref = cache[f"mw32/{n}/{seed}"][0]
                        rows[-1]["exact_right"] = float((ref[:, 0::2] > 0).double().mean())
                    save()
    for t in targets:
        _summarise(rows, t, result)
        save()
    if targets:
        result["figure"] = str(_plot(rows, out, targets).name)
    if "dikl" in parts:
        result["dikl"] = _dikl(seeds, cache, out)
    save()
    print(f"results: {out / 'results.json'}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
