"""Featurisation speed on ToxCast: first call (cold cache), second call (cache hit), baseline.

Baseline, measured in the same run on a random subset of the same molecules: RDKit's own
sequential loop (``Descriptors.CalcMolDescriptors`` + Morgan count fingerprint per molecule,
one process). Prints a summary and writes JSON.

Example:
    python benchmarks/featurize_toxcast.py --out bench-results/featurize_toxcast.json
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np

from probrec.argtypes import HelpFormatter, existing_path, whole
from probrec.reporting import json_safe

DEFAULT = (
    Path(__file__).resolve().parents[1].parent
    / "shared/data/molecules/moleculenet/toxcast_500.csv.gz"
)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument(
        "--data",
        type=existing_path("file"),
        default=str(DEFAULT),
        help="ToxCast CSV (MoleculeNet format) whose molecules are featurised",
    )
    p.add_argument(
        "--baseline-molecules",
        type=whole(1),
        default=500,
        help="molecules the RDKit baseline is timed on (a random subset)",
    )
    p.add_argument("--jobs", type=whole(1), default=None, help="worker processes (None: all cores)")
    p.add_argument("--out", default="bench-results/featurize_toxcast.json", help="JSON output file")
    return p


def main(argv=None) -> dict:
    args = build_parser().parse_args(argv)

    from rdkit import Chem
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    from probrec.data import MoleculeFeaturizer, load_moleculenet

    t0 = time.perf_counter()
    tasks = load_moleculenet(args.data)
    t_load = time.perf_counter() - t0
    smiles = sorted({s for t in tasks for s in t.inputs})
    with tempfile.TemporaryDirectory() as cache:
        f = MoleculeFeaturizer(cache_dir=cache, n_jobs=args.jobs, progress=False)
        t0 = time.perf_counter()
        x1 = f.fit_transform(smiles)
        t_cold = time.perf_counter() - t0
        f2 = MoleculeFeaturizer(cache_dir=cache, n_jobs=args.jobs, progress=False)
        t0 = time.perf_counter()
        x2 = f2.fit_transform(smiles)
        t_warm = time.perf_counter() - t0
    assert np.array_equal(x1, x2), "cache hit must give identical features"
    rng = np.random.default_rng(0)
    sub = [
        smiles[i]
        for i in rng.choice(len(smiles), min(args.baseline_molecules, len(smiles)), replace=False)
    ]
    gen = rdFingerprintGenerator.GetMorganGenerator(radius=2, fpSize=2048)
    t0 = time.perf_counter()
    for s in sub:
        m = Chem.MolFromSmiles(s)
        gen.GetCountFingerprintAsNumPy(m)
        Descriptors.CalcMolDescriptors(m)
    t_base_per_mol = (time.perf_counter() - t0) / len(sub)
    t_base = t_base_per_mol * len(smiles)
    out = {
        "benchmark": "featurize_toxcast",
        "n_tasks": len(tasks),
        "n_molecules": len(smiles),
        "n_features": int(x1.shape[1]),
        "seconds": {
            "load_csv": t_load,
            "cold": t_cold,
            "cache_hit": t_warm,
            "baseline_extrapolated": t_base,
        },
        "speedup_cold_vs_baseline": t_base / t_cold,
        "environment": {
            "python": platform.python_version(),
            "cpus": os.cpu_count(),
            "jobs": f.n_jobs,
        },
        "targets": {"cold_under_s": 60, "cache_hit_under_s": 5},
    }
    print(
        f"ToxCast: {len(tasks)} tasks, {len(smiles)} molecules x {x1.shape[1]} features | "
        f"cold {t_cold:.1f} s, cache hit {t_warm:.2f} s | RDKit sequential baseline "
        f"{t_base:.1f} s (extrapolated from {len(sub)}) -> {t_base / t_cold:.2f}x"
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(json_safe(out), indent=1, allow_nan=False))
    return out


if __name__ == "__main__":
    main()
