"""Frozen-embedding store: keys to fixed vectors, saved to disk and memory-mapped on load.

LoopFM-style knowledge transfer (store a foundation model's intermediate embeddings once and
feed them to a small model as input features, with no foundation-model call at serving) needs
a table from keys (a user, an item, a ``(user, item, time)`` event, a molecule id) to vectors.

On disk a store is a folder:

* ``vectors.npy`` -- ``[n, d]`` array in NumPy's ``.npy`` format, opened with
  ``np.load(mmap_mode="r")`` so stores larger than memory are paged in on demand;
* ``keys.npy`` (all keys are integers: an ``int64`` array, memory-mapped too) or ``keys.json``
  (a JSON list; strings, integers, and tuples of them as JSON arrays) -- row ``i`` of the
  vectors belongs to key ``i``; nothing is pickled;
* ``meta.json`` -- format version, ``n``, ``d``, dtype, key format and user metadata (e.g. the
  foundation model's name), written last.

Keys are ``str``, ``int`` or (nested) tuples of them; ``1`` and ``"1"`` are different keys,
``bool`` and ``float`` keys are refused. Integer-keyed stores are looked up with a vectorised
binary search over a sorted copy of the keys (no Python dictionary); other stores build a
dictionary from key to row on first use. Keys that are tuples of integers (e.g. ``(user,
item, time)`` events) can be passed as an integer array ``[n, m]``: those are looked up by a
vectorised search too, over a sorted, coded table of the store's ``m``-integer tuple keys.
"""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Hashable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probrec.checks import check_choice, check_positive_int

__all__ = ["EmbeddingStore", "EmbeddingStoreWriter", "MissingKeyError", "canonical_key"]

_FORMAT = "probrec.EmbeddingStore"
_VERSION = 1
_DTYPES = ("float16", "float32", "float64")
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_FLAT_KEY_TYPES = frozenset({str, int})  # elements of a tuple key that are canonical as they are


class MissingKeyError(KeyError, ValueError):
    """Keys asked of an :class:`EmbeddingStore` that it does not hold.

    A ``KeyError`` (what a mapping raises) and a ``ValueError`` (bad argument values).
    ``missing`` lists the absent keys, ``positions`` their indices in the request.
    """

    def __init__(self, message: str, missing: list[Hashable], positions: list[int]) -> None:
        super().__init__(message)
        self.message, self.missing, self.positions = message, missing, positions

    def __str__(self) -> str:
        return self.message


def canonical_key(key: Any, name: str = "key") -> Hashable:
    """Validates a key and returns its canonical form.

    ``int`` (and NumPy / 0-d torch integers) -> ``int``; ``str`` -> ``str``; tuples (and
    lists, as read back from JSON) -> tuples of canonical keys.

    Raises:
        TypeError: ``bool``, ``float`` or any other type (floats are refused because
            rounding makes equal-looking keys differ).
    """
    kind = type(key)
    if kind is str or kind is int:  # already canonical (``bool`` is a type of its own)
        return key
    if (kind is tuple or kind is list) and _FLAT_KEY_TYPES.issuperset(map(type, key)):
        return tuple(key)  # a flat tuple, or a list as read back from JSON
    if isinstance(key, (bool, np.bool_)):
        raise TypeError(f"{name} must be a str, an int or a tuple of them, got bool {key!r}")
    if isinstance(key, str):
        return str(key)
    if isinstance(key, (int, np.integer)):
        return int(key)
    if (
        isinstance(key, torch.Tensor)
        and key.dim() == 0
        and not key.is_floating_point()
        and key.dtype != torch.bool
    ):
        return int(key.item())
    if isinstance(key, (tuple, list)):
        return tuple(canonical_key(k, f"{name}[{i}]") for i, k in enumerate(key))
    raise TypeError(
        f"{name} must be a str, an int or a tuple of them, got {type(key).__name__} {key!r}"
    )


