"""FS-Mol task files, the FS-Mol task split and raw ChEMBL assay tables.

FS-Mol (Stanley et al., "FS-Mol: A Few-Shot Learning Dataset of Molecules", NeurIPS 2021
Datasets and Benchmarks) stores one assay per ``<ASSAY_ID>.jsonl.gz`` file, one JSON object per
molecule with the fields

============================ ==================================================================
``SMILES``                   the molecule as recorded in ChEMBL (not the standardised form)
``Property``                 binary activity label, ``"1.0"`` / ``"0.0"``
``Assay_ID``                 ChEMBL assay id
``RegressionProperty``       activity value: concentration in nM (or a percentage for
                             inhibition assays)
``LogRegressionProperty``    ``-log10(RegressionProperty * 1e-9)``, i.e. pXC50 in -log10 M
``Relation``                 ``=``, ``<``, ``>``, ``<=``, ``>=`` or ``~`` between the true and
                             the recorded value
``AssayType``                ChEMBL assay type (``B`` binding, ``F`` functional, ...)
``fingerprints``,            pre-computed features and molecular graph (ignored here: featurise
``descriptors``, ``graph``   the SMILES with :class:`~probrec.data.featurize.MoleculeFeaturizer`)
============================ ==================================================================

Regression labels. ADKF-IFT (Chen et al., ICLR 2023; ``fs_mol/data/dkt.py`` with
``filter_numeric_labels=True``) regresses on the natural log of ``RegressionProperty``,
standardised per task with the support-set mean and standard deviation, and leaves out every
task whose values all lie in [0, 100] (percentage assays), or that holds a non-positive or
non-finite value -- 111 of the 157 FS-Mol test tasks remain. That is the default here
(``regression_target="ln_nM"``; the per-task standardisation belongs to the model). Because
``ln(v) = ln(10) * (9 - LogRegressionProperty)``, the standardised label is exactly minus the
standardised pXC50, so R^2 is the same for both; ``"neg_log10_M"`` (``LogRegressionProperty``,
larger = more potent) and ``"raw"`` (``RegressionProperty``) are available.

Raw ChEMBL tables (FS-Mol's query output: ``smiles, pchembl, standard_value, standard_units,
standard_relation, activity_comment, chembl_id, assay_type, ...``) are cleaned as FS-Mol's
``preprocessing/clean.py`` does, re-implemented here:

1. keep rows with ``standard_units`` in {nM, uM, %} (FS-Mol drops every other unit, so an assay
   recorded only in ug.mL-1 is dropped entirely; ``convert_mass_units=True`` converts ug.mL-1
   and ng.mL-1 to nM with the molecular weight instead -- an extension, not FS-Mol);
2. standardise the SMILES (charge parent: normalise, reionise, largest fragment, neutralise;
   then the canonical tautomer), drop rows without a value, drop molecules over 900 Da, drop
   exact (standardised SMILES, value) repeats, convert uM to nM, compute
   ``log_standard_value = -log10(value * 1e-9)``, then drop every measurement that lies more
   than one log unit (5 points for percentages) from another measurement of the same molecule
   -- skipped for assays of 5,000 rows or more, as in FS-Mol;
3. threshold: the assay median of ``log_standard_value`` if it lies in [4, 6] ([5, 7] for enzyme
   targets), else 5.0; for percentage assays the median if it is at least 50, else 50. Rows
   get ``active`` / ``weak active`` / ``weak inactive`` / ``inactive`` from their value, the
   threshold, a buffer of a tenth of the assay's standard deviation and the relation (rows
   inside the buffer with an unknown relation get no class and are dropped); the binary label
   is 1 for (weak) actives, i.e. ``value > threshold`` (``>=`` when the buffer is zero).

Checked against FS-Mol's own outputs: its ``CHEMBL1002396`` test fixture (same rows, log
values, threshold and labels; its four-class strings were written by an FS-Mol revision whose
buffer was one standard deviation, ``buffer_fraction=1.0``) and the CHEMBL1001235 table its
pipeline test writes. Differences from FS-Mol: a SMILES RDKit cannot parse is skipped and
counted (FS-Mol aborts the whole assay); an assay mixing percentages and concentrations raises
``ValueError`` (FS-Mol thresholds it by the unit of its first row). Like FS-Mol, exact repeats
are found before uM is converted to nM.
"""

from __future__ import annotations

import csv
import gzip
import json
import math
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from probrec.checks import check_choice, check_real
from probrec.data.featurize import _require_rdkit, parse_smiles
from probrec.data.tasks import Task, TaskSet
from probrec.progress import track

FSMOL_FOLDS = ("train", "valid", "test")
FSMOL_SUFFIX = ".jsonl.gz"
REGRESSION_TARGETS = ("ln_nM", "neg_log10_M", "raw")

#: Units FS-Mol keeps (``standard_unit_set`` of its cleaning utilities).
FSMOL_UNITS = ("nM", "uM", "%")
#: Mass concentrations converted with ``convert_mass_units=True``: nM = value * factor / MW.
MASS_UNITS_TO_NM = {"ug.mL-1": 1e6, "ng.mL-1": 1e3}
#: Columns a raw ChEMBL assay table must have.
CHEMBL_REQUIRED_COLUMNS = ("smiles", "standard_value", "standard_units", "standard_relation")

