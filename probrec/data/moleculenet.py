"""Loaders for molecule CSVs: wide multi-task tables (MoleculeNet) and single-target sets.

Wide tables have a SMILES column and one label column per task with NaN for unlabelled pairs;
each label column becomes one :class:`~probrec.data.tasks.Task` holding the molecules labelled
for it (Wu et al., "MoleculeNet: a benchmark for molecular machine learning", Chem. Sci. 2018).
Invalid SMILES are skipped and counted in :attr:`TaskSet.skipped`.
"""

from __future__ import annotations

import csv
import gzip
import math
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from probrec.checks import check_choice, check_positive_int
from probrec.data.featurize import parse_smiles
from probrec.data.tasks import Task, TaskSet


def _read_csv(path: str | Path) -> tuple[list[str], list[list[str]]]:
    p = Path(path)
    if not p.is_file():  # a folder raised IsADirectoryError
        raise FileNotFoundError(f"path {str(p)!r} does not exist or is not a file")
    opener = gzip.open if p.suffix == ".gz" else open
    try:
        with opener(p, "rt", newline="") as fh:  # type: ignore[operator]
            reader = csv.reader(fh)
            header = next(reader, None)
            if header is None:
                raise ValueError(f"{p} is empty (no header row)")
            rows = [r for r in reader if r]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:  # named no file
        raise ValueError(f"path {str(p)!r} is not a readable CSV: {exc}") from exc
    if not rows:
        raise ValueError(f"{p} has a header but no data rows")
    return header, rows


def _find_smiles_column(header: Sequence[str], smiles_column: str | None) -> int:
    if smiles_column is not None:
        if smiles_column not in header:
            raise ValueError(
                f"smiles_column {smiles_column!r} not in the CSV columns {list(header)}"
            )
        return header.index(smiles_column)
    for i, h in enumerate(header):
        if h.lower() in ("smiles", "canonical_smiles", "mol"):
            return i
    raise ValueError(f"no SMILES column found in {list(header)}; pass smiles_column=")


#: cells read as a missing label (anything else that is not a number is an error)
_MISSING = {"", "na", "n/a", "nan", "null", "none"}


def _to_float(value: str) -> float:
    if value.strip().lower() in _MISSING:
        return math.nan
    try:
        v = float(value)
    except ValueError:  # a label such as "yes" was dropped as unlabelled, silently
        raise ValueError(f"non-numeric label {value!r}") from None
    if math.isinf(v):  # was dropped as unlabelled, silently
        raise ValueError(f"infinite label {value!r}")
    return v


def _label_matrix(rows: Sequence[Sequence[str]], cols: Sequence[int]) -> np.ndarray:
    """``[n_rows, n_cols]`` float matrix; empty, missing or non-numeric cells become NaN."""
    seen: dict[str, float] = {}
    out = np.empty((len(rows), len(cols)), dtype=np.float64)
    for i, r in enumerate(rows):
        n = len(r)
        vals = []
        for c in cols:
            cell = r[c] if c < n else ""
            v = seen.get(cell)
            if v is None:
                try:
                    v = seen[cell] = _to_float(cell)
                except ValueError as exc:
                    raise ValueError(f"row {i + 1}, column {c}: {exc}") from None
            vals.append(v)
        out[i] = vals
    return out


def load_moleculenet(
    path: str | Path,
    *,
    smiles_column: str | None = None,
    tasks: Sequence[str] | None = None,
    kind: str = "classification",
    min_size: int = 1,
) -> TaskSet:
    """Loads a wide MoleculeNet-style CSV as one task per label column.

    Args:
        path: ``.csv`` or ``.csv.gz`` with a SMILES column and one label column per task.
        smiles_column: name of the SMILES column (default: found by name).
        tasks: label columns to load (default: every other column); unknown or repeated
            names and an empty list raise ``ValueError``, a single string ``TypeError``.
        kind: ``"classification"`` (labels 0/1) or ``"regression"``.
        min_size: tasks with fewer labelled molecules are dropped.

    Returns:
        A :class:`TaskSet`; ``skipped`` lists the invalid SMILES that were dropped,
        ``excluded`` the tasks under ``min_size`` (name -> reason).

    Example:
        >>> toxcast = load_moleculenet("../shared/data/molecules/moleculenet/toxcast_500.csv.gz")
        >>> len(toxcast)  # doctest: +SKIP
        500
    """
    check_choice(kind, "kind", ("classification", "regression"))
    min_size = check_positive_int(min_size, "min_size")
    header, rows = _read_csv(path)
    s_col = _find_smiles_column(header, smiles_column)
    short = next((i for i, r in enumerate(rows) if len(r) <= s_col), None)
    if short is not None:
        raise ValueError(f"{path}: data row {short + 1} has no SMILES cell (too few columns)")
    label_cols = [i for i in range(len(header)) if i != s_col]
    if tasks is not None:
        if isinstance(tasks, str):  # read as one task per character: "unknown ['C', 'T', ...]"
            raise TypeError(f"tasks must be a sequence of column names, got the string {tasks!r}")
        tasks = list(tasks)
        if not tasks:  # an empty TaskSet came back without a word
            raise ValueError("tasks is empty: name at least one label column, or pass None")
        repeated = sorted({t for t in tasks if tasks.count(t) > 1})
        if repeated:  # two identical tasks of one name, which evaluate / select then refuse
            raise ValueError(f"tasks repeats the column name(s) {repeated}")
        unknown = [t for t in tasks if t not in header or header.index(t) == s_col]
        if unknown:
            raise ValueError(f"unknown task name(s) {unknown} in {path}")
        label_cols = [header.index(t) for t in tasks]
    smiles = [r[s_col] for r in rows]
    _, bad = parse_smiles(smiles)
    bad_set = set(bad)
    keep = np.array([i not in bad_set for i in range(len(rows))])
    labels = _label_matrix(rows, label_cols)
    smiles_arr = np.asarray(smiles, dtype=object)
    out, excluded = [], {}
    for j, c in enumerate(label_cols):
        mask = keep & np.isfinite(labels[:, j])
        if mask.sum() < min_size:
            excluded[header[c]] = (
                f"{int(mask.sum())} labelled molecule(s) with a valid SMILES, fewer than "
                f"min_size={min_size}"
            )
            continue
        out.append(Task(smiles_arr[mask], labels[mask, j], kind, header[c], {"source": str(path)}))
    return TaskSet(out, skipped=[smiles[i] for i in bad], excluded=excluded, source=str(path))


