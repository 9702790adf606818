"""Loader of the DOCKSTRING docking-score table: 58 protein targets as regression tasks.

DOCKSTRING (Garcia-Ortegon et al., J. Chem. Inf. Model. 2022) docks every molecule against 58
targets with AutoDock Vina; a score is a binding free energy estimate in kcal/mol (lower is
better). The table is wide: an ``inchikey`` column, a ``smiles`` column and one column per
target, empty or ``nan`` where docking failed.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["DOCKSTRING_TARGETS", "load_dockstring_targets"]

# the 58 targets of DOCKSTRING, in the column order of the published table
DOCKSTRING_TARGETS: tuple[str, ...] = (
    "PPARD", "ABL1", "ADAM17", "ADRB1", "ADRB2", "AKT2", "MAOB", "CASP3", "DHFR", "ESR2",
    "PTK2", "FGFR1", "HMGCR", "HSP90AA1", "KIT", "MAPKAPK2", "MAP2K1", "NOS1", "PARP1",
    "PDE5A", "PGR", "PTPN1", "ROCK1", "AKT1", "AR", "CDK2", "CSF1R", "ESR1", "NR3C1", "IGF1R",
    "JAK2", "LCK", "MET", "MMP13", "PTGS2", "PPARA", "PPARG", "REN", "ADORA2A", "ACHE",
    "BACE1", "CA2", "CYP2C9", "CYP3A4", "HSD11B1", "DPP4", "DRD2", "DRD3", "EGFR", "F10",
    "GBA", "MAPK1", "MAPK14", "PLK1", "SRC", "THRB", "F2", "KDR",
)  # fmt: skip

_MISSING = {"", "nan", "NaN", "NA", "null", "None"}


def load_dockstring_targets(
    path: str | Path,
    *,
    targets: Sequence[str] | None = None,
    smiles_column: str = "smiles",
) -> tuple[list[str], list[str], np.ndarray]:
    """Reads a DOCKSTRING table (``.csv`` or ``.csv.gz``).

    Example:
        >>> smiles, names, scores = load_dockstring_targets(
        ...     "../shared/data/molecules/ood/dockstring-dataset-subsampled.csv.gz"
        ... )  # doctest: +SKIP
        >>> scores.shape  # doctest: +SKIP
        (2312, 58)

    Args:
        path: the table.
        targets: target columns to return, in this order (default: all 58 of
            :data:`DOCKSTRING_TARGETS`, in that order).
        smiles_column: name of the SMILES column.

    Returns:
        ``(smiles, target_names, scores)``: ``N`` SMILES strings, the target names and a
        ``[N, len(target_names)]`` float64 array of docking scores, NaN where missing.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: no SMILES column, an unknown or absent target, a row of the wrong length,
            an empty SMILES, a value that is not a number, or an empty table.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"path {str(p)!r} does not exist or is not a file")
    names = list(DOCKSTRING_TARGETS if targets is None else targets)
    if isinstance(targets, str):
        raise TypeError("targets must be a sequence of target names, not a string")
    unknown = [t for t in names if t not in DOCKSTRING_TARGETS]
    if unknown:
        raise ValueError(f"unknown DOCKSTRING target(s) {unknown}; known: {DOCKSTRING_TARGETS}")
    if not names or len(set(names)) != len(names):
        raise ValueError(f"targets must be a non-empty list without repeats, got {names}")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        return _read(p, opener, names, smiles_column)
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:  # named no file
        raise ValueError(f"path {str(p)!r} is not a readable CSV: {exc}") from exc


def _read(
    p: Path, opener: Any, names: list[str], smiles_column: str
) -> tuple[list[str], list[str], np.ndarray]:
    with opener(p, "rt", newline="") as fh:
        reader = csv.reader(fh)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{p} is empty")
        if smiles_column not in header:
            raise ValueError(f"smiles_column {smiles_column!r} not in the columns of {p}: {header}")
        absent = [t for t in names if t not in header]
        if absent:
            raise ValueError(f"{p} lacks the target column(s) {absent}")
        s_col = header.index(smiles_column)
        cols = [header.index(t) for t in names]
        smiles: list[str] = []
        rows: list[list[float]] = []
        for line, row in enumerate(reader, start=2):
            if not row:
                continue
            if len(row) != len(header):
                raise ValueError(
                    f"{p} line {line}: {len(row)} fields, expected {len(header)} like the header"
                )
            s = row[s_col].strip()
            if not s:
                raise ValueError(f"{p} line {line}: empty SMILES")
            smiles.append(s)
            values = []
            for c in cols:
                v = row[c].strip()
                if v in _MISSING:
                    values.append(math.nan)
                    continue
                try:
                    values.append(float(v))
                except ValueError:
                    raise ValueError(
                        f"{p} line {line}, column {header[c]!r}: {v!r} is not a number"
                    ) from None
            rows.append(values)
    if not rows:
        raise ValueError(f"{p} has a header but no rows")
    scores = np.asarray(rows, dtype=np.float64)
    if np.isinf(scores).any():
        raise ValueError(f"{p} contains infinite scores")
    return smiles, names, scores
