"""Molecule featurisation: RDKit Morgan count fingerprints and 2-D descriptors.

Features are computed in batches across worker processes with a progress bar and cached on
disk under a content hash of (configuration, SMILES list), so the second call on the same
molecules is a file read. Descriptors are imputed and standardised with statistics fitted on
training molecules only (:meth:`MoleculeFeaturizer.fit`), as in FS-Mol's and ADKF-IFT's input
pipelines (Stanley et al., NeurIPS 2021; Chen et al., ICLR 2023).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
import zipfile
from collections.abc import Sequence
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

from probrec.checks import check_positive_int, check_real
from probrec.progress import track

_CACHE_VERSION = 2


def default_cache_dir() -> Path:
    """``$PROBREC_CACHE`` or ``~/.cache/probrec``."""
    return Path(os.environ.get("PROBREC_CACHE", Path.home() / ".cache" / "probrec"))


def _require_rdkit():
    try:
        from rdkit import Chem, RDLogger

        RDLogger.DisableLog("rdApp.*")
        return Chem
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("molecule featurisation needs RDKit: pip install 'probrec[mol]'") from exc


def parse_smiles(smiles: Sequence[str]) -> tuple[list[Any], list[int]]:
    """Parses SMILES with RDKit; returns (molecules, indices of invalid SMILES)."""
    Chem = _require_rdkit()
    mols, bad = [], []
    for i, s in enumerate(smiles):
        m = Chem.MolFromSmiles(s) if isinstance(s, str) and s else None
        mols.append(m)
        if m is None:
            bad.append(i)
    return mols, bad


def descriptor_names() -> list[str]:
    """Names of the RDKit 2-D descriptors computed (RDKit's ``Descriptors._descList`` order)."""
    _require_rdkit()
    from rdkit.Chem import Descriptors

    return [name for name, _ in Descriptors._descList]


def _descriptor_values(mol: Any, funcs: Sequence[tuple[str, Any]]) -> list[float]:
    """RDKit 2-D descriptors of one molecule, in ``funcs`` order (NaN where RDKit fails).

    Values equal ``fn(mol)`` for every ``(name, fn)`` in RDKit's descriptor list; the four
    E-state extremes and the two Ipc descriptors share one computation of their common
    intermediate (E-state indices, characteristic polynomial) instead of repeating it.
    """
    from rdkit.Chem import Graphs
    from rdkit.Chem.EState import EStateIndices
    from rdkit.ML.InfoTheory import entropy

    shared: dict[str, float] = {}
    try:
        est = EStateIndices(mol, force=True)
        if len(est):
            shared.update(
                MaxEStateIndex=float(max(est)),
                MinEStateIndex=float(min(est)),
                MaxAbsEStateIndex=float(max(abs(est))),
                MinAbsEStateIndex=float(min(abs(est))),
            )
        adj = np.equal(_distance_matrix(mol), 1)
        cpoly = abs(Graphs.CharacteristicPolynomial(mol, adj))
        info = entropy.InfoEntropy(cpoly)
        shared.update(Ipc=float(sum(cpoly) * info), AvgIpc=float(info))
    except Exception:  # fall back to RDKit's own functions below
        shared = {}
    values = []
    for name, fn in funcs:
        v = shared.get(name)
        if v is None:
            try:
                v = float(fn(mol))
            except Exception:  # RDKit raises assorted errors on exotic molecules
                v = np.nan
        values.append(v)
    return values


def _distance_matrix(mol: Any) -> np.ndarray:
    """Topological distance matrix, cached on the molecule as RDKit's Ipc does."""
    from rdkit import Chem

    try:
        return mol._adjMat
    except AttributeError:
        mol._adjMat = Chem.GetDistanceMatrix(mol, False)
        return mol._adjMat


def _featurize_chunk(args: tuple[list[str], bool, bool, int, int]) -> np.ndarray:
    """Worker: raw features of one chunk of SMILES, ``[n, d]`` float64 (descriptors may be NaN)."""
    smiles, use_fp, use_desc, radius, n_bits = args
    Chem = _require_rdkit()
    from rdkit.Chem import Descriptors, rdFingerprintGenerator

    gen = rdFingerprintGenerator.GetMorganGenerator(radius=radius, fpSize=n_bits)
    funcs = Descriptors._descList
    n_desc = len(funcs) if use_desc else 0
    out = np.zeros((len(smiles), (n_bits if use_fp else 0) + n_desc), dtype=np.float64)
    for i, s in enumerate(smiles):
        mol = Chem.MolFromSmiles(s)
        if mol is None:
            raise ValueError(f"smiles[{i}] is not a valid SMILES string: {s!r}")
        col = 0
        if use_fp:
            out[i, :n_bits] = gen.GetCountFingerprintAsNumPy(mol)
            col = n_bits
        if use_desc:
            out[i, col:] = _descriptor_values(mol, funcs)
    out[~np.isfinite(out)] = np.nan
    return out


class MoleculeFeaturizer:
    """Morgan count fingerprints (radius 2, 2048 bins) and standardised RDKit 2-D descriptors.

    Output columns: ``[fingerprint counts (n_bits) | descriptors (217 in RDKit 2026)]``.
    Fingerprint counts are used as they are (or ``log1p``-transformed); descriptors are
    imputed with the training median, standardised with the training mean and standard
    deviation and clipped to ``[-clip, clip]``.

    Example:
        >>> f = MoleculeFeaturizer(cache_dir=False, progress=False)
        >>> x = f.fit_transform(["CCO", "c1ccccc1O"])  # [2, 2265] float32

    Args:
        fingerprint: include Morgan count fingerprints.
        descriptors: include RDKit 2-D descriptors.
        radius: Morgan radius.
        n_bits: fingerprint length.
        count_transform: ``"none"`` or ``"log1p"`` applied to fingerprint counts.
        clip: bound on standardised descriptor values.
        cache_dir: folder of the on-disk cache, ``None`` for :func:`default_cache_dir`,
            ``False`` to disable caching.
        n_jobs: worker processes (default: all cores).
        batch_size: molecules per worker batch.
        progress: show a progress bar (``None``: when attached to a terminal).
    """

    def __init__(
        self,
        *,
        fingerprint: bool = True,
        descriptors: bool = True,
        radius: int = 2,
        n_bits: int = 2048,
        count_transform: str = "none",
        clip: float = 10.0,
        cache_dir: str | Path | None | bool = None,
        n_jobs: int | None = None,
        batch_size: int = 256,
        progress: bool | None = None,
    ) -> None:
        if not (fingerprint or descriptors):
            raise ValueError("at least one of fingerprint / descriptors must be True")
        if count_transform not in ("none", "log1p"):
            raise ValueError(f"unknown count_transform {count_transform!r}; use 'none' or 'log1p'")
        self.fingerprint, self.descriptors = fingerprint, descriptors
        # checked by name (n_bits=0 failed inside RDKit, clip=-1 set every descriptor to -1)
        self.radius = check_positive_int(radius, "radius", minimum=0)
        self.n_bits = check_positive_int(n_bits, "n_bits")
        self.count_transform, self.clip = count_transform, check_real(clip, "clip", strict=True)
        self.cache_dir = None if cache_dir is False else Path(cache_dir or default_cache_dir())
        self.n_jobs = int(n_jobs or os.cpu_count() or 1)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.progress = progress
        self.n_desc = len(descriptor_names()) if descriptors else 0
        self.stats_: dict[str, np.ndarray] | None = None

    # ------------------------------------------------------------------ raw features
    @property
    def dim(self) -> int:
        """Number of output columns."""
        return (self.n_bits if self.fingerprint else 0) + self.n_desc

    @property
    def feature_names(self) -> list[str]:
        fp = [f"morgan{self.radius}_{i}" for i in range(self.n_bits)] if self.fingerprint else []
        return fp + (descriptor_names() if self.descriptors else [])

    def _config(self) -> dict[str, Any]:
        from rdkit import __version__ as rdkit_version

        return {
            "v": _CACHE_VERSION,
            "rdkit": rdkit_version,
            "fp": self.fingerprint,
            "desc": self.descriptors,
            "radius": self.radius,
            "n_bits": self.n_bits,
        }

    def cache_key(self, smiles: Sequence[str]) -> str:
        """Content hash of the configuration and the ordered SMILES list."""
        h = hashlib.sha256(json.dumps(self._config(), sort_keys=True).encode())
        for s in smiles:
            # length-prefixed: with a bare newline separator, ["C\nC", "O"] and ["C", "C\nO"]
            # (RDKit reads text after whitespace as a name: both valid) shared an entry
            b = s.encode()
            h.update(b"%d:" % len(b))
            h.update(b)
        return h.hexdigest()[:32]

    def raw_features(self, smiles: Sequence[str]) -> np.ndarray:
        """Unstandardised features ``[n, dim]`` float64 (descriptors may be NaN), cached on disk.

        Raises:
            ValueError: an entry is not a valid SMILES string (its index is named).
        """
        if isinstance(smiles, str):
            raise TypeError("smiles must be a sequence of SMILES strings, got a single str")
        smiles = [str(s) for s in smiles]
        if not smiles:
            raise ValueError("smiles is empty")
        path = None
        if self.cache_dir is not None:
            path = self.cache_dir / "features" / f"{self.cache_key(smiles)}.npz"
            if path.exists():
                cached = self._read_cache(path, len(smiles))
                if cached is not None:
                    return cached
        _, bad = parse_smiles(smiles)
        if bad:
            raise ValueError(
                f"smiles contains {len(bad)} invalid SMILES string(s), first at index {bad[0]}: "
                f"{smiles[bad[0]]!r}"
            )
        chunks = [smiles[i : i + self.batch_size] for i in range(0, len(smiles), self.batch_size)]
        jobs = [(c, self.fingerprint, self.descriptors, self.radius, self.n_bits) for c in chunks]
        bar = track(total=len(smiles), progress=self.progress, desc="featurize", unit="mol")
        results: list[np.ndarray] = []
        if self.n_jobs > 1 and len(chunks) > 1:
            with ProcessPoolExecutor(max_workers=min(self.n_jobs, len(chunks))) as pool:
                for out in pool.map(_featurize_chunk, jobs):
                    results.append(out)
                    bar.update(len(out))
        else:
            for job in jobs:
                results.append(_featurize_chunk(job))
                bar.update(len(results[-1]))
        bar.close()
        raw = np.concatenate(results, axis=0)
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            tmp = path.with_suffix(".tmp.npz")
            fp = raw[:, : self.n_bits] if self.fingerprint else np.zeros((len(raw), 0))
            desc = raw[:, -self.n_desc :] if self.descriptors else np.zeros((len(raw), 0))
            np.savez(
                tmp,
                fp=fp.astype(np.uint16 if fp.max(initial=0) < 65535 else np.float32),
                desc=desc.astype(np.float64),
            )
            os.replace(tmp, path)
        return raw

    def _read_cache(self, path: Path, n: int) -> np.ndarray | None:
        """A cached ``[n, dim]`` entry, or ``None`` (with a warning naming the file) when it
        cannot be read or holds another shape: it is then computed and written again."""
        try:
            with np.load(path) as z:
                parts = [z["fp"].astype(np.float64)] if self.fingerprint else []
                if self.descriptors:
                    parts.append(z["desc"].astype(np.float64))
            raw = np.concatenate(parts, axis=1) if len(parts) > 1 else parts[0]
            if raw.shape != (n, self.dim):
                raise ValueError(f"shape {raw.shape}, expected {(n, self.dim)}")
            return raw
        except (OSError, EOFError, KeyError, ValueError, zipfile.BadZipFile) as exc:
            warnings.warn(
                f"MoleculeFeaturizer: ignoring the damaged cache file {path} ({exc}); "
                "the features are computed again",
                RuntimeWarning,
                stacklevel=3,
            )
            return None

    # ------------------------------------------------------------------ standardisation
    def fit(self, smiles: Sequence[str]) -> MoleculeFeaturizer:
        """Fits descriptor imputation and standardisation on training molecules only."""
        return self.fit_raw(self.raw_features(smiles))

    def _check_raw(self, raw: np.ndarray) -> np.ndarray:
        """``raw`` as an array, refused unless it is ``[n, dim]`` (another featurizer's raw
        features split their fingerprint and descriptor columns at the wrong place)."""
        raw = np.asarray(raw)
        if raw.ndim != 2 or raw.shape[1] != self.dim:
            raise ValueError(
                f"raw must be raw_features output of shape [n, {self.dim}] for this featurizer, "
                f"got {raw.shape}"
            )
        return raw

    def fit_raw(self, raw: np.ndarray) -> MoleculeFeaturizer:
        """Like :meth:`fit`, from :meth:`raw_features` output ``[n, dim]``."""
        raw = self._check_raw(raw)
        if len(raw) == 0:  # every statistic would be NaN
            raise ValueError("fit needs at least one molecule")
        desc = raw[:, raw.shape[1] - self.n_desc :] if self.n_desc else np.zeros((len(raw), 0))
        with np.errstate(all="ignore"):
            median = np.nanmedian(desc, axis=0) if self.n_desc else np.zeros(0)
        median = np.where(np.isfinite(median), median, 0.0)
        filled = np.where(np.isnan(desc), median, desc)
        mean = filled.mean(axis=0)
        std = filled.std(axis=0)
        std = np.where(std > 1e-12, std, 1.0)
        self.stats_ = {"median": median, "mean": mean, "std": std}
        return self

    def transform_raw(self, raw: np.ndarray) -> np.ndarray:
        """Standardises :meth:`raw_features` output; returns ``[n, dim]`` float32."""
        if self.n_desc and self.stats_ is None:
            raise ValueError(
                "MoleculeFeaturizer is not fitted: call fit() on training SMILES first"
            )
        raw = self._check_raw(raw)
        out = np.empty(raw.shape, dtype=np.float32)
        n_fp = raw.shape[1] - self.n_desc
        fp = raw[:, :n_fp]
        out[:, :n_fp] = np.log1p(fp) if self.count_transform == "log1p" else fp
        if self.n_desc:
            st = self.stats_
            desc = raw[:, n_fp:]
            desc = np.where(np.isnan(desc), st["median"], desc)
            out[:, n_fp:] = np.clip((desc - st["mean"]) / st["std"], -self.clip, self.clip)
        return out

    def transform(self, smiles: Sequence[str]) -> np.ndarray:
        """Standardised features ``[n, dim]`` float32 of ``smiles``."""
        return self.transform_raw(self.raw_features(smiles))

    def fit_transform(self, smiles: Sequence[str]) -> np.ndarray:
        raw = self.raw_features(smiles)
        return self.fit_raw(raw).transform_raw(raw)

    def state_dict(self) -> dict[str, Any]:
        """Configuration and fitted statistics (for checkpoints)."""
        return {
            "config": {
                "fingerprint": self.fingerprint,
                "descriptors": self.descriptors,
                "radius": self.radius,
                "n_bits": self.n_bits,
                "count_transform": self.count_transform,
                "clip": self.clip,
            },
            "stats": None
            if self.stats_ is None
            else {k: v.tolist() for k, v in self.stats_.items()},
        }

    @classmethod
    def from_state_dict(cls, state: dict[str, Any], **kwargs: Any) -> MoleculeFeaturizer:
        """The featurizer of :meth:`state_dict` (``kwargs``: cache, jobs, progress options).

        Raises:
            ValueError: the saved descriptor statistics do not have one entry per descriptor
                of the installed RDKit (saved with another RDKit version).
        """
        f = cls(**state["config"], **kwargs)
        if state.get("stats") is not None:
            stats = {k: np.asarray(v, dtype=np.float64) for k, v in state["stats"].items()}
            sizes = {k: v.shape for k, v in stats.items()}
            if any(shape != (f.n_desc,) for shape in sizes.values()):
                raise ValueError(
                    f"the state's descriptor statistics have shapes {sizes} but this RDKit "
                    f"computes {f.n_desc} descriptors: it was saved with another RDKit "
                    "version; refit the featurizer on the training molecules"
                )
            f.stats_ = stats
        return f


def featurize_tasks(
    tasks: Sequence[Any],
    featurizer: MoleculeFeaturizer,
    *,
    fit_on: Sequence[Any] | None = None,
) -> list[Any]:
    """Replaces the SMILES inputs of ``tasks`` by standardised features.

    Unique molecules across all tasks are featurised once (one cache entry). Standardisation
    statistics are fitted on the molecules of ``fit_on`` (the training tasks); pass
    ``fit_on=None`` with an already fitted featurizer (e.g. one restored with
    ``from_state_dict``), whose statistics are kept. Passing the same ``fit_on`` again is
    allowed (the statistics do not change).

    Raises:
        TypeError: a task's inputs are not SMILES strings (e.g. already featurised).
        ValueError: ``fit_on`` would change the statistics of a featurizer already fitted
            (they were replaced, silently, so features no longer matched an encoder trained
            on them), or a task holds a SMILES string RDKit cannot parse (the message names
            the task and row).

    Returns:
        New tasks (same order) whose inputs are :class:`~probrec.data.tasks.RowView` s of one
        shared ``[n_unique, dim]`` float32 matrix (indexing them gives plain arrays).
    """
    from probrec.data.tasks import RowView

    for what, group in (("tasks", tasks), ("fit_on", fit_on or [])):
        for t in group:  # a featurised task failed with "unhashable type: 'numpy.ndarray'"
            x = t.inputs
            if getattr(x, "ndim", 1) != 1 or not all(isinstance(s, str) for s in x):
                shape = tuple(getattr(x, "shape", (len(x),)))
                raise TypeError(
                    f"{what}: task {t.name!r} has inputs of shape {shape} that are not SMILES "
                    "strings; featurize_tasks takes tasks of SMILES (already featurised?)"
                )
    unique = sorted(
        {s for t in tasks for s in t.inputs} | {s for t in (fit_on or []) for s in t.inputs}
    )
    index = {s: i for i, s in enumerate(unique)}
    try:
        raw = featurizer.raw_features(unique)
    except ValueError as exc:  # its index is a position in the sorted unique list: name the task
        _, bad = parse_smiles(unique)
        if not bad:
            raise
        invalid = {unique[i] for i in bad}
        where = [
            f"row {j} of task {t.name!r} ({what}): {s!r}"
            for what, group in (("tasks", tasks), ("fit_on", fit_on or []))
            for t in group
            for j, s in enumerate(t.inputs)
            if s in invalid
        ]
        raise ValueError(
            f"{len(invalid)} SMILES string(s) RDKit cannot parse ({len(where)} row(s)), first "
            f"in {where[0]}; drop those rows before featurising (the loaders skip them and "
            "list them in .skipped)"
        ) from exc
    if fit_on is not None:
        rows = sorted({index[s] for t in fit_on for s in t.inputs})
        before = featurizer.stats_
        featurizer.fit_raw(raw[rows])
        after = featurizer.stats_
        if before is not None and (
            after is None or any(not np.array_equal(before[k], after[k]) for k in before)
        ):
            featurizer.stats_ = before
            raise ValueError(
                "featurizer is already fitted on other molecules: pass fit_on=None to use its "
                "statistics, or a new MoleculeFeaturizer to fit them on fit_on"
            )
    feats = featurizer.transform_raw(raw)
    return [
        t.with_inputs(RowView(feats, np.fromiter((index[s] for s in t.inputs), np.int64, len(t))))
        for t in tasks
    ]