_LESS = frozenset({"<", "<="})
_MORE = frozenset({">", ">="})
_EQUAL = frozenset({"=", "~"})
_FAR_LOG = 1.0  # conflicting repeats: more than one log unit apart
_FAR_PERCENT = 5.0  # ... or more than 5 percentage points apart
_FAR_DUPLICATE_MAX_ROWS = 5000
_ACTIVITY_CLASSES = ("active", "weak active", "weak inactive", "inactive")


class ExcludedTaskError(ValueError):
    """A task that the requested regression protocol leaves out (ADKF-IFT's task filter)."""


# --------------------------------------------------------------------------------------------
# Regression labels shared by both loaders


def regression_labels(
    value: np.ndarray, log_value: np.ndarray, target: str, name: str
) -> tuple[np.ndarray, np.ndarray]:
    """Regression labels of one task and the mask of rows that have one.

    Args:
        value: ``[n]`` activity values (``RegressionProperty``, nM or %).
        log_value: ``[n]`` ``-log10(value * 1e-9)`` (``LogRegressionProperty``).
        target: ``"ln_nM"`` (ADKF-IFT: ``ln(value)``), ``"neg_log10_M"`` (``log_value``) or
            ``"raw"`` (``value``).
        name: task name, for messages.

    Returns:
        ``(labels [n], keep [n] bool)``; ``labels[keep]`` are finite. With ``"ln_nM"`` every row
        is kept or the task is excluded.

    Raises:
        ExcludedTaskError: ``"ln_nM"`` and the task fails ADKF-IFT's filter (all values in
            [0, 100], or any value non-positive or non-finite).
    """
    check_choice(target, "regression_target", REGRESSION_TARGETS)
    value = np.asarray(value, dtype=np.float64)
    if target == "ln_nM":
        if not np.isfinite(value).all():
            reason = f"{int((~np.isfinite(value)).sum())} missing or non-finite value(s)"
        elif (value <= 0).any():
            reason = f"{int((value <= 0).sum())} non-positive value(s)"
        elif ((value >= 0) & (value <= 100)).all():
            reason = "all values lie in [0, 100] (a percentage assay)"
        else:
            return np.log(value), np.ones(len(value), dtype=bool)
        raise ExcludedTaskError(
            f"task {name!r} is left out of ln(RegressionProperty) regression as in ADKF-IFT: "
            f"{reason}"
        )
    labels = np.asarray(log_value if target == "neg_log10_M" else value, dtype=np.float64)
    return labels, np.isfinite(labels)


# --------------------------------------------------------------------------------------------
# FS-Mol task files


def fsmol_task_name(path: str | Path) -> str:
    """Task name of an FS-Mol file: its file name without ``.jsonl.gz`` (or ``.jsonl``)."""
    name = Path(path).name
    for suffix in (FSMOL_SUFFIX, ".jsonl"):
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    opener = gzip.open if path.suffix == ".gz" else open
    records = []
    try:
        with opener(path, "rt", encoding="utf-8") as fh:  # type: ignore[operator]
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    rec = json.loads(line)
                except json.JSONDecodeError as exc:
                    raise ValueError(
                        f"{path}: line {lineno} is not valid JSON ({exc.msg})"
                    ) from exc
                if not isinstance(rec, dict):
                    raise ValueError(
                        f"{path}: line {lineno} holds a {type(rec).__name__}, "
                        "expected a JSON object"
                    )
                records.append(rec)
    except (gzip.BadGzipFile, EOFError, UnicodeDecodeError) as exc:
        raise ValueError(f"{path} is not a readable (gzipped) JSON-lines file: {exc}") from exc
    return records


def _field(records: Sequence[dict[str, Any]], key: str, path: Path) -> list[Any]:
    missing = [i + 1 for i, r in enumerate(records) if key not in r]
    if missing:
        raise ValueError(
            f"{path}: field {key!r} is missing in {len(missing)} record(s) (first at record "
            f"{missing[0]}); FS-Mol task files have SMILES, Property, RegressionProperty, "
            "LogRegressionProperty, Relation, AssayType"
        )
    return [r[key] for r in records]


def _as_float(v: Any) -> float:
    """FS-Mol's reading of a numeric field: empty or null is NaN."""
    if v is None or (isinstance(v, str) and not v.strip()):
        return math.nan
    return float(v)


def _floats(values: Sequence[Any], key: str, path: Path) -> np.ndarray:
    out = np.empty(len(values), dtype=np.float64)
    for i, v in enumerate(values):
        try:
            out[i] = _as_float(v)
        except (TypeError, ValueError) as exc:
            raise ValueError(
                f"{path}: field {key!r} of record {i + 1} is {v!r}, expected a number"
            ) from exc
    return out


