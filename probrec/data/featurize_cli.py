"""``probrec featurize``: featurise the SMILES of a CSV into a cached ``.npy`` matrix."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", help="CSV (or .csv.gz) with a SMILES column")
    parser.add_argument("--smiles-column", default=None, help="name of the SMILES column")
    parser.add_argument(
        "--out", default=None, help="output .npy (default: <csv stem>.features.npy)"
    )
    parser.add_argument("--no-descriptors", action="store_true", help="fingerprints only")
    parser.add_argument("--jobs", type=int, default=None, help="worker processes")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    from probrec.data.featurize import MoleculeFeaturizer, parse_smiles
    from probrec.data.moleculenet import _find_smiles_column, _read_csv

    header, rows = _read_csv(args.csv)
    col = _find_smiles_column(header, args.smiles_column)
    smiles = [r[col] for r in rows]
    _, bad = parse_smiles(smiles)
    valid = [s for i, s in enumerate(smiles) if i not in set(bad)]
    f = MoleculeFeaturizer(
        descriptors=not args.no_descriptors,
        n_jobs=args.jobs,
        progress=False if args.no_progress else None,
    )
    t = time.perf_counter()
    x = f.fit_transform(valid)
    out = Path(args.out or Path(args.csv).name.split(".")[0] + ".features.npy")
    np.save(out, x)
    print(
        f"featurized {len(valid)} molecules ({len(bad)} invalid SMILES skipped) into {out} "
        f"[{x.shape[0]} x {x.shape[1]}] in {time.perf_counter() - t:.1f} s"
    )
    return 0
