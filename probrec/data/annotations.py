"""Individual human annotations: containers, validation, loaders and a synthetic population.

Human annotator simulation (Wu, Chen, Zhang & Woodland, "It HAS to be Subjective: Human
Annotator Simulation via Zero-shot Density Estimation", 2023) treats the labels that different
annotators give one item as draws from a distribution ``p(y | x)``. The data therefore keep
every individual annotation, not a majority vote:

* :class:`AnnotationSet` -- ``n`` items, their texts (or features), and a padded
  ``[n, m]`` matrix of label values with a mask, the ordered label set, the annotators'
  ids and, where the source gives them, their demographics.
* :func:`pad_annotations` -- validates annotations given as a padded matrix (+ mask) or as
  one list per item and returns the padded form; :func:`annotation_counts` turns that into
  per-item label counts ``[n, K]``, the sufficient statistic when annotators are exchangeable.
* :func:`load_popquorn` (POPQUORN offensiveness, ordinal 1-5, with demographics) and
  :func:`load_lewidi` (Learning-with-Disagreements 2023: HS-Brexit, ArMIS, MD-Agreement binary;
  ConvAbuse ordinal -3..1), :func:`split_items` (train / valid / test by item, seeded),
  :func:`synthetic_annotations` (a seeded annotator population with known ``p(y | x)``).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np

from probrec.checks import as_bool_mask, check_choice, check_positive_int, check_real
from probrec.seeding import SeedLike, numpy_rng

__all__ = [
    "LEWIDI_DATASETS",
    "AnnotationSet",
    "annotation_counts",
    "check_label_values",
    "load_lewidi",
    "load_popquorn",
    "overdispersed_annotations",
    "pad_annotations",
    "split_items",
    "synthetic_annotations",
]

KINDS = ("ordinal", "categorical")

# LeWiDi 2023 dataset name -> (label set, kind)
LEWIDI_DATASETS: dict[str, tuple[tuple[int, ...], str]] = {
    "HS-Brexit": ((0, 1), "categorical"),
    "ArMIS": ((0, 1), "categorical"),
    "MD-Agreement": ((0, 1), "categorical"),
    "ConvAbuse": ((-3, -2, -1, 0, 1), "ordinal"),
}


def check_label_values(label_values: Sequence[int], name: str = "label_values") -> tuple[int, ...]:
    """Checks a label set: at least two strictly increasing integers; returns it as a tuple."""
    vals = []
    for v in label_values:
        if isinstance(v, bool) or not float(v).is_integer():
            raise ValueError(f"{name} must be integers, got {v!r}")
        vals.append(int(v))
    if len(vals) < 2:
        raise ValueError(f"{name} needs at least 2 labels, got {vals}")
    if len(set(vals)) != len(vals) or sorted(vals) != vals:
        raise ValueError(f"{name} must be strictly increasing integers, got {vals}")
    return tuple(vals)


def pad_annotations(
    annotations: Any,
    mask: Any = None,
    *,
    label_values: Sequence[int] | None = None,
    name: str = "annotations",
) -> tuple[np.ndarray, np.ndarray]:
    """Validates individual annotations and returns them padded, with a mask.

    Args:
        annotations: either a padded ``[n, m]`` array / tensor of label values (missing entries
            masked out by ``mask``, or NaN when ``mask`` is ``None``), or a sequence of ``n``
            sequences, one per item, of label values (lengths may differ).
        mask: ``[n, m]`` booleans, ``True`` where an annotation is present; only with a padded
            matrix. ``None``: every non-NaN entry is an annotation.
        label_values: the allowed labels; ``None`` accepts any integer.
        name: argument name for error messages.

    Returns:
        ``labels`` ``[n, m]`` int64 (masked entries hold the first label value, or 0) and
        ``mask`` ``[n, m]`` bool.

    Raises:
        TypeError: non-numeric annotations, or a mask with lists per item.
        ValueError: no items, non-integer or out-of-set labels, an item without any annotation,
            or a mask whose shape does not match.
    """
    allowed = None if label_values is None else check_label_values(label_values)
    fill = 0 if allowed is None else allowed[0]
    if hasattr(annotations, "detach"):  # torch tensor
        annotations = annotations.detach().cpu().numpy()
    if isinstance(annotations, np.ndarray) and annotations.dtype != object:
        arr = annotations
        if arr.ndim == 1:
            raise ValueError(
                f"{name} must be [n_items, n_annotators] or one list per item; got "
                f"a 1-D array of shape {arr.shape} (use arr[:, None] for one "
                "annotation per item)"
            )
        if arr.ndim != 2:
            raise ValueError(f"{name} must be 2-D [n_items, n_annotators], got shape {arr.shape}")
        if not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must be numeric, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        m = ~np.isnan(arr) if mask is None else _as_mask(mask, arr.shape, name)
    else:
        if mask is not None:
            raise TypeError(
                f"mask is only accepted with a padded [n, m] {name} matrix, not with "
                "one list per item"
            )
        try:
            rows = [np.asarray(list(r), dtype=np.float64).reshape(-1) for r in annotations]
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{name} must be a padded matrix or a sequence of per-item sequences "
                f"of numbers: {exc}"
            ) from exc
        holes = [i for i, r in enumerate(rows) if np.isnan(r).any()]
        if holes:  # a list holds the labels given; None / NaN there would be read as missing
            raise ValueError(
                f"{name}[{holes[0]}] holds None / NaN: a list per item holds only the labels "
                "its annotators gave (leave missing ones out)"
            )
        width = max((len(r) for r in rows), default=0)
        arr = np.full((len(rows), max(width, 1)), np.nan)
        for i, r in enumerate(rows):
            arr[i, : len(r)] = r
        m = ~np.isnan(arr)
    if arr.shape[0] == 0:
        raise ValueError(f"{name} has no items")
    vals = arr[m]
    if not np.isfinite(vals).all():
        raise ValueError(f"{name} contains non-finite labels where the mask is True")
    if not np.all(vals == np.round(vals)):
        bad = vals[vals != np.round(vals)][:5]
        raise ValueError(f"{name} must hold integer labels, got e.g. {bad.tolist()}")
    if allowed is not None:
        outside = ~np.isin(vals, allowed)
        if outside.any():
            bad = sorted(set(vals[outside].astype(int).tolist()))[:10]
            raise ValueError(f"{name} holds labels {bad} outside the label set {list(allowed)}")
    empty = np.flatnonzero(~m.any(axis=1))
    if empty.size:
        raise ValueError(
            f"{name}: {empty.size} item(s) have no annotation (first: item "
            f"{int(empty[0])}); drop them or give them at least one label"
        )
    labels = np.where(m, arr, fill)
    return labels.astype(np.int64), m.astype(bool)


def _is_int(v: Any) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _as_mask(mask: Any, shape: tuple[int, ...], name: str) -> np.ndarray:
    """``mask`` as a bool array of ``shape`` (the shape of ``name``), by the library's one mask
    rule (:func:`probrec.checks.as_bool_mask`); errors name the mask by its matrix when that is
    not the main one (``valid annotations``: the validation mask said only "mask")."""
    label = "mask" if name in ("annotations", "labels") else f"mask (of {name})"
    m = as_bool_mask(mask.detach().cpu() if hasattr(mask, "detach") else mask, label).numpy()
    if m.shape != shape:
        raise ValueError(f"{label} must have the shape of {name} {shape}, got {m.shape}")
    return m


def annotation_counts(
    labels: np.ndarray, mask: np.ndarray, label_values: Sequence[int]
) -> np.ndarray:
    """Per-item label counts.

    Args:
        labels: ``[n, m]`` label values (as from :func:`pad_annotations`).
        mask: ``[n, m]`` bool.
        label_values: the ``K`` labels, increasing.

    Returns:
        ``[n, K]`` int64 counts; row ``i`` counts item ``i``'s annotations of each label.
    """
    values = np.asarray(check_label_values(label_values))
    labels = np.asarray(labels)
    if labels.ndim != 2:
        raise ValueError(f"labels must be 2-D [n_items, n_annotators], got shape {labels.shape}")
    mask = _as_mask(mask, labels.shape, "labels")
    idx = np.searchsorted(values, labels)
    idx = np.clip(idx, 0, len(values) - 1)
    ok = mask & (values[idx] == labels)
    if (mask & ~ok).any():
        raise ValueError(f"labels outside the label set {values.tolist()}")
    counts = np.zeros((labels.shape[0], len(values)), dtype=np.int64)
    rows = np.broadcast_to(np.arange(labels.shape[0])[:, None], labels.shape)
    np.add.at(counts, (rows[ok], idx[ok]), 1)
    return counts


@dataclass(frozen=True)
class AnnotationSet:
    """Items with every individual annotation.

    Attributes:
        name: dataset name.
        labels: ``[n, m]`` int64 label values, padded (padding holds ``label_values[0]``).
        mask: ``[n, m]`` bool, ``True`` where an annotation is present.
        label_values: the ``K`` labels in increasing order.
        kind: ``"ordinal"`` (ordered ratings) or ``"categorical"``.
        item_ids: ``[n]`` item identifiers (str).
        texts: the items' texts, or ``None`` (e.g. synthetic data with ``features``).
        features: ``[n, d]`` float features, or ``None`` (compute them, e.g. with
            :class:`probrec.backbone.TextEmbedder`, and attach with :meth:`with_features`).
        annotator_ids: ``[n, m]`` str annotator of each annotation (``""`` where masked), or
            ``None``.
        annotators: annotator id -> attributes (demographics where the source has them).
        source_split: ``[n]`` the source's split name of each item (``"train"``, ``"dev"``), or
            ``None``.
        metadata: anything else (e.g. ``true_probs`` ``[n, K]`` for synthetic data).
    """

    name: str
    labels: np.ndarray
    mask: np.ndarray
    label_values: tuple[int, ...]
    kind: str
    item_ids: np.ndarray
    texts: list[str] | None = None
    features: np.ndarray | None = None
    annotator_ids: np.ndarray | None = None
    annotators: dict[str, dict[str, str]] = field(default_factory=dict)
    source_split: np.ndarray | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", KINDS)
        lv = check_label_values(self.label_values)
        labels, mask = pad_annotations(self.labels, self.mask, label_values=lv, name="labels")
        object.__setattr__(self, "label_values", lv)
        object.__setattr__(self, "labels", labels)
        object.__setattr__(self, "mask", mask)
        n = labels.shape[0]
        object.__setattr__(self, "item_ids", np.asarray(self.item_ids).astype(str))
        if self.source_split is not None:
            object.__setattr__(self, "source_split", np.asarray(self.source_split).astype(str))
        for attr in ("item_ids", "texts", "features", "annotator_ids", "source_split"):
            v = getattr(self, attr)
            if v is not None and len(v) != n:
                raise ValueError(f"{attr} has {len(v)} rows but labels has {n} items")
        if self.features is not None:
            f = np.asarray(self.features)
            if f.ndim != 2:
                raise ValueError(f"features must be [n, d], got shape {f.shape}")
            if not np.isfinite(f).all():
                raise ValueError("features contain non-finite values")
        if self.annotator_ids is not None:
            if np.shape(self.annotator_ids) != labels.shape:
                raise ValueError(
                    f"annotator_ids must have shape {labels.shape}, "
                    f"got {np.shape(self.annotator_ids)}"
                )
            if (np.asarray(self.annotator_ids)[~mask] != "").any():
                raise ValueError("annotator_ids names annotators where mask has no annotation")

    def __len__(self) -> int:
        return int(self.labels.shape[0])

    @property
    def n_annotations(self) -> int:
        """Total number of individual annotations."""
        return int(self.mask.sum())

    @property
    def n_labels(self) -> int:
        """``K``, the size of the label set."""
        return len(self.label_values)

    def counts(self) -> np.ndarray:
        """``[n, K]`` per-item label counts."""
        return annotation_counts(self.labels, self.mask, self.label_values)

    def annotation_lists(self) -> list[list[int]]:
        """The annotations as one list of label values per item."""
        return [row[m].tolist() for row, m in zip(self.labels, self.mask)]

    def subset(self, index: Sequence[int] | np.ndarray) -> AnnotationSet:
        """The items at ``index`` (int positions or a boolean mask), in that order."""
        idx = np.asarray(index)
        if idx.ndim != 1:
            raise ValueError(f"index must be 1-D, got shape {idx.shape}")
        if idx.dtype == bool:
            if idx.shape != (len(self),):
                raise ValueError(f"boolean index must have shape ({len(self)},)")
            idx = np.flatnonzero(idx)
        if idx.size == 0:
            raise ValueError("index selects no items")
        if not np.issubdtype(idx.dtype, np.integer):
            raise TypeError(f"index must hold int positions or bools, got dtype {idx.dtype}")
        idx = idx.astype(np.int64)
        if idx.min() < -len(self) or idx.max() >= len(self):
            raise ValueError(f"index out of range for {len(self)} items")
        if len(np.unique(idx % len(self))) != idx.size:
            raise ValueError("index repeats items (an item would be in a set twice)")
        keep = self.mask[idx].any(axis=0)  # drop all-padding columns
        return replace(
            self,
            labels=self.labels[idx][:, keep],
            mask=self.mask[idx][:, keep],
            item_ids=self.item_ids[idx],
            texts=None if self.texts is None else [self.texts[i] for i in idx],
            features=None if self.features is None else np.asarray(self.features)[idx],
            annotator_ids=(
                None if self.annotator_ids is None else np.asarray(self.annotator_ids)[idx][:, keep]
            ),
            source_split=None if self.source_split is None else self.source_split[idx],
            metadata={
                k: (np.asarray(v)[idx] if k in self.metadata.get("per_item", ()) else v)
                for k, v in self.metadata.items()
            },
        )

    def with_features(self, features: Any) -> AnnotationSet:
        """A copy with ``features`` ``[n, d]`` attached (e.g. MiniLM embeddings of the texts)."""
        if hasattr(features, "detach"):
            features = features.detach().cpu().numpy()
        return replace(self, features=np.asarray(features, dtype=np.float32))

    def split_items(
        self, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: SeedLike = 0
    ) -> tuple[AnnotationSet, ...]:
        """See :func:`split_items`."""
        return split_items(self, fractions, seed)

    def __repr__(self) -> str:
        return (
            f"AnnotationSet({self.name!r}, items={len(self)}, "
            f"annotations={self.n_annotations}, labels={list(self.label_values)}, "
            f"kind={self.kind!r})"
        )


def split_items(
    data: AnnotationSet, fractions: Sequence[float] = (0.6, 0.2, 0.2), seed: SeedLike = 0
) -> tuple[AnnotationSet, ...]:
    """Splits by item (an item's annotations never straddle two parts), seeded.

    Args:
        data: the annotations.
        fractions: positive fractions of items per part, summing to 1 (e.g. train / valid /
            test).
        seed: seed of the permutation.

    Returns:
        One :class:`AnnotationSet` per fraction; sizes are ``round(cumsum(fractions) * n)``
        differences, each at least one item.

    Raises:
        ValueError: fractions not positive or not summing to 1, or a part would be empty.
    """
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or fr.size < 1 or not (fr > 0).all() or not abs(fr.sum() - 1) <= 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {fr.tolist()}")
    n = len(data)
    bounds = np.round(np.cumsum(fr) * n).astype(int)
    bounds[-1] = n
    starts = np.concatenate([[0], bounds[:-1]])
    if (bounds - starts < 1).any():
        raise ValueError(f"fractions {fr.tolist()} leave an empty part for {n} items")
    perm = numpy_rng(seed).permutation(n)
    return tuple(data.subset(np.sort(perm[a:b])) for a, b in zip(starts, bounds))


# ---------------------------------------------------------------------------- loaders
def load_popquorn(path: str | Path) -> AnnotationSet:
    """Loads POPQUORN offensiveness ratings (Pei & Jurgens, 2023): ordinal 1-5.

    The CSV holds one row per (item, annotator) with columns ``instance_id, user_id, text,
    offensiveness, gender, race, age, occupation, education``. Items are ordered by
    ``instance_id``; annotations of an item by ``user_id``.

    Args:
        path: the CSV file.

    Rows without a rating are left out and reported: ``metadata["n_unrated_rows"]`` counts
    them and ``metadata["unrated_items"]`` lists the items left with no rating at all (dropped).

    Returns:
        :class:`AnnotationSet` named ``"POPQUORN"``, ``label_values = (1, ..., 5)``, kind
        ordinal, with ``annotators`` holding each annotator's demographics.

    Raises:
        FileNotFoundError: no such file.
        ValueError: an unreadable or empty file, required columns missing, a row without
            ``instance_id`` or ``user_id``, an annotator rating an item twice, an item with two
            texts, an annotator with two values of a demographic, or ratings outside 1-5.
    """
    import pandas as pd

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"POPQUORN CSV not found: {path}")
    try:
        df = pd.read_csv(path)
    except (pd.errors.EmptyDataError, pd.errors.ParserError, UnicodeDecodeError, OSError) as exc:
        # an empty file said only "No columns to parse from file", a gzip that is not one
        # "Not a gzipped file": neither named the file
        raise ValueError(f"path {str(path)!r} is not a readable POPQUORN CSV: {exc}") from exc
    need = {"instance_id", "user_id", "text", "offensiveness"}
    missing = need - set(df.columns)
    if missing:
        raise ValueError(f"{path} lacks columns {sorted(missing)}")
    for col in ("instance_id", "user_id"):  # groupby dropped rows without an instance_id
        absent = np.flatnonzero(df[col].isna().to_numpy())
        if absent.size:
            raise ValueError(
                f"{path}: {absent.size} row(s) have no {col} (first: data row "
                f"{int(absent[0]) + 1}); every rating needs its item and its annotator"
            )
    # texts verbatim: pandas would read a text "NA" or "null" (or an empty one) as missing
    df["text"] = pd.read_csv(path, usecols=["text"], dtype=str, keep_default_na=False)["text"]
    unrated = df["offensiveness"].isna()
    all_items = set(df["instance_id"].astype(str))
    df = df[~unrated].sort_values(["instance_id", "user_id"])
    unrated_items = sorted(all_items - set(df["instance_id"].astype(str)))
    texts_per_item = df.groupby("instance_id")["text"].nunique()
    if (texts_per_item > 1).any():  # the first text was kept, silently
        iid = texts_per_item.index[texts_per_item.to_numpy() > 1][0]
        raise ValueError(
            f"{path}: instance_id {iid} has {int(texts_per_item[iid])} different texts; an "
            "instance_id names one item"
        )
    twice = df.duplicated(["instance_id", "user_id"])
    if twice.any():
        first = df[twice].iloc[0]
        raise ValueError(
            f"{path}: {int(twice.sum())} repeated (instance_id, user_id) rows, first "
            f"({first['instance_id']}, {first['user_id']}): an annotator rates an item once"
        )
    demo_cols = [c for c in ("gender", "race", "age", "occupation", "education") if c in df.columns]
    for c in demo_cols:  # the first row's value was kept, silently
        per_user = df.groupby("user_id")[c].nunique(dropna=False)
        if (per_user > 1).any():
            uid = per_user.index[per_user.to_numpy() > 1][0]
            raise ValueError(
                f"{path}: user_id {uid} has {int(per_user[uid])} different {c!r} values; an "
                "annotator's demographics are one per annotator"
            )
    annotators = {
        str(uid): {c: str(row[c]) for c in demo_cols}
        for uid, row in df.drop_duplicates("user_id").set_index("user_id").iterrows()
    }
    groups = df.groupby("instance_id", sort=True)
    ids, texts, rows, who = [], [], [], []
    for iid, g in groups:
        ids.append(str(iid))
        texts.append(str(g["text"].iloc[0]))
        rows.append(g["offensiveness"].to_numpy())
        who.append(g["user_id"].astype(str).tolist())
    labels, mask = pad_annotations(rows, label_values=range(1, 6), name="offensiveness")
    ann = np.full(labels.shape, "", dtype=object)
    for i, w in enumerate(who):
        ann[i, : len(w)] = w
    return AnnotationSet(
        "POPQUORN",
        labels,
        mask,
        tuple(range(1, 6)),
        "ordinal",
        np.asarray(ids),
        texts=texts,
        annotator_ids=ann.astype(str),
        annotators=annotators,
        metadata={
            "source": str(path),
            "n_unrated_rows": int(unrated.sum()),
            "unrated_items": unrated_items,
        },
    )


def _convabuse_text(raw: str) -> str:
    """The dialogue turn as one string, most recent first (so truncation drops old turns)."""
    try:
        d = json.loads(raw)
    except json.JSONDecodeError:
        return raw
    parts = []
    for key, who in (
        ("user", "user"),
        ("agent", "agent"),
        ("prev_user", "previous user"),
        ("prev_agent", "previous agent"),
    ):
        t = str(d.get(key, "")).strip()
        if t and t != "_":
            parts.append(f"{who}: {t}")
    return "\n".join(parts) if parts else raw


def load_lewidi(
    path: str | Path, dataset: str, splits: Sequence[str] = ("train", "dev")
) -> AnnotationSet:
    """Loads a Learning-with-Disagreements 2023 dataset (Leonardelli et al., SemEval 2023).

    Files are ``lewidi2023_<dataset>_<split>.json``: a dict of items, each with ``text``,
    ``annotations`` and ``annotators`` (comma-separated strings) and ``other_info``.
    HS-Brexit, ArMIS and MD-Agreement are binary (0/1); ConvAbuse is an ordinal abusiveness
    rating in -3..1 (the ``soft_label`` of ConvAbuse in the files is a binarisation, not
    used here). ConvAbuse texts are dialogue turns stored as JSON; they become one string,
    the user's turn first.

    Args:
        path: folder holding the JSON files, or one of the files.
        dataset: one of :data:`LEWIDI_DATASETS`.
        splits: which source splits to read and pool (``"train"``, ``"dev"``); the source
            split of each item is kept in ``source_split``.

    Returns:
        :class:`AnnotationSet` named ``dataset``.

    Raises:
        FileNotFoundError: a split's file is missing.
        ValueError: unknown dataset or split, a file that is not a JSON object of items,
            malformed annotations (non-integer, an empty entry, outside the label set, an
            item without any), or ``annotators`` that do not name one distinct annotator per
            annotation (an item without ``annotators`` keeps anonymous annotations).
    """
    check_choice(dataset, "dataset", tuple(LEWIDI_DATASETS))
    if isinstance(splits, str):
        splits = (splits,)
    for s in splits:
        check_choice(s, "split", ("train", "dev"))
    if len(set(splits)) != len(splits):
        raise ValueError(f"splits repeats a split (its items would appear twice): {list(splits)}")
    path = Path(path)
    if path.is_file() and not path.name.startswith(f"lewidi2023_{dataset}_"):
        raise ValueError(f"path {path} is not a file of {dataset} (lewidi2023_{dataset}_*.json)")
    folder = path.parent if path.is_file() else path
    label_values, kind = LEWIDI_DATASETS[dataset]
    ids, texts, rows, who, src, extra = [], [], [], [], [], []
    for s in splits:
        f = folder / f"lewidi2023_{dataset}_{s}.json"
        if not f.is_file():
            raise FileNotFoundError(f"LeWiDi file not found: {f}")
        try:
            items = json.loads(f.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:  # named no file before
            raise ValueError(f"LeWiDi file {f} is not valid JSON: {exc}") from exc
        if not isinstance(items, dict):
            raise ValueError(f"{f}: expected a JSON object of items, got {type(items).__name__}")
        for key, it in items.items():
            if not isinstance(it, dict) or not {"text", "annotations"} <= set(it):
                raise ValueError(f"{f.name} item {key}: needs 'text' and 'annotations'")
            anns = [a.strip() for a in str(it["annotations"]).split(",")]
            if anns == [""]:
                anns = []  # no annotation at all: pad_annotations names the item
            if "" in anns:  # "0,,1": the empty slot was dropped and the annotators blanked
                raise ValueError(
                    f"{f.name} item {key}: an empty entry in annotations {it['annotations']!r}"
                )
            people = [a.strip() for a in str(it.get("annotators") or "").split(",")]
            if people == [""]:  # no annotator ids given: annotations stay anonymous
                people = [""] * len(anns)
            elif len(people) != len(anns) or "" in people:
                # a count mismatch blanked every annotator id of the item, silently
                raise ValueError(
                    f"{f.name} item {key}: {len(anns)} annotation(s) {it['annotations']!r} but "
                    f"annotators {it.get('annotators')!r}; give one annotator per annotation"
                )
            twice = sorted({a for a in people if a and people.count(a) > 1})
            if twice:
                raise ValueError(
                    f"{f.name} item {key}: annotator(s) {twice} annotate the item twice; an "
                    "annotator labels an item once"
                )
            try:
                values = [int(a) for a in anns]
            except ValueError as exc:
                raise ValueError(
                    f"{f.name} item {key}: non-integer annotations {it['annotations']!r}"
                ) from exc
            ids.append(f"{s}/{key}")
            text = str(it["text"])
            texts.append(_convabuse_text(text) if dataset == "ConvAbuse" else text)
            rows.append(values)
            who.append(people)
            src.append(s)
            extra.append(it.get("other_info", {}))
    labels, mask = pad_annotations(rows, label_values=label_values, name=f"{dataset} annotations")
    ann = np.full(labels.shape, "", dtype=object)
    for i, w in enumerate(who):
        ann[i, : len(w)] = w
    annotators = {a: {} for a in sorted({a for w in who for a in w if a})}
    return AnnotationSet(
        dataset,
        labels,
        mask,
        label_values,
        kind,
        np.asarray(ids),
        texts=texts,
        annotator_ids=ann.astype(str),
        annotators=annotators,
        source_split=np.asarray(src),
        metadata={"source": str(folder)},
    )


# ---------------------------------------------------------------------------- synthetic
def synthetic_annotations(
    n_items: int = 600,
    dim: int = 8,
    *,
    n_annotators: int = 60,
    per_item: tuple[int, int] = (4, 9),
    label_values: Sequence[int] = (1, 2, 3, 4, 5),
    cut_power: float = 0.6,
    seed: SeedLike = 0,
) -> AnnotationSet:
    """A seeded annotator population whose per-item label distribution is known exactly.

    Items have features ``x ~ N(0, I_dim)``. Annotator ``a`` has a bias ``b_a ~ N(0, 0.3^2)``
    and belongs to one of two groups ``g_a``. On item ``x`` annotator ``a`` perceives
    ``mu(x) + b_a + (2 g_a - 1) delta(x) + sigma(x) eps`` with ``eps ~ N(0, 1)`` and reports
    the label whose interval holds it. The intervals have a response style: the cut points
    between labels ``lo .. hi`` sit at ``lo - 1/2 + K f_k^cut_power`` with ``f_k = k / K``;
    ``cut_power = 1`` is plain rounding, smaller values widen the low labels (ratings pile up at
    the bottom of the scale, as offensiveness ratings do). ``mu`` sets the average rating,
    ``sigma(x)`` (heteroscedastic) the disagreement, and ``delta(x) >= 0`` polarises the two
    groups (bimodal label distributions on some items). Each item is rated by a random subset
    of ``per_item`` annotators.

    Args:
        n_items: number of items.
        dim: feature width (>= 4).
        n_annotators: population size.
        per_item: (min, max) annotators per item, inclusive.
        label_values: consecutive integer labels.
        cut_power: response-style exponent of the cut points (> 0; 1: equal intervals).
        seed: seed of everything.

    Returns:
        :class:`AnnotationSet` named ``"synthetic"`` with ``features`` and
        ``metadata["true_probs"]`` ``[n, K]``: the population-average label distribution of
        each item (the target ``p(y | x)``).
    """
    from scipy.stats import norm

    n_items = check_positive_int(n_items, "n_items")
    dim = check_positive_int(dim, "dim", minimum=4)
    n_annotators = check_positive_int(n_annotators, "n_annotators", minimum=2)
    pair = tuple(per_item)
    if len(pair) != 2 or not all(_is_int(v) for v in pair) or not 1 <= pair[0] <= pair[1]:
        raise ValueError(f"per_item must be two integers 1 <= min <= max, got {per_item!r}")
    lo, hi = int(pair[0]), int(pair[1])
    if hi > n_annotators:
        raise ValueError(f"per_item's max must be <= n_annotators, got {per_item!r}")
    lv = np.asarray(check_label_values(label_values))
    if (np.diff(lv) != 1).any():
        raise ValueError("label_values must be consecutive integers")
    cut_power = check_real(cut_power, "cut_power", strict=True)
    rng = numpy_rng(seed)
    x = rng.standard_normal((n_items, dim))
    w = rng.standard_normal((4, dim)) / np.sqrt(dim)
    centre, half = lv.mean(), (lv[-1] - lv[0]) / 2
    mu = centre + half * (0.55 * np.tanh(1.5 * x @ w[0]) + 0.2 * np.sin(2 * x @ w[1]))
    sigma = 0.25 + 0.9 / (1 + np.exp(-2.5 * (x @ w[2])))
    delta = 0.9 * half * np.maximum(x @ w[3], 0.0) ** 1.5 / (1 + np.maximum(x @ w[3], 0.0))
    bias = 0.3 * rng.standard_normal(n_annotators)
    group = rng.integers(0, 2, n_annotators) * 2 - 1
    # per-(item, annotator) perceived location
    loc = mu[:, None] + bias[None, :] + group[None, :] * delta[:, None]
    k = len(lv)
    inner = lv[0] - 0.5 + k * (np.arange(1, k) / k) ** cut_power
    cuts = np.concatenate([[-np.inf], inner, [np.inf]])
    cdf = norm.cdf((cuts[None, None, :] - loc[:, :, None]) / sigma[:, None, None])
    probs_ia = np.diff(cdf, axis=-1)  # [n, A, K]
    true_probs = probs_ia.mean(axis=1)
    counts = rng.integers(lo, hi + 1, n_items)
    labels = np.zeros((n_items, hi), dtype=np.int64)
    mask = np.zeros((n_items, hi), dtype=bool)
    who = np.full((n_items, hi), "", dtype=object)
    for i in range(n_items):
        raters = rng.choice(n_annotators, counts[i], replace=False)
        p = probs_ia[i, raters]
        u = rng.random((counts[i], 1))
        k = (u > np.cumsum(p, axis=1)[:, :-1]).sum(axis=1)
        labels[i, : counts[i]] = lv[k]
        mask[i, : counts[i]] = True
        who[i, : counts[i]] = [f"a{r}" for r in raters]
    annotators = {
        f"a{a}": {"bias": f"{bias[a]:.3f}", "group": str(int(group[a]))}
        for a in range(n_annotators)
    }
    return AnnotationSet(
        "synthetic",
        labels,
        mask,
        tuple(int(v) for v in lv),
        "ordinal",
        np.asarray([f"s{i}" for i in range(n_items)]),
        features=x.astype(np.float32),
        annotator_ids=who.astype(str),
        annotators=annotators,
        metadata={"true_probs": true_probs, "per_item": ("true_probs",)},
    )


def overdispersed_annotations(
    n_items: int = 1000,
    dim: int = 8,
    *,
    label_values: Sequence[int] = (0, 1),
    concentration: float = 2.0,
    panel_sizes: Sequence[int] = (5,),
    panel_probs: Sequence[float] | None = None,
    seed: SeedLike = 0,
) -> AnnotationSet:
    """Annotations with an item-level latent that the features do not explain.

    Item ``i`` has features ``x_i ~ N(0, I_dim)``, a population-average label distribution
    ``m(x_i) = softmax(1.5 tanh(x_i W_1) + 0.8 sin(x_i W_2))`` (``W`` random ``[dim, K]``,
    fixed by the seed), and its own label distribution ``p_i ~ Dirichlet(concentration *
    m(x_i))``; its ``n_i`` annotators draw their labels independently from ``p_i``
    (a Dirichlet-multinomial panel). Two annotations of one item agree beyond ``m``: their
    correlation is ``rho = 1 / (concentration + 1)``. The per-annotation target
    ``p(y | x) = m(x)`` is known exactly, and panel sizes are drawn from ``panel_sizes``, so the
    set separates what an item latent adds to the marginal fit (efficient weighting of
    correlated annotations when panels differ in size, as in quasi-likelihood / GEE: Liang &
    Zeger, Biometrika 1986) from what it adds to the joint of a panel.

    Args:
        n_items: number of items.
        dim: feature width.
        label_values: the ``K >= 2`` labels (categorical).
        concentration: Dirichlet concentration ``> 0`` (large: annotators independent given x).
        panel_sizes: possible panel sizes (each ``>= 1``).
        panel_probs: probability of each panel size (default uniform).
        seed: seed of everything.

    Returns:
        :class:`AnnotationSet` named ``"overdispersed"`` (kind ``"categorical"``) with
        ``features`` ``[n, dim]`` and ``metadata["true_probs"]`` ``[n, K]`` = ``m(x)``.

    Raises:
        ValueError: on a non-positive concentration, an empty ``panel_sizes``, a size below 1,
            or ``panel_probs`` that do not match ``panel_sizes`` or are not a distribution.
    """
    n_items = check_positive_int(n_items, "n_items")
    dim = check_positive_int(dim, "dim")
    lv = np.asarray(check_label_values(label_values))
    concentration = check_real(concentration, "concentration", strict=True)
    sizes = np.asarray(panel_sizes)
    if sizes.ndim != 1 or sizes.size == 0:
        raise ValueError(f"panel_sizes must be a non-empty sequence, got {panel_sizes!r}")
    if not all(_is_int(v) and v >= 1 for v in sizes.tolist()):
        raise ValueError(f"panel_sizes must be integers >= 1, got {panel_sizes!r}")
    if panel_probs is None:
        probs = np.full(sizes.size, 1.0 / sizes.size)
    else:
        probs = np.asarray(panel_probs, dtype=float)
        if (
            probs.shape != sizes.shape
            or not np.isfinite(probs).all()
            or (probs < 0).any()
            or abs(probs.sum() - 1) > 1e-8
        ):
            raise ValueError(
                "panel_probs must be one non-negative probability per panel size, summing to "
                f"1; got {panel_probs!r} for panel_sizes {panel_sizes!r}"
            )
    rng = numpy_rng(seed)
    k = len(lv)
    w = rng.standard_normal((2, dim, k)) * 1.5 / np.sqrt(dim)
    x = rng.standard_normal((n_items, dim))
    logits = 1.5 * np.tanh(x @ w[0]) + 0.8 * np.sin(x @ w[1])
    m = np.exp(logits - logits.max(1, keepdims=True))
    m /= m.sum(1, keepdims=True)
    p = np.stack([rng.dirichlet(concentration * m[i]) for i in range(n_items)])  # [n, K]
    counts = sizes[rng.choice(sizes.size, n_items, p=probs)]
    width = int(sizes.max())
    labels = np.full((n_items, width), lv[0], dtype=np.int64)
    mask = np.arange(width)[None, :] < counts[:, None]
    for i in range(n_items):
        labels[i, : counts[i]] = lv[rng.choice(k, counts[i], p=p[i] / p[i].sum())]
    return AnnotationSet(
        "overdispersed",
        labels,
        mask,
        tuple(int(v) for v in lv),
        "categorical",
        np.asarray([f"o{i}" for i in range(n_items)]),
        features=x.astype(np.float32),
        metadata={"true_probs": m, "per_item": ("true_probs",)},
    )