def _int_key_array(keys: Any, name: str) -> np.ndarray | None:
    """``keys`` as an ``int64`` array if it is an integer array / tensor, else ``None``.

    A ``[n]`` array holds ``n`` integer keys, a ``[n, m]`` array ``n`` keys that are tuples of
    ``m`` integers (row ``i`` is the key ``tuple(keys[i])``).
    """
    if isinstance(keys, torch.Tensor):
        if keys.dtype == torch.bool or keys.is_floating_point() or keys.is_complex():
            raise TypeError(f"{name} must hold integer keys, got a {keys.dtype} tensor")
        keys = keys.detach().cpu().numpy()
    if isinstance(keys, np.ndarray):
        if keys.ndim not in (1, 2) or (keys.ndim == 2 and keys.shape[1] == 0):
            raise ValueError(
                f"{name} must be one-dimensional, or [n, m] with m >= 1 for tuple keys, "
                f"got shape {keys.shape}"
            )
        if keys.dtype.kind in "iu":
            if keys.dtype == np.uint64 and len(keys) and keys.max() > _INT64_MAX:
                return None
            return keys.astype(np.int64, copy=False)
        if keys.dtype.kind in "fcb":
            raise TypeError(f"{name} must hold str, int or tuple keys, got dtype {keys.dtype}")
    return None


def _key_list(keys: Any, name: str) -> list[Hashable]:
    """Canonical keys of a sequence, an integer array ``[n]`` or a tuple-key array ``[n, m]``."""
    arr = _int_key_array(keys, name)
    if arr is not None:
        return arr.tolist() if arr.ndim == 1 else list(map(tuple, arr.tolist()))
    if isinstance(keys, np.ndarray):
        keys = keys.tolist()  # str / object arrays; nested lists become tuples below
    return _canonical_keys(keys, name)


def _canonical_keys(keys: Any, name: str) -> list[Hashable]:
    """:func:`canonical_key` of every key; an error names the key's position in ``name``."""
    try:
        return [canonical_key(k) for k in keys]
    except TypeError:  # again, naming the position of the first bad key
        return [canonical_key(k, f"{name}[{i}]") for i, k in enumerate(keys)]


def _check_dtype(dtype: Any) -> np.dtype:
    dt = np.dtype(dtype)
    check_choice(dt.name, "dtype", _DTYPES)
    return dt


