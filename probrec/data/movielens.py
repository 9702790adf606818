"""Interaction logs for click-through prediction, and the MovieLens loader.

An :class:`InteractionLog` is a time-ordered table of (user, item, time, label) events with
categorical side fields per event (user demographics, item attributes, context) and an optional
multi-hot block (movie genres). It is what :mod:`probrec.recsys` trains foundation and vertical
models on; :func:`load_movielens` reads MovieLens in RecBole's atomic format
(``<name>.inter[.gz]``, ``<name>.item``, ``<name>.user``; Harper & Konstan, "The MovieLens
Datasets: History and Context", ACM TiiS 2015) and :func:`probrec.data.taobao.load_taobao_ad`
reads the TaobaoAd CSV format.

A positive is a rating ``>= threshold`` (default 4), the usual CTR reading of MovieLens.
:func:`download_movielens` fetches MovieLens-100k from GroupLens and writes it in the atomic
format, for users with internet access (tests never call it).
"""

from __future__ import annotations

import gzip
import io
import urllib.request
import zipfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "InteractionLog",
    "download_movielens",
    "factorize",
    "load_movielens",
]

MOVIELENS_100K_URL = "https://files.grouplens.org/datasets/movielens/ml-100k.zip"
GENRES = (
    "unknown Action Adventure Animation Children's Comedy Crime Documentary Drama Fantasy "
    "Film-Noir Horror Musical Mystery Romance Sci-Fi Thriller War Western"
).split()
_AGE_EDGES = (18, 25, 35, 45, 50, 56)  # the MovieLens-1M age groups


def factorize(values: np.ndarray) -> tuple[np.ndarray, int]:
    """Dense codes ``1..k`` for the distinct values (``0`` is kept for missing / unseen).

    Args:
        values: ``[n]`` array of hashable values; ``None``, ``""`` and NaN count as missing.

    Returns:
        ``([n] int64 codes, k + 1)`` -- codes and the table size including the missing code.
    """
    vals = np.asarray(values, dtype=object)
    missing = np.array(
        [v is None or v == "" or (isinstance(v, float) and v != v) for v in vals], dtype=bool
    )
    codes = np.zeros(len(vals), dtype=np.int64)
    if (~missing).any():
        # ordered by the text of each value, a string and a number of the same text apart
        # (1 and "1" shared a code)
        keys = [(str(v), isinstance(v, str)) for v in vals[~missing]]
        code_of = {k: i + 1 for i, k in enumerate(sorted(set(keys)))}
        codes[~missing] = [code_of[k] for k in keys]
    return codes, int(codes.max(initial=0)) + 1