def load_fsmol_task(
    path: str | Path,
    kind: str = "classification",
    *,
    regression_target: str = "ln_nM",
    validate_smiles: bool = True,
) -> Task:
    """Loads one FS-Mol task file (``<ASSAY_ID>.jsonl.gz``) as a :class:`Task` of SMILES.

    Args:
        path: the task file (gzipped JSON lines; a plain ``.jsonl`` also works).
        kind: ``"classification"`` (labels from ``Property``) or ``"regression"``.
        regression_target: ``"ln_nM"`` (ADKF-IFT's ``ln(RegressionProperty)``, default),
            ``"neg_log10_M"`` (``LogRegressionProperty``) or ``"raw"``
            (``RegressionProperty``); see the module docstring.
        validate_smiles: parse every SMILES with RDKit and skip the invalid ones (counted in
            ``metadata["n_skipped"]``, listed in ``metadata["skipped_smiles"]``).

    Returns:
        A task named after the file (``CHEMBL1000114.jsonl.gz`` -> ``"CHEMBL1000114"``), in file
        order, ``inputs`` the ``[n]`` SMILES; ``metadata`` has ``source``, ``assay_id``,
        ``assay_type``, ``n_skipped``, ``skipped_smiles`` and, for regression,
        ``regression_target`` and ``n_unlabelled`` (rows without a finite value, dropped).

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: unreadable file, a record that is not a JSON object, a missing field, a
            ``Property`` other than 0/1, or no usable molecule.
        ExcludedTaskError: regression with ``"ln_nM"`` on a task ADKF-IFT leaves out.

    Example:
        >>> task = load_fsmol_task("fs-mol/test/CHEMBL1119333.jsonl.gz")  # doctest: +SKIP
    """
    check_choice(kind, "kind", ("classification", "regression"))
    check_choice(regression_target, "regression_target", REGRESSION_TARGETS)
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"FS-Mol task file {str(p)!r} does not exist")
    name = fsmol_task_name(p)
    records = _read_jsonl(p)
    if not records:
        raise ValueError(f"FS-Mol task file {p} holds no records")
    smiles = _field(records, "SMILES", p)
    bad_type = [i + 1 for i, s in enumerate(smiles) if not isinstance(s, str)]
    if bad_type:
        raise ValueError(f"{p}: field 'SMILES' of record {bad_type[0]} is not a string")
    meta: dict[str, Any] = {
        "source": str(p),
        "assay_id": records[0].get("Assay_ID", name),
        "assay_type": records[0].get("AssayType"),
    }
    if kind == "classification":
        labels = _floats(_field(records, "Property", p), "Property", p)
        off = ~np.isin(labels, (0.0, 1.0))
        if off.any():
            i = int(np.flatnonzero(off)[0])
            raise ValueError(
                f"{p}: field 'Property' of record {i + 1} is {records[i]['Property']!r}; "
                "expected a 0/1 activity label"
            )
        keep = np.ones(len(records), dtype=bool)
    else:
        log_target = regression_target == "neg_log10_M"
        key = "LogRegressionProperty" if log_target else "RegressionProperty"
        vals = _floats(_field(records, key, p), key, p)
        value = vals if key == "RegressionProperty" else np.full(len(vals), np.nan)
        log_value = vals if key == "LogRegressionProperty" else np.full(len(vals), np.nan)
        labels, keep = regression_labels(value, log_value, regression_target, name)
        meta["regression_target"] = regression_target
        meta["n_unlabelled"] = int((~keep).sum())
    skipped: list[str] = []
    if validate_smiles:
        _, bad = parse_smiles(smiles)
        if bad:
            keep[bad] = False
            skipped = [smiles[i] for i in bad]
    meta["n_skipped"] = len(skipped)
    meta["skipped_smiles"] = skipped
    if not keep.any():
        raise ValueError(
            f"FS-Mol task {name!r} ({p}) has no molecule with a valid SMILES and label"
        )
    x = np.asarray(smiles, dtype=object)[keep]
    return Task(x, labels[keep], kind, name, meta)