class EmbeddingStore:
    """Keys -> frozen vectors ``[d]``; built in memory or memory-mapped from disk.

    Example:
        >>> store = EmbeddingStore.from_arrays(["a", "b"], np.eye(2, 4))
        >>> store.lookup(["b", "a"]).shape
        torch.Size([2, 4])

    Args:
        dim: vector width ``d``.
        dtype: storage dtype, ``"float16"``, ``"float32"`` (default) or ``"float64"``.
        metadata: JSON-serialisable description saved with the store (e.g. model name).
    """

    def __init__(
        self, dim: int, dtype: Any = "float32", metadata: Mapping[str, Any] | None = None
    ) -> None:
        self._dim = check_positive_int(dim, "dim")
        self._dtype = _check_dtype(dtype)
        self.metadata: dict[str, Any] = dict(metadata or {})
        json.dumps(self.metadata)  # fail early if it cannot be saved
        self._keys: list[Hashable] = []
        self._chunks: list[np.ndarray] = []
        self._vectors: np.ndarray = np.zeros((0, self._dim), dtype=self._dtype)
        self._key_array: np.ndarray | None = np.zeros(0, dtype=np.int64)  # int keys, or None
        self._index: dict[Hashable, int] | None = None
        self._sorted: tuple[np.ndarray, np.ndarray] | None = None
        # per tuple length m: the sorted codes of the store's m-integer tuple keys (None:
        # too many distinct values to code in int64; the dictionary is used then)
        self._tuple_tables: dict[int, _TupleTable | None] = {}
        self._path: Path | None = None
        self._source: Path | None = None  # the folder a loaded store was read from
        # rows read from disk and not yet checked finite (``None``: every row was checked when
        # it was added); each is checked once, on its first lookup
        self._unchecked: np.ndarray | None = None

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(
        cls,
        keys: Sequence[Any] | np.ndarray | torch.Tensor,
        vectors: Any,
        dtype: Any = "float32",
        metadata: Mapping[str, Any] | None = None,
    ) -> EmbeddingStore:
        """A store holding ``vectors[i]`` under ``keys[i]``.

        Args:
            keys: ``n`` distinct keys (a sequence, or an integer array / tensor).
            vectors: ``[n, d]`` finite array or tensor.
            dtype: storage dtype.
            metadata: saved with the store.
        """
        arr = _as_matrix(vectors, "vectors")
        store = cls(arr.shape[1], dtype=dtype, metadata=metadata)
        store.add(keys, arr)
        return store

    @staticmethod
    def writer(
        path: str | os.PathLike,
        n: int,
        dim: int,
        *,
        dtype: Any = "float32",
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> EmbeddingStoreWriter:
        """Writes a store of ``n`` rows to ``path`` in chunks (for stores larger than memory).

        See :class:`EmbeddingStoreWriter`.
        """
        return EmbeddingStoreWriter(
            path, n, dim, dtype=dtype, metadata=metadata, overwrite=overwrite
        )

    def add(
        self,
        keys: Sequence[Any] | np.ndarray | torch.Tensor,
        vectors: Any,
        *,
        overwrite: bool = False,
    ) -> None:
        """Adds rows.

        Args:
            keys: ``m`` distinct keys.
            vectors: ``[m, d]`` finite array or tensor.
            overwrite: replace the vectors of keys already present (else that is an error).

        Raises:
            ValueError: the store is memory-mapped (read-only), shapes or lengths mismatch,
                vectors are not finite, keys repeat, or a key exists and ``overwrite`` is off.
            TypeError: a key has an unsupported type.
        """
        if self._path is not None:
            raise ValueError(
                f"this store is memory-mapped from {self._path} and read-only; "
                "load it with mmap=False to modify it"
            )
        arr = _as_matrix(vectors, "vectors", self._dim, self._dtype)
        canon = _key_list(keys, "keys")
        if len(canon) != len(arr):
            raise ValueError(f"mismatched lengths: keys has {len(canon)}, vectors has {len(arr)}")
        if not canon:
            return
        if len(set(canon)) != len(canon):
            seen: set[Hashable] = set()
            dup = next(k for k in canon if k in seen or seen.add(k))
            raise ValueError(f"keys contains the key {dup!r} more than once")
        rows = self._rows_of(canon)
        present = rows >= 0
        if present.any():
            if not overwrite:
                first = canon[int(np.flatnonzero(present)[0])]
                raise ValueError(
                    f"key {first!r} is already in the store "
                    f"({int(present.sum())} key(s) in all); pass overwrite=True"
                )
            self._consolidate()
            self._vectors[rows[present]] = arr[present]
            arr = arr[~present]
            canon = [k for k, p in zip(canon, present) if not p]
            if not canon:
                return
        all_int = self._key_array is not None and all(
            isinstance(k, int) and _INT64_MIN <= k <= _INT64_MAX for k in canon
        )
        if all_int:
            self._key_array = np.concatenate([self._key_array, np.asarray(canon, np.int64)])
        else:
            if self._key_array is not None:  # switch from integer keys to general keys
                self._keys = self._key_array.tolist()
                self._key_array = None
            self._keys.extend(canon)
        self._chunks.append(arr.astype(self._dtype, copy=True))
        self._index = None
        self._sorted = None
        self._tuple_tables = {}

    def _consolidate(self) -> None:
        if self._chunks:
            self._vectors = np.concatenate([self._vectors, *self._chunks], axis=0)
            self._chunks = []

    # ------------------------------------------------------------------ properties
    @property
    def dim(self) -> int:
        """Vector width ``d``."""
        return self._dim

    @property
    def dtype(self) -> np.dtype:
        """Storage dtype."""
        return self._dtype

    @property
    def vectors(self) -> np.ndarray:
        """All vectors ``[n, d]`` in row order (a read-only memory map for loaded stores)."""
        self._consolidate()
        return self._vectors

    @property
    def is_memory_mapped(self) -> bool:
        """Whether the vectors are a memory map of a saved store."""
        return isinstance(self._vectors, np.memmap)

    def keys(self) -> list[Hashable]:
        """All keys in row order (canonical form)."""
        if self._key_array is not None:
            return self._key_array.tolist()
        return list(self._keys)

    def __len__(self) -> int:
        if self._key_array is not None:
            return len(self._key_array)
        return len(self._keys)

    def __contains__(self, key: Any) -> bool:
        try:
            return bool(self.contains([key])[0])
        except TypeError:
            return False

    def __getitem__(self, key: Any) -> np.ndarray:
        """The vector ``[d]`` of one key (a copy).

        Raises:
            MissingKeyError: the key is not in the store.
        """
        return self.lookup_numpy([key])[0]

    def __repr__(self) -> str:
        where = f", path={str(self._path)!r}" if self._path is not None else ""
        return f"EmbeddingStore(n={len(self)}, dim={self._dim}, dtype={self._dtype.name}{where})"

    # ------------------------------------------------------------------ lookup
    def _rows_of(self, canon: list[Hashable]) -> np.ndarray:
        """Rows of canonical keys (``-1`` where absent)."""
        if self._key_array is not None:  # int-keyed store: keys of other kinds are absent
            ok = np.fromiter(
                (type(k) is int and _INT64_MIN <= k <= _INT64_MAX for k in canon),
                dtype=bool,
                count=len(canon),
            )
            out = np.full(len(canon), -1, dtype=np.int64)
            if ok.any():
                q = np.fromiter(
                    (k for k, good in zip(canon, ok) if good), dtype=np.int64, count=int(ok.sum())
                )
                out[ok] = self._search_int(q)
            return out
        if self._index is None:
            self._index = {k: i for i, k in enumerate(self._keys)}
        get = self._index.get
        return np.fromiter((get(k, -1) for k in canon), dtype=np.int64, count=len(canon))

    def _search_int(self, q: np.ndarray) -> np.ndarray:
        if self._sorted is None:
            order = np.argsort(self._key_array, kind="stable")
            self._sorted = (np.ascontiguousarray(self._key_array[order]), order)
        skeys, order = self._sorted
        if len(skeys) == 0:
            return np.full(len(q), -1, dtype=np.int64)
        pos = np.searchsorted(skeys, q)
        pos_c = np.minimum(pos, len(skeys) - 1)
        found = skeys[pos_c] == q
        return np.where(found, order[pos_c], -1).astype(np.int64)

    def _tuple_table(self, m: int) -> _TupleTable | None:
        """The coded, sorted table of the store's keys that are tuples of ``m`` integers."""
        if m not in self._tuple_tables:
            # (a tuple with an element outside int64 cannot equal a row of an int64 array)
            pos, found = [], []
            for i, k in enumerate(self._keys):
                if (
                    type(k) is tuple
                    and len(k) == m
                    and all(type(e) is int and _INT64_MIN <= e <= _INT64_MAX for e in k)
                ):
                    pos.append(i)
                    found.append(k)
            arr = np.array(found, dtype=np.int64).reshape(-1, m)
            self._tuple_tables[m] = _TupleTable.build(arr, np.asarray(pos, dtype=np.int64))
        return self._tuple_tables[m]

    def rows(self, keys: Sequence[Any] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Row index of each key, ``-1`` where absent; ``[n]`` int64.

        ``keys`` may be a sequence of keys, an integer array / tensor ``[n]`` of integer keys,
        or an integer array / tensor ``[n, m]`` of keys that are tuples of ``m`` integers;
        integer arrays are looked up by vectorised binary search (no Python loop over keys).
        """
        int_keys = _int_key_array(keys, "keys")
        if int_keys is not None and int_keys.ndim == 1 and self._key_array is not None:
            return self._search_int(int_keys)
        if int_keys is not None and int_keys.ndim == 2:
            if self._key_array is not None:  # an int-keyed store holds no tuple keys
                return np.full(len(int_keys), -1, dtype=np.int64)
            table = self._tuple_table(int_keys.shape[1])
            if table is not None:
                return table.search(int_keys)
        return self._rows_of(_key_list(keys if int_keys is None else int_keys, "keys"))

    def contains(self, keys: Sequence[Any] | np.ndarray | torch.Tensor) -> np.ndarray:
        """Whether each key is present; ``[n]`` bool."""
        return self.rows(keys) >= 0

    def lookup_numpy(
        self, keys: Sequence[Any] | np.ndarray | torch.Tensor, *, missing: str = "error"
    ) -> np.ndarray:
        """Vectors of ``keys`` as a NumPy array ``[n, d]`` (storage dtype).

        Args:
            keys: ``n`` keys (a sequence, or an integer array / tensor for integer keys).
            missing: ``"error"`` (raise :class:`MissingKeyError`) or ``"zeros"``.
        """
        check_choice(missing, "missing", ("error", "zeros"))
        rows = self.rows(keys)
        absent = rows < 0
        if absent.any() and missing == "error":
            pos = np.flatnonzero(absent)
            key_list = keys.tolist() if isinstance(keys, (np.ndarray, torch.Tensor)) else keys
            bad = [canonical_key(key_list[i]) for i in pos[:5]]
            more = f" (and {len(pos) - 5} more)" if len(pos) > 5 else ""
            raise MissingKeyError(
                f"{len(pos)} of {len(rows)} key(s) not in the store, e.g. keys[{pos[0]}] = "
                f"{bad[0]!r}; missing: {bad}{more}. Pass missing='zeros' to get zero vectors",
                [canonical_key(key_list[i]) for i in pos],
                pos.tolist(),
            )
        return self.take_rows(rows)

    def take_rows(self, rows: np.ndarray) -> np.ndarray:
        """Vectors at row indices ``[n]`` (from :meth:`rows`; ``-1`` gives a zero row).

        Rows are read in sorted, de-duplicated order, so a memory-mapped store touches each
        page it needs once.

        Returns:
            ``[n, d]`` array in the storage dtype.
        """
        rows = np.asarray(rows)
        if rows.size and not np.issubdtype(rows.dtype, np.integer):
            raise TypeError(f"rows must hold integer row indices, got dtype {rows.dtype}")
        rows = rows.astype(np.int64)
        if rows.ndim != 1 or (len(rows) and (rows.max() >= len(self) or rows.min() < -1)):
            raise ValueError(f"rows must be a 1-d array of indices in [-1, {len(self)})")
        out = np.zeros((len(rows), self._dim), dtype=self._dtype)
        present = rows >= 0
        if present.any():
            uniq, inv = np.unique(rows[present], return_inverse=True)
            got = self.vectors[uniq]
            if self._unchecked is not None:
                self._check_rows(uniq, got)
            out[present] = got[inv.reshape(-1)]
        return out

    def _check_rows(self, uniq: np.ndarray, got: np.ndarray) -> None:
        """Checks the rows ``uniq`` (vectors ``got``) read from disk for the first time."""
        u = self._unchecked
        first = np.flatnonzero(u[uniq[uniq < len(u)]])
        if first.size:
            bad = ~np.isfinite(got[first]).all(1)
            if bad.any():  # writers refuse these: the file was damaged
                rows = uniq[first[bad]][:5].tolist()
                raise ValueError(f"non-finite stored vectors in {self._source} at rows {rows}")
            u[uniq[first]] = False

    def lookup(
        self,
        keys: Sequence[Any] | np.ndarray | torch.Tensor,
        *,
        device: torch.device | str | None = None,
        dtype: torch.dtype | None = None,
        missing: str = "error",
    ) -> torch.Tensor:
        """Batched lookup: vectors of ``keys`` as a tensor ``[n, d]`` on ``device``.

        Args:
            keys: ``n`` keys.
            device: target device (default CPU).
            dtype: target dtype (default: the storage dtype).
            missing: ``"error"`` raises :class:`MissingKeyError` naming the absent keys;
                ``"zeros"`` returns zero rows for them (see :meth:`contains` for a mask).
        """
        t = torch.from_numpy(self.lookup_numpy(keys, missing=missing))
        return t.to(device=device if device is not None else "cpu", dtype=dtype)

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Saves the store to the folder ``path`` (written to a temporary folder, then renamed).

        Raises:
            FileExistsError: ``path`` exists and ``overwrite`` is off.
            ValueError: ``path`` is the folder this store is memory-mapped from.
        """
        path = Path(path)
        if self._path is not None and path.resolve() == self._path.resolve():
            raise ValueError(f"cannot save a memory-mapped store onto its own folder {path}")
        with EmbeddingStoreWriter(
            path,
            len(self),
            self._dim,
            dtype=self._dtype,
            metadata=self.metadata,
            overwrite=overwrite,
        ) as w:
            chunk = 1 << 16
            vec = self.vectors
            keys = self._key_array if self._key_array is not None else self._keys
            for i in range(0, len(self), chunk):
                w.write(keys[i : i + chunk], vec[i : i + chunk])
        return path

    @classmethod
    def load(cls, path: str | os.PathLike, *, mmap: bool = True) -> EmbeddingStore:
        """Loads a saved store.

        Args:
            path: folder written by :meth:`save` or :class:`EmbeddingStoreWriter`.
            mmap: memory-map the vectors (and integer keys) read-only instead of reading them
                into memory; the store is then read-only.

        Raises:
            FileNotFoundError: ``path`` or one of its files is missing.
            ValueError: the folder is not a complete, consistent store.
        """
        path = Path(path)
        meta_file = path / "meta.json"
        if not meta_file.is_file():
            raise FileNotFoundError(f"{path} is not a saved EmbeddingStore (no meta.json)")
        try:
            meta = json.loads(meta_file.read_text())
            if not isinstance(meta, dict):
                raise ValueError("not a JSON object")
            if meta.get("format") != _FORMAT or meta.get("version") != _VERSION:
                raise ValueError(f"not a version-{_VERSION} {_FORMAT} file")
            n, dim, key_format = int(meta["n"]), int(meta["dim"]), meta["key_format"]
        except (ValueError, KeyError, TypeError) as exc:  # JSONDecodeError is a ValueError
            raise ValueError(f"{meta_file} is damaged: {exc!r}") from exc
        store = cls(dim, dtype=meta["dtype"], metadata=meta.get("metadata"))
        mode = "r" if mmap else None
        try:
            vectors = np.load(path / "vectors.npy", mmap_mode=mode, allow_pickle=False)
        except (ValueError, EOFError) as exc:  # a truncated file: "mmap length is greater ..."
            raise ValueError(f"{path / 'vectors.npy'} is damaged: {exc}") from exc
        if vectors.shape != (n, dim) or vectors.dtype != store._dtype:
            raise ValueError(
                f"{path / 'vectors.npy'} has shape {vectors.shape} and dtype "
                f"{vectors.dtype}, meta.json says ({n}, {dim}) {store._dtype}"
            )
        if key_format == "int64":
            try:
                keys = np.load(path / "keys.npy", mmap_mode=mode, allow_pickle=False)
            except (ValueError, EOFError) as exc:  # e.g. "mmap length is greater than file size"
                raise ValueError(f"{path / 'keys.npy'} is damaged: {exc}") from exc
            if keys.shape != (n,) or keys.dtype != np.int64:
                raise ValueError(
                    f"{path / 'keys.npy'} must be {n} int64 keys, got shape "
                    f"{keys.shape} dtype {keys.dtype}"
                )
            store._key_array = keys
            store._search_int(keys[:0])  # builds the sorted index
            if n > 1 and bool((np.diff(store._sorted[0]) == 0).any()):
                raise ValueError(f"{path / 'keys.npy'} contains repeated keys")
        elif key_format == "json":
            try:
                raw = json.loads((path / "keys.json").read_text())
            except ValueError as exc:  # a truncated file: a bare JSONDecodeError
                raise ValueError(f"{path / 'keys.json'} is damaged: {exc}") from exc
            if not isinstance(raw, list) or len(raw) != n:
                raise ValueError(f"{path / 'keys.json'} must be a list of {n} keys")
            store._keys = _canonical_keys(raw, "keys.json")
            store._key_array = None
            store._index = {k: i for i, k in enumerate(store._keys)}
            if len(store._index) != n:
                raise ValueError(f"{path / 'keys.json'} contains repeated keys")
        else:
            raise ValueError(f"unknown key_format {key_format!r} in {meta_file}")
        store._vectors = vectors
        store._path = path if mmap else None
        store._source = path
        store._unchecked = np.ones(n, dtype=bool)
        return store


class _TupleTable:
    """Vectorised lookup of keys that are tuples of ``m`` integers.

    Each column's distinct values are sorted; a tuple is coded by the mixed-radix number of
    its columns' ranks (an ``int64``, so the product of the columns' distinct counts must be
    below ``2**62``), and the codes are sorted once. A query is coded the same way (one binary
    search per column) and found by a binary search over the codes.
    """

    def __init__(
        self, codes: np.ndarray, rows: np.ndarray, columns: list[np.ndarray], strides: list[int]
    ) -> None:
        self.codes, self.rows, self.columns, self.strides = codes, rows, columns, strides

    @classmethod
    def build(cls, keys: np.ndarray, rows: np.ndarray) -> _TupleTable | None:
        """From ``keys`` ``[n, m]`` int64 at store rows ``rows`` ``[n]``; ``None`` when the
        codes would not fit in ``int64``."""
        columns = [np.unique(keys[:, j]) for j in range(keys.shape[1])]
        strides, size = [], 1
        for col in reversed(columns):
            strides.append(size)
            size *= max(1, len(col))
        if size >= 2**62:
            return None
        strides.reverse()
        codes = np.zeros(len(keys), dtype=np.int64)
        for j, col in enumerate(columns):
            codes += np.searchsorted(col, keys[:, j]) * strides[j]
        order = np.argsort(codes, kind="stable")
        return cls(codes[order], rows[order], columns, strides)

    def search(self, q: np.ndarray) -> np.ndarray:
        """Store rows of the query tuples ``q`` ``[n, m]`` (``-1`` where absent)."""
        if len(self.codes) == 0:
            return np.full(len(q), -1, dtype=np.int64)
        found = np.ones(len(q), dtype=bool)
        code = np.zeros(len(q), dtype=np.int64)
        for j, col in enumerate(self.columns):
            pos = np.minimum(np.searchsorted(col, q[:, j]), len(col) - 1)
            found &= col[pos] == q[:, j]
            code += pos * self.strides[j]
        at = np.minimum(np.searchsorted(self.codes, code), len(self.codes) - 1)
        found &= self.codes[at] == code
        return np.where(found, self.rows[at], -1).astype(np.int64)


def _as_matrix(
    vectors: Any, name: str, dim: int | None = None, dtype: np.dtype | None = None
) -> np.ndarray:
    """``vectors`` as a finite ``[n, d]`` array; with ``dtype``, converted to it and still
    finite (a value too large for float16 would be stored as inf)."""
    if isinstance(vectors, torch.Tensor):
        vectors = vectors.detach().cpu().numpy()
    arr = np.asarray(vectors)
    if arr.dtype == object or not np.issubdtype(arr.dtype, np.number):
        raise TypeError(f"{name} must be a numeric array, got dtype {arr.dtype}")
    if arr.ndim != 2:
        raise ValueError(f"{name} must have shape [n, d], got {arr.shape}")
    if dim is not None and arr.shape[1] != dim:
        raise ValueError(f"{name} must have {dim} columns, got shape {arr.shape}")
    if arr.shape[1] == 0:
        raise ValueError(f"{name} must have at least one column, got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise ValueError(f"{name} contains {int((~np.isfinite(arr)).sum())} non-finite value(s)")
    if dtype is not None:
        with np.errstate(over="ignore"):
            arr = arr.astype(dtype)
        if not np.isfinite(arr).all():
            raise ValueError(
                f"{name} has {int((~np.isfinite(arr)).sum())} value(s) beyond the range of "
                f"the storage dtype {np.dtype(dtype).name}"
            )
    return arr


class EmbeddingStoreWriter:
    """Writes an :class:`EmbeddingStore` of known size chunk by chunk, never holding it in memory.

    Vectors go straight into a memory-mapped ``.npy`` file in a temporary folder next to
    ``path``; :meth:`close` checks that all ``n`` rows were written with distinct keys, writes
    the keys and ``meta.json`` and renames the folder to ``path``. Used as a context manager,
    an exception discards the partial store.

    Example:
        >>> with EmbeddingStore.writer(tmp / "fm", n=2, dim=3) as w:   # doctest: +SKIP
        ...     w.write([10, 11], np.ones((2, 3)))
        >>> store = EmbeddingStore.load(tmp / "fm")                      # doctest: +SKIP

    Args:
        path: destination folder.
        n: number of rows.
        dim: vector width.
        dtype: storage dtype.
        metadata: JSON-serialisable description.
        overwrite: replace an existing folder at ``path``.
    """

    def __init__(
        self,
        path: str | os.PathLike,
        n: int,
        dim: int,
        *,
        dtype: Any = "float32",
        metadata: Mapping[str, Any] | None = None,
        overwrite: bool = False,
    ) -> None:
        self.path = Path(path)
        self.n = check_positive_int(n, "n", minimum=0)
        self.dim = check_positive_int(dim, "dim")
        self.dtype = _check_dtype(dtype)
        self.metadata = dict(metadata or {})
        json.dumps(self.metadata)
        if self.path.exists() and not overwrite:
            raise FileExistsError(f"{self.path} exists; pass overwrite=True to replace it")
        self.overwrite = overwrite
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._tmp = self.path.parent / f".{self.path.name}.tmp-{uuid.uuid4().hex[:12]}"
        self._tmp.mkdir()
        self._vectors = np.lib.format.open_memmap(
            self._tmp / "vectors.npy", mode="w+", dtype=self.dtype, shape=(self.n, self.dim)
        )
        self._keys: list[Hashable] = []
        self._seen: set[Hashable] = set()
        self._all_int = True
        self._closed = False
        self._aborted = False

    @property
    def written(self) -> int:
        """Rows written so far."""
        return len(self._keys)

    def write(self, keys: Sequence[Any] | np.ndarray | torch.Tensor, vectors: Any) -> None:
        """Appends ``len(keys)`` rows.

        Raises:
            ValueError: more than ``n`` rows in all, a repeated key, bad shapes or non-finite
                vectors.
        """
        if self._closed:
            raise ValueError("this writer is closed")
        if len(vectors) == 0:
            arr = np.zeros((0, self.dim), dtype=self.dtype)
        else:
            arr = _as_matrix(vectors, "vectors", self.dim, self.dtype)
        canon = _key_list(keys, "keys")
        if len(canon) != len(arr):
            raise ValueError(f"mismatched lengths: keys has {len(canon)}, vectors has {len(arr)}")
        start = len(self._keys)
        if start + len(canon) > self.n:
            raise ValueError(
                f"writing {len(canon)} more row(s) would exceed n = {self.n} ({start} written)"
            )
        fresh = set(canon)
        if len(fresh) != len(canon) or not fresh.isdisjoint(self._seen):
            local: set[Hashable] = set()
            dup = next(k for k in canon if k in self._seen or k in local or local.add(k))
            # nothing recorded: a corrected retry of the chunk is accepted
            raise ValueError(f"key {dup!r} is written more than once")
        self._seen |= fresh
        self._all_int = self._all_int and all(
            isinstance(k, int) and _INT64_MIN <= k <= _INT64_MAX for k in canon
        )
        self._vectors[start : start + len(canon)] = arr
        self._keys.extend(canon)

    def close(self) -> EmbeddingStore:
        """Finishes the store and returns it loaded (memory-mapped).

        Raises:
            ValueError: fewer than ``n`` rows were written (the partial store is discarded),
                or the writer was aborted (nothing was saved).
        """
        if self._aborted:  # it returned whatever store was at ``path`` before, or none
            raise ValueError(f"this writer was aborted: no store was written to {self.path}")
        if self._closed:
            return EmbeddingStore.load(self.path)
        if len(self._keys) != self.n:
            self.abort()
            raise ValueError(f"only {len(self._keys)} of n = {self.n} rows were written")
        self._vectors.flush()
        del self._vectors
        if self._all_int:
            np.save(self._tmp / "keys.npy", np.asarray(self._keys, dtype=np.int64))
            key_format = "int64"
        else:
            with open(self._tmp / "keys.json", "w") as f:
                # one JSON list, encoded in chunks (json.dumps is C-accelerated, json.dump is
                # not); tuples are written as JSON arrays
                f.write("[")
                for i in range(0, len(self._keys), 1 << 16):
                    f.write(("," if i else "") + json.dumps(self._keys[i : i + (1 << 16)])[1:-1])
                f.write("]")
            key_format = "json"
        meta = {
            "format": _FORMAT,
            "version": _VERSION,
            "n": self.n,
            "dim": self.dim,
            "dtype": self.dtype.name,
            "key_format": key_format,
            "metadata": self.metadata,
        }
        (self._tmp / "meta.json").write_text(json.dumps(meta, indent=1))
        if self.path.exists():
            if not self.overwrite:
                self.abort()
                raise FileExistsError(f"{self.path} appeared while writing")
            old = self.path.parent / f".{self.path.name}.old-{uuid.uuid4().hex[:12]}"
            os.replace(self.path, old)
            try:
                os.replace(self._tmp, self.path)
            except BaseException:
                os.replace(old, self.path)  # the previous store stays where it was
                self.abort()
                raise
            shutil.rmtree(old, ignore_errors=True)
        else:
            os.replace(self._tmp, self.path)
        self._closed = True
        return EmbeddingStore.load(self.path)

    def abort(self) -> None:
        """Discards the partial store (a store already closed stays saved)."""
        self._aborted = self._aborted or not self._closed
        self._closed = True
        self.__dict__.pop("_vectors", None)
        shutil.rmtree(self._tmp, ignore_errors=True)

    def __enter__(self) -> EmbeddingStoreWriter:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        if exc_type is not None:
            self.abort()
        elif not self._closed:
            self.close()
