"""``probrec featurize``: featurise the SMILES of a CSV into a cached ``.npy`` matrix."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np

from probrec.argtypes import whole


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("csv", help="CSV (or .csv.gz) with a SMILES column")
    parser.add_argument("--smiles-column", default=None, help="name of the SMILES column")
    parser.add_argument(
        "--out",
        default=None,
        help="output .npy (default: <csv stem>.features.npy in the current folder)",
    )
    parser.add_argument("--no-descriptors", action="store_true", help="fingerprints only")
    parser.add_argument("--jobs", type=whole(1), default=None, help="worker processes")
    parser.add_argument("--no-progress", action="store_true")


def run(args: argparse.Namespace) -> int:
    """Writes ``<out>`` (``[n_valid, dim]`` float32 features), ``<out stem>.rows.npy`` (the CSV
    data rows they belong to, 0-based: rows with invalid SMILES are left out, so row ``i`` of
    the features is data row ``rows[i]``) and ``<out stem>.featurizer.json`` (the fitted
    featurizer, for :meth:`~probrec.data.featurize.MoleculeFeaturizer.from_state_dict`)."""
    from probrec.data.featurize import MoleculeFeaturizer, parse_smiles
    from probrec.data.moleculenet import _find_smiles_column, _read_csv

    header, rows = _read_csv(args.csv)
    col = _find_smiles_column(header, args.smiles_column)
    smiles = [r[col] for r in rows]
    _, bad = parse_smiles(smiles)
    keep = np.setdiff1d(np.arange(len(smiles)), np.asarray(bad, dtype=np.int64))
    valid = [smiles[i] for i in keep]
    f = MoleculeFeaturizer(
        descriptors=not args.no_descriptors,
        n_jobs=args.jobs,
        progress=False if args.no_progress else None,
    )
    t = time.perf_counter()
    x = f.fit_transform(valid)
    out = Path(args.out or Path(args.csv).name.split(".")[0] + ".features.npy")
    if out.suffix != ".npy":  # np.save adds it: the message named a file that was not written
        out = out.with_name(out.name + ".npy")
    out.parent.mkdir(parents=True, exist_ok=True)  # a missing folder was a FileNotFoundError
    stem = out.with_suffix("")
    rows_path = stem.with_name(stem.name + ".rows.npy")
    state_path = stem.with_name(stem.name + ".featurizer.json")
    np.save(out, x)
    np.save(rows_path, keep.astype(np.int64))  # the features no longer line up with the CSV
    state_path.write_text(json.dumps(f.state_dict()))
    print(
        f"featurized {len(valid)} molecules into {out} [{x.shape[0]} x {x.shape[1]}] in "
        f"{time.perf_counter() - t:.1f} s; CSV rows of each feature row in {rows_path}, "
        f"featurizer in {state_path}"
    )
    if len(bad):
        shown = ", ".join(str(i) for i in list(bad)[:10]) + (", ..." if len(bad) > 10 else "")
        print(f"{len(bad)} invalid SMILES left out (data rows {shown})")
    return 0