@dataclass(frozen=True, eq=False)
class InteractionLog:
    """Time-ordered events for click-through prediction.

    Attributes:
        user: ``[n]`` int64 raw user ids.
        item: ``[n]`` int64 raw item ids.
        time: ``[n]`` int64 event times (seconds), non-decreasing.
        label: ``[n]`` float32 in {0, 1} (click, or rating >= threshold).
        fields: categorical side features, name -> ``[n]`` int64 codes in ``[0, cardinality)``
            (``0`` = missing).
        cardinality: name -> table size of each field.
        multi_hot: optional ``[n, g]`` float32 block (e.g. genres), ``None`` if absent.
        rating: optional ``[n]`` raw ratings.
        name: dataset name.
        metadata: free-form description.
    """

    user: np.ndarray
    item: np.ndarray
    time: np.ndarray
    label: np.ndarray
    fields: dict[str, np.ndarray]
    cardinality: dict[str, int]
    multi_hot: np.ndarray | None = None
    rating: np.ndarray | None = None
    name: str = "log"
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        n = len(self.user)
        if n == 0:
            raise ValueError("an InteractionLog needs at least one event")
        for nm in ("item", "time", "label"):
            if len(getattr(self, nm)) != n:
                raise ValueError(f"{nm} has {len(getattr(self, nm))} rows, user has {n}")
        for nm, arr in (("user", self.user), ("item", self.item), ("time", self.time)):
            if np.asarray(arr).dtype.kind not in "iu":
                raise TypeError(f"{nm} must hold integers, got dtype {np.asarray(arr).dtype}")
            if np.ndim(arr) != 1:
                raise ValueError(f"{nm} must be 1-D [n], got shape {np.shape(arr)}")
        if self.rating is not None and np.shape(self.rating) != (n,):  # was not checked
            raise ValueError(f"rating must have shape [{n}], got {np.shape(self.rating)}")
        object.__setattr__(self, "user", np.asarray(self.user, dtype=np.int64))
        object.__setattr__(self, "item", np.asarray(self.item, dtype=np.int64))
        object.__setattr__(self, "time", np.asarray(self.time, dtype=np.int64))
        label = np.asarray(self.label, dtype=np.float32)
        if not np.isin(label, (0.0, 1.0)).all():
            raise ValueError("label must hold only 0 and 1")
        object.__setattr__(self, "label", label)
        if n > 1 and bool((np.diff(self.time) < 0).any()):
            raise ValueError("events must be sorted by time (use InteractionLog.sorted_by_time)")
        if set(self.fields) != set(self.cardinality):
            raise ValueError("fields and cardinality must name the same fields")
        for nm, codes in self.fields.items():
            if np.asarray(codes).dtype.kind not in "iu":  # float codes were truncated
                raise TypeError(
                    f"field {nm!r} must hold integer codes, got dtype {np.asarray(codes).dtype}"
                )
            c = np.asarray(codes, dtype=np.int64)
            if c.shape != (n,):
                raise ValueError(f"field {nm!r} must have shape [{n}], got {c.shape}")
            if len(c) and (c.min() < 0 or c.max() >= self.cardinality[nm]):
                raise ValueError(f"field {nm!r} has codes outside [0, {self.cardinality[nm]})")
            self.fields[nm] = c
        if self.multi_hot is not None:
            mh = np.asarray(self.multi_hot, dtype=np.float32)
            if mh.ndim != 2 or len(mh) != n:
                raise ValueError(f"multi_hot must have shape [{n}, g], got {mh.shape}")
            if not np.isfinite(mh).all():  # a NaN reached the models' logits
                raise ValueError("multi_hot contains NaN or infinite values")
            object.__setattr__(self, "multi_hot", mh)

    def __len__(self) -> int:
        return len(self.user)

    def __repr__(self) -> str:
        return (
            f"InteractionLog(name={self.name!r}, n={len(self)}, users={len(np.unique(self.user))}"
            f", items={len(np.unique(self.item))}, positive_rate={self.label.mean():.3f})"
        )

    @property
    def field_names(self) -> list[str]:
        """Side-field names in a fixed (sorted) order."""
        return sorted(self.fields)

    def field_matrix(self) -> np.ndarray:
        """``[n, F]`` int64 codes of :attr:`field_names`."""
        if not self.fields:
            return np.zeros((len(self), 0), dtype=np.int64)
        return np.stack([self.fields[k] for k in self.field_names], axis=1)

    def take(self, index: np.ndarray) -> InteractionLog:
        """The events at ``index`` (must keep time order), as a new log."""
        idx = np.asarray(index, dtype=np.int64)
        return InteractionLog(
            self.user[idx],
            self.item[idx],
            self.time[idx],
            self.label[idx],
            {k: v[idx] for k, v in self.fields.items()},
            dict(self.cardinality),
            None if self.multi_hot is None else self.multi_hot[idx],
            None if self.rating is None else self.rating[idx],
            self.name,
            dict(self.metadata),
        )

    @staticmethod
    def sorted_by_time(
        user: np.ndarray,
        item: np.ndarray,
        time: np.ndarray,
        label: np.ndarray,
        fields: Mapping[str, np.ndarray],
        cardinality: Mapping[str, int],
        **kwargs: Any,
    ) -> InteractionLog:
        """Builds a log from unsorted columns (stable sort by time, then user, then item)."""
        order = np.lexsort((item, user, time))
        mh, rating = kwargs.pop("multi_hot", None), kwargs.pop("rating", None)
        return InteractionLog(
            np.asarray(user)[order],
            np.asarray(item)[order],
            np.asarray(time)[order],
            np.asarray(label)[order],
            {k: np.asarray(v)[order] for k, v in fields.items()},
            dict(cardinality),
            None if mh is None else np.asarray(mh)[order],
            None if rating is None else np.asarray(rating)[order],
            **kwargs,
        )