def load_fsmol_dir(
    folder: str | Path,
    split: str | None = None,
    task_names: Sequence[str] | None = None,
    *,
    kind: str = "classification",
    regression_target: str = "ln_nM",
    validate_smiles: bool = True,
    progress: bool | None = None,
) -> TaskSet:
    """Loads many FS-Mol task files.

    Args:
        folder: a folder of ``*.jsonl.gz`` task files, or the FS-Mol data root holding
            ``train/``, ``valid/`` and ``test/`` when ``split`` is given.
        split: ``"train"``, ``"valid"`` or ``"test"``: read ``folder/split``.
        task_names: the tasks to load, in this order (e.g. ``load_fsmol_split(f)["test"]``);
            default: every task file, sorted by name.
        kind, regression_target, validate_smiles: as in :func:`load_fsmol_task`.
        progress: show a progress bar (``None``: when stderr is a terminal).

    Returns:
        A :class:`TaskSet`; ``skipped`` lists the invalid SMILES of all tasks and the extra
        attribute ``excluded`` maps the names of tasks ADKF-IFT's regression filter leaves out
        to the reason.

    Raises:
        FileNotFoundError: ``folder`` (or ``folder/split``) is not a folder.
        ValueError: unknown ``split``, task names without a file, or no task file found.
    """
    check_choice(kind, "kind", ("classification", "regression"))
    check_choice(regression_target, "regression_target", REGRESSION_TARGETS)
    root = Path(folder)
    if split is not None:
        check_choice(split, "split", FSMOL_FOLDS)
        root = root / split
    if not root.is_dir():
        raise FileNotFoundError(f"FS-Mol folder {str(root)!r} does not exist")
    if task_names is None:
        files = sorted(root.glob(f"*{FSMOL_SUFFIX}"), key=lambda f: fsmol_task_name(f))
        if not files:
            hint = "" if split else " (pass split= for FS-Mol's train/valid/test layout)"
            raise ValueError(f"no {FSMOL_SUFFIX} task files in {root}{hint}")
    else:
        if isinstance(task_names, str):
            raise TypeError("task_names must be a sequence of task names, not a single string")
        files = [root / f"{t}{FSMOL_SUFFIX}" for t in task_names]
        missing = [t for t, f in zip(task_names, files) if not f.is_file()]
        if missing:
            more = f" and {len(missing) - 5} more" if len(missing) > 5 else ""
            raise ValueError(
                f"unknown task name(s) {missing[:5]}{more}: no such {FSMOL_SUFFIX} file in {root}"
            )
    tasks, skipped, excluded = [], [], {}
    for f in track(files, progress=progress, desc=f"FS-Mol {split or root.name}", unit="task"):
        try:
            t = load_fsmol_task(
                f, kind, regression_target=regression_target, validate_smiles=validate_smiles
            )
        except ExcludedTaskError as exc:
            excluded[fsmol_task_name(f)] = str(exc)
            continue
        tasks.append(t)
        skipped.extend(t.metadata["skipped_smiles"])
    return TaskSet(tasks, skipped=skipped, excluded=excluded, source=str(root))


def load_fsmol_split(path: str | Path) -> dict[str, list[str]]:
    """Reads an FS-Mol task-split file such as ``datasets/fsmol-0.1.json``.

    The file is a JSON object ``{"train": [...], "valid": [...], "test": [...]}`` of assay ids
    (4,938 / 40 / 157 in FS-Mol 0.1).

    Returns:
        ``{"train": [...], "valid": [...], "test": [...]}`` in file order.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: not JSON, not an object, a missing or unknown fold name, a fold that is not
            a list of non-empty strings, a name repeated within a fold, or a task in two folds.
    """
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"FS-Mol split file {str(p)!r} does not exist")
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ValueError(f"FS-Mol split file {p} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(
            f"FS-Mol split file {p} holds a {type(data).__name__}; expected an object with the "
            f"folds {list(FSMOL_FOLDS)}"
        )
    unknown = sorted(set(data) - set(FSMOL_FOLDS))
    if unknown:
        raise ValueError(
            f"FS-Mol split file {p} has unknown fold name(s) {unknown}; "
            f"expected {list(FSMOL_FOLDS)}"
        )
    missing = [f for f in FSMOL_FOLDS if f not in data]
    if missing:
        raise ValueError(f"FS-Mol split file {p} lacks the fold(s) {missing}")
    out: dict[str, list[str]] = {}
    owner: dict[str, str] = {}
    for fold in FSMOL_FOLDS:
        names = data[fold]
        if not isinstance(names, list):
            raise ValueError(f"fold {fold!r} of {p} is a {type(names).__name__}, expected a list")
        for i, n in enumerate(names):
            if not isinstance(n, str) or not n.strip():
                raise ValueError(f"fold {fold!r} of {p}: entry {i} is {n!r}, expected a task name")
        dup = [n for n, c in Counter(names).items() if c > 1]
        if dup:
            raise ValueError(f"fold {fold!r} of {p} repeats task name(s) {sorted(dup)[:5]}")
        for n in names:
            if n in owner:
                raise ValueError(f"task {n!r} is in both fold {owner[n]!r} and {fold!r} of {p}")
            owner[n] = fold
        out[fold] = list(names)
    return out


# --------------------------------------------------------------------------------------------
# Raw ChEMBL assay tables (FS-Mol preprocessing format)


