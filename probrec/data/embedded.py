"""Real data that ships with the installed dependencies, for demos and offline tests.

The RDKit wheel carries one ChEMBL assay (``rdkit/Contrib/FreeWilson/data``):
CHEMBL2321810, 1,017 molecules with pIC50-like activities, used by RDKit's Free-Wilson example;
and the first 5,000 molecules of the NCI open database (``rdkit/Data/NCI/first_5K.smi``).
"""

from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from probrec.checks import check_choice, check_positive_int, check_real
from probrec.data.tasks import Task

CHEMBL_ASSAY = "CHEMBL2321810"


def rdkit_data_dir() -> Path:
    """Folder of the ChEMBL assay shipped inside the RDKit wheel."""
    try:
        import rdkit
    except ImportError as exc:  # pragma: no cover
        raise ImportError(
            "the embedded ChEMBL assay ships with RDKit: pip install 'probrec[mol]'"
        ) from exc
    path = Path(rdkit.__file__).parent / "Contrib" / "FreeWilson" / "data"
    if not (path / f"{CHEMBL_ASSAY}.smi").exists():
        raise FileNotFoundError(f"{CHEMBL_ASSAY}.smi not found under {path}; is RDKit complete?")
    return path


def load_rdkit_chembl_assay(kind: str = "regression", threshold: float | None = None) -> Task:
    """Loads ChEMBL assay CHEMBL2321810 from the RDKit wheel.

    Args:
        kind: ``"regression"`` (activity values) or ``"classification"`` (active when the
            activity is at least ``threshold``).
        threshold: activity cut-off for classification (default: the median activity, so the
            classes are balanced, as FS-Mol does for assays without a fixed threshold).

    Returns:
        A task of 1,017 molecules named ``"CHEMBL2321810"``.
    """
    check_choice(kind, "kind", ("regression", "classification"))
    d = rdkit_data_dir()
    smiles: dict[str, str] = {}
    with open(d / f"{CHEMBL_ASSAY}.smi") as fh:
        for line in fh:
            parts = line.split()
            if len(parts) >= 2:
                smiles[parts[1]] = parts[0]
    ids, acts = [], []
    with open(d / f"{CHEMBL_ASSAY}_act.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] in smiles and row["Act"].strip():
                ids.append(row["Name"])
                acts.append(float(row["Act"]))
    x = np.asarray([smiles[i] for i in ids], dtype=object)
    y = np.asarray(acts, dtype=np.float64)
    meta = {"source": str(d), "ids": ids, "units": "pIC50"}
    if kind == "classification":
        thr = (
            float(np.median(y))
            if threshold is None
            else check_real(threshold, "threshold", minimum=-math.inf)
        )
        meta["threshold"] = thr
        y = (y >= thr).astype(np.float64)
    return Task(x, y, kind, CHEMBL_ASSAY, meta)


def load_nci_smiles(n: int | None = None) -> list[str]:
    """The first ``n`` (default all 5,000) valid SMILES of the NCI set shipped with RDKit."""
    from probrec.data.featurize import parse_smiles

    try:
        import rdkit
    except ImportError as exc:  # pragma: no cover
        raise ImportError("the NCI molecules ship with RDKit: pip install 'probrec[mol]'") from exc
    path = Path(rdkit.__file__).parent / "Data" / "NCI" / "first_5K.smi"
    if not path.exists():
        raise FileNotFoundError(f"{path} not found; is RDKit complete?")
    smiles = [line.split()[0] for line in path.read_text().splitlines() if line.strip()]
    _, bad = parse_smiles(smiles)
    bad_set = set(bad)
    valid = [s for i, s in enumerate(smiles) if i not in bad_set]
    return valid if n is None else valid[: check_positive_int(n, "n")]  # -1 dropped the last