def _read_atomic(path: Path) -> tuple[list[str], list[list[str]]]:
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rt", encoding="latin-1") as fh:  # type: ignore[operator]
            lines = [ln.rstrip("\r\n").split("\t") for ln in fh if ln.strip()]
    except (OSError, EOFError) as exc:  # "Not a gzipped file" named no file
        raise ValueError(f"{path} is not a readable atomic file: {exc}") from exc
    if not lines:  # an IndexError before
        raise ValueError(f"{path} is empty (no header line)")
    header = [h.split(":")[0] for h in lines[0]]
    return header, lines[1:]


def _numbers(path: Path, header: list[str], rows: list[list[str]], column: str) -> np.ndarray:
    """Column ``column`` as float64; a short row, an empty cell or text is named by line (a
    rating of "nan" became label 0 silently, "" raised a bare "could not convert")."""
    j = header.index(column)
    out = np.empty(len(rows), dtype=np.float64)
    for i, r in enumerate(rows):
        cell = r[j].strip() if j < len(r) else None
        try:
            out[i] = float(cell) if cell else np.nan
        except ValueError:
            out[i] = np.nan
        if not np.isfinite(out[i]):
            what = "is missing (the row is short)" if cell is None else f"is {cell!r}"
            raise ValueError(
                f"{path}: {column} of data line {i + 1} {what}; expected a finite number"
            )
    return out


def _find(folder: Path, suffix: str) -> Path:
    hits = sorted(folder.glob(f"*{suffix}")) + sorted(folder.glob(f"*{suffix}.gz"))
    if not hits:
        raise FileNotFoundError(f"no *{suffix} or *{suffix}.gz file in {folder}")
    return hits[0]