class _Standardizer:
    """FS-Mol's SMILES standardisation, re-implemented on RDKit's ``rdMolStandardize``.

    Charge parent (explicit H removal keeping isotopes, normalisation, reionisation, largest
    fragment preferring organic ones, neutralisation) followed by the canonical tautomer
    (at most 100 tautomers and 100 transforms, sp3 stereo kept). Results are cached by SMILES.
    """

    def __init__(self) -> None:
        Chem = _require_rdkit()
        from rdkit.Chem import Descriptors
        from rdkit.Chem.MolStandardize import rdMolStandardize as S

        self._chem, self._molwt = Chem, Descriptors.MolWt
        params = S.CleanupParameters()
        params.maxTautomers = 100
        params.maxTransforms = 100
        params.maxRestarts = 200
        params.preferOrganic = True
        params.tautomerRemoveSp3Stereo = False
        self._normalizer = S.Normalizer(params.normalizationsFile, params.maxRestarts)
        self._reionizer = S.Reionizer(params.acidbaseFile)
        self._chooser = S.LargestFragmentChooser(params.preferOrganic)
        self._uncharger = S.Uncharger()
        self._tautomers = S.TautomerEnumerator(params)
        self._cache: dict[str, tuple[str, float, int] | None] = {}

    def __call__(self, smiles: str) -> tuple[str, float, int] | None:
        """``(standardised SMILES, molecular weight, heavy atoms)`` of ``smiles``, or ``None``.

        Weight and atom count are those of the molecule as recorded (before standardisation).
        """
        if smiles not in self._cache:
            self._cache[smiles] = self._standardize(smiles)
        return self._cache[smiles]

    def _standardize(self, smiles: str) -> tuple[str, float, int] | None:
        Chem = self._chem
        mol = Chem.MolFromSmiles(smiles) if smiles else None
        if mol is None:
            return None
        try:
            weight, n_atoms = float(self._molwt(mol)), int(mol.GetNumAtoms())
            hs = Chem.RemoveHsParameters()
            hs.removeAndTrackIsotopes = True
            m = Chem.RemoveHs(mol, hs, sanitize=False)
            m = self._normalizer.normalize(m)
            Chem.SanitizeMol(m)
            m = self._reionizer.reionize(m)
            Chem.AssignStereochemistry(m)
            m = self._chooser.choose(m)
            m = self._uncharger.uncharge(m)
            Chem.SanitizeMol(m)
            m = Chem.RemoveHs(Chem.AddHs(m))
            m = self._tautomers.PickCanonical(self._tautomers.Enumerate(m))
            return Chem.MolToSmiles(m), weight, n_atoms
        except Exception:  # RDKit raises several types on pathological molecules
            return None


@dataclass(frozen=True, eq=False)
class CleanedAssay:
    """The rows of one ChEMBL assay table left by FS-Mol's cleaning, as column arrays.

    Row order is the file's. Attributes ending in ``[n]`` are arrays over the kept rows.

    Attributes:
        name: assay name (``chembl_id`` column, else the file stem).
        smiles: ``[n]`` SMILES as recorded (FS-Mol's ``SMILES`` field).
        canonical_smiles: ``[n]`` standardised SMILES (the de-duplication key).
        standard_value: ``[n]`` values in nM (in % for inhibition assays).
        standard_units: ``"nM"`` or ``"%"``.
        standard_relation: ``[n]`` relations (``=``, ``<``, ...).
        log_standard_value: ``[n]`` ``-log10(standard_value * 1e-9)`` (NaN below 1e-13 nM).
        molecular_weight: ``[n]`` in Da, of the recorded molecule.
        num_atoms: ``[n]`` heavy atoms of the recorded molecule.
        activity_string: ``[n]`` ``active`` / ``weak active`` / ``weak inactive`` /
            ``inactive``.
        activity: ``[n]`` binary labels (1 for active and weak active).
        threshold: the activity threshold (pXC50, or % for inhibition assays).
        buffer: half-width of the weak classes around the threshold.
        assay_type: ChEMBL assay type of the first row (``None`` without the column).
        counts: rows left after each cleaning stage (``raw``, ``units``, ``valid_smiles``,
            ``with_value``, ``max_mol_weight``, ``exact_duplicates``,
            ``conflicting_duplicates``, ``thresholded``).
        skipped_smiles: SMILES RDKit could not parse or standardise (dropped).
        source: the file read.
    """

    name: str
    smiles: np.ndarray
    canonical_smiles: np.ndarray
    standard_value: np.ndarray
    standard_units: str
    standard_relation: np.ndarray
    log_standard_value: np.ndarray
    molecular_weight: np.ndarray
    num_atoms: np.ndarray
    activity_string: np.ndarray
    activity: np.ndarray
    threshold: float
    buffer: float
    assay_type: str | None
    counts: dict[str, int] = field(default_factory=dict)
    skipped_smiles: list[str] = field(default_factory=list)
    source: str = ""

    def __len__(self) -> int:
        return len(self.smiles)

    @property
    def max_num_atoms(self) -> int:
        """Largest heavy-atom count of the assay (FS-Mol's ``max_num_atoms``)."""
        return int(self.num_atoms.max())

    @property
    def max_molecular_weight(self) -> float:
        """Largest molecular weight of the assay (FS-Mol's ``max_molecular_weight``)."""
        return float(self.molecular_weight.max())

    def to_task(self, kind: str = "classification", *, regression_target: str = "ln_nM") -> Task:
        """The assay as a :class:`Task` of SMILES (same rows, labels from ``kind``).

        Args:
            kind: ``"classification"`` (``activity``) or ``"regression"``.
            regression_target: as in :func:`load_fsmol_task`; percentage assays only allow
                ``"raw"``.

        Raises:
            ExcludedTaskError: ``"ln_nM"`` regression on an assay ADKF-IFT leaves out.
            ValueError: a concentration target for a percentage assay.
        """
        check_choice(kind, "kind", ("classification", "regression"))
        meta: dict[str, Any] = {
            "source": self.source,
            "assay_id": self.name,
            "assay_type": self.assay_type,
            "units": self.standard_units,
            "threshold": self.threshold,
            "buffer": self.buffer,
            "counts": dict(self.counts),
            "n_skipped": len(self.skipped_smiles),
            "skipped_smiles": list(self.skipped_smiles),
            "max_num_atoms": self.max_num_atoms,
            "max_molecular_weight": self.max_molecular_weight,
        }
        if kind == "classification":
            return Task(self.smiles, self.activity, kind, self.name, meta)
        check_choice(regression_target, "regression_target", REGRESSION_TARGETS)
        if self.standard_units == "%" and regression_target != "raw":
            raise ValueError(
                f"assay {self.name!r} records percentages; regression_target "
                f"{regression_target!r} needs concentrations (use 'raw')"
            )
        y, keep = regression_labels(
            self.standard_value, self.log_standard_value, regression_target, self.name
        )
        if not keep.any():
            raise ValueError(f"assay {self.name!r} has no finite {regression_target} label")
        meta["regression_target"] = regression_target
        meta["n_unlabelled"] = int((~keep).sum())
        return Task(self.smiles[keep], y[keep], kind, self.name, meta)