def load_regression_csv(
    path: str | Path,
    label_column: str,
    *,
    smiles_column: str | None = None,
    transform: Callable[[np.ndarray], np.ndarray] | None = None,
    name: str | None = None,
) -> TaskSet:
    """Loads a single-target regression CSV (ESOL, FreeSolv, Lipophilicity, ...) as one task.

    Rows with an invalid SMILES or a missing label are dropped (invalid SMILES are listed in
    ``skipped``, rows without a label counted in the task's ``metadata["n_unlabelled"]``), and
    so are labels the transform leaves non-finite (their count is the task's
    ``metadata["dropped_labels"]``).

    Args:
        path: ``.csv`` or ``.csv.gz`` file.
        label_column: the target column.
        smiles_column: the SMILES column (default: found by name).
        transform: elementwise map applied to the labels (e.g. a unit conversion).
        name: task name (default: ``label_column``).

    Returns:
        A :class:`TaskSet` holding one regression task.
    """
    header, rows = _read_csv(path)
    if label_column not in header:
        raise ValueError(f"label_column {label_column!r} not in the CSV columns {header}")
    ts = load_moleculenet(
        path, smiles_column=smiles_column, tasks=[label_column], kind="regression"
    )
    if not len(ts):
        raise ValueError(f"{path}: no molecule has a label in {label_column!r}")
    task = ts[0]
    with np.errstate(divide="ignore", invalid="ignore"):  # non-finite results: dropped, counted
        y = task.labels if transform is None else np.asarray(transform(task.labels), dtype=float)
    if y.shape != task.labels.shape:  # a reduced or reshaped output mixed up rows
        raise ValueError(
            f"transform must map the labels {task.labels.shape} elementwise, returned shape "
            f"{y.shape}"
        )
    finite = np.isfinite(y)  # a transform may leave labels undefined (log of 0): dropped
    # rows with a valid SMILES but an empty label cell (COVID Moonshot: 136 of 2,062) were left
    # out without a count
    unlabelled = len(rows) - len(ts.skipped) - len(task)
    meta = {**task.metadata, "dropped_labels": int((~finite).sum()), "n_unlabelled": unlabelled}
    task = Task(task.inputs[finite], y[finite], "regression", name or label_column, meta)
    return TaskSet([task], skipped=ts.skipped, source=str(path))


def _covid_label(ic50_um: np.ndarray) -> np.ndarray:
    # negated pIC50: -(6 - log10(IC50 / uM)); smaller is better, as in ADKF-IFT's BO experiments
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.log10(ic50_um) - 6.0


# name -> (file under <root>/molecules, label column, label transform)
REGRESSION_SETS: dict[str, tuple[str, str, Callable[[np.ndarray], np.ndarray] | None]] = {
    "esol": ("moleculenet/delaney.csv", "logp", None),
    "freesolv": ("moleculenet/freesolv.csv", "freesolv", None),
    "lipophilicity": ("moleculenet/lipo.csv", "lipo", None),
    "covid_moonshot": ("ood/covid-moonshot-dataset.csv", "f_avg_IC50", _covid_label),
    "dockstring_esr2": ("ood/dockstring-dataset-subsampled.csv.gz", "ESR2", None),
    "cep_pce": ("ood/cep-dataset-subsampled.csv", "PCE", None),
}


def load_regression_set(name: str, root: str | Path = "../shared/data") -> Task:
    """Loads one of the named single-target sets of :data:`REGRESSION_SETS` under ``root``.

    ``covid_moonshot``'s label is the negated pIC50 computed from ``f_avg_IC50`` (in uM);
    ``dockstring_esr2`` is the ESR2 docking score; ``esol``'s values sit in a column named
    ``logp`` in the MoleculeNet copy.
    """
    check_choice(name, "name", tuple(REGRESSION_SETS))
    rel, col, fn = REGRESSION_SETS[name]
    return load_regression_csv(Path(root) / "molecules" / rel, col, transform=fn, name=name)[0]