def load_movielens(
    path: str | Path, *, threshold: float = 4.0, name: str | None = None
) -> InteractionLog:
    """Loads MovieLens (RecBole atomic format) as an :class:`InteractionLog`.

    Side fields: ``gender``, ``age`` (the seven MovieLens-1M age groups), ``occupation``,
    ``zip1`` (first zip digit), ``decade`` (release decade), ``weekday`` and ``hour`` (UTC) of the
    rating; ``multi_hot`` holds the 19 genres. ``label = rating >= threshold``.

    Args:
        path: folder with ``*.inter[.gz]``, ``*.item`` and ``*.user``.
        threshold: ratings at or above it are positives.
        name: dataset name (default: the folder name).

    Raises:
        FileNotFoundError: the folder or a file is missing.
        ValueError: an empty or unreadable file, a file lacking a needed column, no
            interactions, or an id, rating or timestamp that is missing or not a number.
    """
    folder = Path(path)
    if not folder.is_dir():
        raise FileNotFoundError(
            f"MovieLens folder {str(folder)!r} does not exist (download_movielens() fetches it)"
        )
    inter = _find(folder, ".inter")
    head, rows = _read_atomic(inter)
    need = ("user_id", "item_id", "rating", "timestamp")
    if any(c not in head for c in need):
        raise ValueError(f"the .inter file must have columns {need}, got {head}")
    if not rows:
        raise ValueError(f"{inter} has a header but no interactions")
    cols = {c: _numbers(inter, head, rows, c) for c in need}
    for c in ("user_id", "item_id"):
        if (cols[c] != np.round(cols[c])).any():
            raise ValueError(f"{inter}: {c} must hold integer ids")
    user = cols["user_id"].astype(np.int64)
    item = cols["item_id"].astype(np.int64)
    rating = cols["rating"]
    time = cols["timestamp"].astype(np.int64)

    ihead, irows = _read_atomic(_find(folder, ".item"))
    year_col = next((c for c in ("release_year", "year") if c in ihead), None)
    genre_col = next((c for c in ("class", "genre", "genres") if c in ihead), None)
    item_decade, item_genres = {}, {}
    for r in irows:
        r = r + [""] * (len(ihead) - len(r))
        iid = int(r[ihead.index("item_id")])
        y = r[ihead.index(year_col)] if year_col else ""
        item_decade[iid] = (int(y) // 10 * 10) if y.strip().isdigit() else None
        gs = r[ihead.index(genre_col)].split() if genre_col else []
        item_genres[iid] = [GENRES.index(g) for g in gs if g in GENRES]
    uhead, urows = _read_atomic(_find(folder, ".user"))
    users = {}
    for r in urows:
        r = r + [""] * (len(uhead) - len(r))
        rec = dict(zip(uhead, r))
        age = int(rec["age"]) if rec.get("age", "").isdigit() else None
        zip1 = rec.get("zip_code", "")[:1]
        users[int(rec["user_id"])] = (
            None if age is None else int(np.searchsorted(_AGE_EDGES, age, side="right")),
            rec.get("gender") or None,
            rec.get("occupation") or None,
            zip1 if zip1.isdigit() else None,
        )

    fields, card = {}, {}
    u_info = [users.get(int(u), (None,) * 4) for u in user]
    for j, nm in enumerate(("age", "gender", "occupation", "zip1")):
        fields[nm], card[nm] = factorize(np.array([x[j] for x in u_info], dtype=object))
    fields["decade"], card["decade"] = factorize(
        np.array([item_decade.get(int(i)) for i in item], dtype=object)
    )
    dt = time.astype("datetime64[s]")
    weekday = (dt.astype("datetime64[D]").astype(np.int64) + 3) % 7  # 1970-01-01 was a Thursday
    fields["weekday"], card["weekday"] = weekday + 1, 8
    fields["hour"], card["hour"] = (time // 3600) % 24 + 1, 25
    multi = np.zeros((len(user), len(GENRES)), dtype=np.float32)
    for n, i in enumerate(item):
        multi[n, item_genres.get(int(i), [])] = 1.0
    return InteractionLog.sorted_by_time(
        user,
        item,
        time,
        (rating >= threshold).astype(np.float32),
        fields,
        card,
        multi_hot=multi,
        rating=rating,
        name=name or folder.name,
        metadata={"source": str(folder), "threshold": threshold, "genres": list(GENRES)},
    )


def download_movielens(dest: str | Path, *, url: str = MOVIELENS_100K_URL) -> Path:
    """Downloads MovieLens-100k from GroupLens and writes it in RecBole's atomic format.

    Needs internet access; nothing in the test-suite calls it. The GroupLens terms of use apply.

    Args:
        dest: folder to create (``ml-100k.inter.gz``, ``ml-100k.item``, ``ml-100k.user``).
        url: the GroupLens zip.

    Returns:
        ``dest``, ready for :func:`load_movielens`.
    """
    dest = Path(dest)
    dest.mkdir(parents=True, exist_ok=True)
    with urllib.request.urlopen(url, timeout=60) as resp:  # noqa: S310 - fixed https URL
        archive = zipfile.ZipFile(io.BytesIO(resp.read()))
    root = next(n for n in archive.namelist() if n.endswith("u.data")).rsplit("/", 1)[0]

    def read(member: str) -> list[str]:
        return archive.read(f"{root}/{member}").decode("latin-1").splitlines()

    with gzip.open(dest / "ml-100k.inter.gz", "wt") as fh:
        fh.write("user_id:token\titem_id:token\trating:float\ttimestamp:float\n")
        for ln in read("u.data"):
            fh.write("\t".join(ln.split()) + "\n")
    item_lines = ["item_id:token\tmovie_title:token_seq\trelease_year:token\tclass:token_seq"]
    for ln in read("u.item"):
        p = ln.split("|")
        title, date, flags = p[1], p[2], p[5:24]
        genres = " ".join(g for g, f in zip(GENRES, flags) if f == "1")
        item_lines.append(f"{p[0]}\t{title}\t{date[-4:] if date else ''}\t{genres}")
    (dest / "ml-100k.item").write_text("\n".join(item_lines) + "\n", encoding="latin-1")
    user_lines = ["user_id:token\tage:token\tgender:token\toccupation:token\tzip_code:token"]
    user_lines += ["\t".join(ln.split("|")) for ln in read("u.user")]
    (dest / "ml-100k.user").write_text("\n".join(user_lines) + "\n")
    return dest