def _read_table(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    if not path.is_file():
        raise FileNotFoundError(f"assay table {str(path)!r} does not exist")
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", newline="", encoding="utf-8") as fh:  # type: ignore[operator]
            reader = csv.DictReader(fh)
            header = list(reader.fieldnames or [])
            rows = [r for r in reader if any((v or "").strip() for v in r.values())]
    except (OSError, EOFError, UnicodeDecodeError, csv.Error) as exc:  # named no file
        raise ValueError(f"assay table {str(path)!r} is not a readable CSV: {exc}") from exc
    missing = [c for c in CHEMBL_REQUIRED_COLUMNS if c not in header]
    if missing:
        raise ValueError(
            f"assay table {path} lacks the column(s) {missing}; FS-Mol's raw tables have "
            f"{list(CHEMBL_REQUIRED_COLUMNS)} (and pchembl, activity_comment, chembl_id, ...)"
        )
    if not rows:
        raise ValueError(f"assay table {path} has no rows")
    return header, rows


def _assay_name(rows: Sequence[dict[str, str]], path: Path, name: str | None) -> str:
    if name is not None:
        return name
    ids = {(r.get("chembl_id") or "").strip() for r in rows} - {""}
    if len(ids) == 1:
        return ids.pop()
    stem = path.name.split(".")[0]
    return stem


def _conflicting_rows(keys: Sequence[str], values: np.ndarray, tol: float) -> np.ndarray:
    """Rows that differ by more than ``tol`` from another row of the same molecule (key).

    FS-Mol's ``remove_far_duplicates`` groups each molecule's rows into connected components of
    the graph "differ by more than ``tol``" and drops every component of two or more rows;
    those are exactly the rows with at least one such partner. NaN values never conflict.

    Returns:
        ``[n]`` boolean mask of rows to drop.
    """
    groups: dict[str, list[int]] = {}
    for i, k in enumerate(keys):
        groups.setdefault(k, []).append(i)
    drop = np.zeros(len(keys), dtype=bool)
    for idx in groups.values():
        if len(idx) < 2:
            continue
        v = values[idx]
        with np.errstate(invalid="ignore"):
            far = np.abs(v[:, None] - v[None, :]) > tol  # NaN compares False
        drop[np.asarray(idx)[far.any(axis=1)]] = True
    return drop


def _activity_classes(
    value: np.ndarray, relation: Sequence[str], threshold: float, buffer: float, up: frozenset
) -> np.ndarray:
    """FS-Mol's four activity classes (``None`` where no rule applies).

    ``up`` is the set of relations that put the true value further towards "active" than the
    recorded one (``<`` for concentrations, ``>`` for inhibition percentages).
    """
    down = _MORE if up is _LESS else _LESS
    out = np.empty(len(value), dtype=object)
    hi, lo = threshold + buffer, threshold - buffer
    for i, (v, r) in enumerate(zip(value, relation)):
        if v >= hi:
            c = "active"
        elif threshold < v < hi:
            c = "active" if r in up else "weak active" if r in down | _EQUAL else None
        elif lo < v <= threshold:
            c = "weak inactive" if r in up | _EQUAL else "inactive" if r in down else None
        elif v <= lo:
            c = "inactive"
        else:  # NaN value, threshold or buffer
            c = None
        out[i] = c
    return out


def _is_enzyme(header: Sequence[str], rows: Sequence[dict[str, str]]) -> bool:
    """FS-Mol's test: some ``protein_class_desc`` mentions "enzyme" or contains "ase"."""
    if "protein_class_desc" not in header:
        return False
    return any(
        "enzyme" in d or "ase" in d for d in ((r.get("protein_class_desc") or "") for r in rows)
    )


def _nanstd(v: np.ndarray) -> float:
    v = v[np.isfinite(v)]
    return float(np.std(v, ddof=1)) if len(v) > 1 else math.nan


def clean_chembl_assay_table(
    path: str | Path,
    *,
    max_mol_weight: float = 900.0,
    threshold: str | float = "auto",
    buffer_fraction: float = 0.1,
    hard_only: bool = False,
    enzyme: bool | None = None,
    convert_mass_units: bool = False,
    name: str | None = None,
) -> CleanedAssay:
    """Cleans one raw ChEMBL assay table as FS-Mol's preprocessing does (see module docstring).

    Args:
        path: ``.csv`` (or ``.csv.gz``) with at least ``smiles``, ``standard_value``,
            ``standard_units`` and ``standard_relation``; ``chembl_id``, ``assay_type`` and
            ``protein_class_desc`` are used when present.
        max_mol_weight: molecules heavier than this (Da) are dropped (FS-Mol: 900).
        threshold: ``"auto"`` (FS-Mol's median rule), ``"fixed"`` (pXC50 5 or 50%, FS-Mol's
            ``--fixed-threshold``) or a number used as the threshold.
        buffer_fraction: with ``"auto"``, the weak-class buffer is this fraction of the assay's
            standard deviation (FS-Mol: 0.1; the fixed thresholds use 0.5 log units / 5%).
            It changes ``activity_string`` only, never the binary ``activity``.
        hard_only: keep only rows outside the buffer (``active`` / ``inactive``).
        enzyme: use the enzyme range [5, 7] for the median (default: FS-Mol's test on a
            ``protein_class_desc`` column; [4, 6] without one).
        convert_mass_units: also keep ug.mL-1 and ng.mL-1 rows, converted to nM with the
            molecular weight (not part of FS-Mol, which drops them).
        name: assay name (default: the ``chembl_id`` column, else the file stem).

    Returns:
        The cleaned rows.

    Raises:
        FileNotFoundError: ``path`` does not exist.
        ValueError: missing columns, a non-numeric ``standard_value``, an assay mixing
            percentages and concentrations, or no row left after a cleaning stage (FS-Mol then
            drops the assay, ``cleaning_failed``); the message names the stage.

    Example:
        >>> a = clean_chembl_assay_table("raw_CHEMBL1002396.csv")  # doctest: +SKIP
        >>> len(a), round(a.threshold, 2)  # doctest: +SKIP
        (33, 4.23)
    """
    max_mol_weight = check_real(max_mol_weight, "max_mol_weight", strict=True)
    if not (isinstance(threshold, (int, float)) and not isinstance(threshold, bool)):
        check_choice(threshold, "threshold", ("auto", "fixed"))  # type: ignore[arg-type]
    elif not math.isfinite(threshold):
        raise ValueError(f"threshold must be finite, got {threshold}")
    buffer_fraction = check_real(buffer_fraction, "buffer_fraction")
    p = Path(path)
    header, rows = _read_table(p)
    assay = _assay_name(rows, p, name)
    counts = {"raw": len(rows)}

    def fail(stage: str, detail: str = "") -> ValueError:
        return ValueError(
            f"assay {assay!r} ({p}): no row left after {stage}{detail}; FS-Mol's cleaning drops "
            "such an assay"
        )

    # 0. units FS-Mol accepts
    allowed = set(FSMOL_UNITS) | (set(MASS_UNITS_TO_NM) if convert_mass_units else set())
    units_all = [(r.get("standard_units") or "").strip() for r in rows]
    rows = [r for r, u in zip(rows, units_all) if u in allowed]
    counts["units"] = len(rows)
    if not rows:
        found = dict(Counter(u or "<empty>" for u in units_all))
        raise fail("unit selection", f" (units found {found}, accepted {sorted(allowed)})")
    values = np.empty(len(rows), dtype=np.float64)
    for i, r in enumerate(rows):
        try:
            values[i] = _as_float(r["standard_value"])
        except ValueError as exc:
            raise ValueError(
                f"assay table {p}: standard_value {r['standard_value']!r} is not a number"
            ) from exc

    # 1. standardise, filter, de-duplicate
    std = _Standardizer()
    parsed = [std((r.get("smiles") or "").strip()) for r in rows]
    skipped = [rows[i]["smiles"] for i, s in enumerate(parsed) if s is None]
    keep = [i for i, s in enumerate(parsed) if s is not None]
    counts["valid_smiles"] = len(keep)
    keep = [i for i in keep if not math.isnan(values[i])]
    counts["with_value"] = len(keep)
    keep = [i for i in keep if parsed[i][1] <= max_mol_weight]  # type: ignore[index]
    counts["max_mol_weight"] = len(keep)
    seen: set[tuple[str, float]] = set()
    unique = []
    for i in keep:  # FS-Mol keys on the value before unit conversion
        key = (parsed[i][0], float(values[i]))  # type: ignore[index]
        if key not in seen:
            seen.add(key)
            unique.append(i)
    keep = unique
    counts["exact_duplicates"] = len(keep)
    if not keep:
        raise fail("standardisation and filtering")

    canon = [parsed[i][0] for i in keep]  # type: ignore[index]
    weight = np.array([parsed[i][1] for i in keep], dtype=np.float64)  # type: ignore[index]
    n_atoms = np.array([parsed[i][2] for i in keep], dtype=np.int64)  # type: ignore[index]
    value = values[keep].copy()
    units = [rows[i]["standard_units"].strip() for i in keep]
    for j, u in enumerate(units):
        if u == "uM":
            value[j] *= 1000.0
        elif u in MASS_UNITS_TO_NM:
            value[j] *= MASS_UNITS_TO_NM[u] / weight[j]
        if u != "%":
            units[j] = "nM"
    if len(set(units)) > 1:
        raise ValueError(
            f"assay {assay!r} ({p}) mixes percentages and concentrations "
            f"({dict(Counter(units))}); clean the two parts separately"
        )
    unit = units[0]
    with np.errstate(divide="ignore", invalid="ignore"):
        log_value = np.where(value >= 1e-13, -np.log10(value * 1e-9), np.nan)
    if len(keep) < _FAR_DUPLICATE_MAX_ROWS:
        compare = value if unit == "%" else log_value
        tol = _FAR_PERCENT if unit == "%" else _FAR_LOG
        ok = ~_conflicting_rows(canon, compare, tol)
    else:
        ok = np.ones(len(keep), dtype=bool)
    counts["conflicting_duplicates"] = int(ok.sum())
    if not ok.any():
        raise fail("removing conflicting repeated measurements")
    sel = np.flatnonzero(ok)
    keep = [keep[i] for i in sel]
    canon = [canon[i] for i in sel]
    weight, n_atoms, value, log_value = weight[sel], n_atoms[sel], value[sel], log_value[sel]
    relation = [(rows[i].get("standard_relation") or "").strip() for i in keep]

    # 2. threshold
    score = value if unit == "%" else log_value
    if threshold == "auto":
        finite = score[np.isfinite(score)]
        median = float(np.median(finite)) if len(finite) else math.nan
        buf = buffer_fraction * _nanstd(score)
        if unit == "%":
            thr = median if median >= 50.0 else 50.0
        else:
            lo, hi = (
                (5.0, 7.0)
                if (enzyme if enzyme is not None else _is_enzyme(header, rows))
                else (4.0, 6.0)
            )
            thr = 5.0 if (median < lo or median > hi) else median
    else:
        thr = (50.0 if unit == "%" else 5.0) if threshold == "fixed" else float(threshold)
        buf = 5.0 if unit == "%" else 0.5
    up = _MORE if unit == "%" else _LESS
    classes = _activity_classes(score, relation, thr, buf, up)
    wanted = ("active", "inactive") if hard_only else _ACTIVITY_CLASSES
    ok = np.array([c in wanted for c in classes], dtype=bool)
    counts["thresholded"] = int(ok.sum())
    if not ok.any():
        raise fail("thresholding", f" (threshold {thr}, buffer {buf})")
    sel = np.flatnonzero(ok)
    classes = classes[sel]
    assay_type = (rows[keep[0]].get("assay_type") or None) if "assay_type" in header else None
    return CleanedAssay(
        name=assay,
        smiles=np.asarray([rows[keep[i]]["smiles"] for i in sel], dtype=object),
        canonical_smiles=np.asarray([canon[i] for i in sel], dtype=object),
        standard_value=value[sel],
        standard_units=unit,
        standard_relation=np.asarray([relation[i] for i in sel], dtype=object),
        log_standard_value=log_value[sel],
        molecular_weight=weight[sel],
        num_atoms=n_atoms[sel],
        activity_string=classes,
        activity=np.isin(classes, ("active", "weak active")).astype(np.float64),
        threshold=float(thr),
        buffer=float(buf),
        assay_type=assay_type,
        counts=counts,
        skipped_smiles=skipped,
        source=str(p),
    )


def load_chembl_assay_table(
    path: str | Path,
    kind: str = "classification",
    *,
    regression_target: str = "ln_nM",
    min_size: int = 1,
    **clean_options: Any,
) -> Task:
    """Loads a raw ChEMBL assay table, cleaned as FS-Mol does, as a :class:`Task` of SMILES.

    The rows, SMILES and labels are those FS-Mol would write to the assay's task file
    (``SMILES`` = recorded SMILES, ``Property`` = ``activity``, ``RegressionProperty`` =
    ``standard_value``, ``LogRegressionProperty`` = ``log_standard_value``), so this and
    :func:`load_fsmol_task` on FS-Mol's file give the same task.

    Args:
        path: the table (see :func:`clean_chembl_assay_table`).
        kind: ``"classification"`` or ``"regression"``.
        regression_target: as in :func:`load_fsmol_task`.
        min_size: raise when fewer rows survive (FS-Mol's featurisation step keeps any size by
            default; its ChEMBL query took assays with more than 32 measurements).
        **clean_options: passed to :func:`clean_chembl_assay_table` (``threshold``,
            ``max_mol_weight``, ``hard_only``, ``convert_mass_units``, ``name``, ...).

    Returns:
        The task; ``metadata`` holds the threshold, buffer, units, the row counts after each
        cleaning stage and the skipped SMILES.

    Raises:
        ValueError: see :func:`clean_chembl_assay_table`, or fewer than ``min_size`` rows.
        ExcludedTaskError: ``"ln_nM"`` regression on an assay ADKF-IFT leaves out.
    """
    check_choice(kind, "kind", ("classification", "regression"))
    if isinstance(min_size, bool) or not isinstance(min_size, int) or min_size < 1:
        raise ValueError(f"min_size must be an int >= 1, got {min_size!r}")
    assay = clean_chembl_assay_table(path, **clean_options)
    task = assay.to_task(kind, regression_target=regression_target)
    if len(task) < min_size:
        raise ValueError(
            f"assay {assay.name!r} keeps {len(task)} molecule(s) after cleaning, fewer than "
            f"min_size={min_size}"
        )
    return task
