"""EmbeddingStore persistence against independent references: a Python dictionary for the
keys, NumPy's own dtype rounding and ``.npy`` reader for the values, and the files themselves
for damaged or unfinished writes."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from probrec.backbone import EmbeddingStore, MissingKeyError

KEYS = [
    2**63 - 1,
    -(2**63),
    2**64,  # beyond int64: JSON keys
    0,
    "0",
    "a\nb",
    "Zürich",
    (1, -2, 3),
    (1, -2, 4),
    ("u", (1, 2)),
    (),
]


def _reference(keys: list, vec: np.ndarray, dtype: str) -> dict:
    """Key -> the vector rounded by NumPy to the storage dtype (tuples stay tuples)."""
    return {k: v for k, v in zip(keys, vec.astype(dtype))}


@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("mmap", [True, False])
@pytest.mark.parametrize("int_keys", [True, False])
def test_write_reload_and_append_match_a_dictionary(
    tmp_path: Path, dtype: str, mmap: bool, int_keys: bool
) -> None:
    rng = np.random.default_rng(0)
    keys = list(rng.permutation(10**6)[:50].tolist()) if int_keys else KEYS
    vec = rng.standard_normal((len(keys), 6)) * 10
    ref = _reference(keys, vec, dtype)
    EmbeddingStore.from_arrays(keys, vec, dtype=dtype, metadata={"fm": "x"}).save(tmp_path / "s")
    # the vectors file is a plain .npy: NumPy reads the same values back
    raw = np.load(tmp_path / "s" / "vectors.npy", allow_pickle=False)
    assert raw.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(raw, vec.astype(dtype))
    store = EmbeddingStore.load(tmp_path / "s", mmap=mmap)
    assert store.keys() == keys and store.dtype == np.dtype(dtype) and store.metadata == {"fm": "x"}
    order = rng.permutation(len(keys))
    got = store.lookup_numpy([keys[i] for i in order])
    assert got.dtype == np.dtype(dtype)
    np.testing.assert_array_equal(got, np.stack([ref[keys[i]] for i in order]))
    # appends: read into memory, add rows and overwrite one, save over the same folder
    grown = EmbeddingStore.load(tmp_path / "s", mmap=False)
    new_keys = [10**7, 10**7 + 1] if int_keys else ["new", (9, 9, 9)]
    new = rng.standard_normal((2, 6))
    grown.add(new_keys, new)
    grown.add([keys[3]], new[:1] * 2, overwrite=True)
    ref.update(_reference(new_keys, new, dtype))
    ref[keys[3]] = (new[0] * 2).astype(dtype)
    grown.save(tmp_path / "s", overwrite=True)
    again = EmbeddingStore.load(tmp_path / "s", mmap=mmap)
    assert again.keys() == keys + new_keys
    np.testing.assert_array_equal(again.lookup_numpy(list(ref)), np.stack(list(ref.values())))
    # absent keys: exactly the set difference, at their positions
    asked = [keys[0], "absent", new_keys[1], (5, 5)]
    with pytest.raises(MissingKeyError) as info:
        again.lookup(asked)
    assert info.value.missing == ["absent", (5, 5)] and info.value.positions == [1, 3]
    zeros = again.lookup_numpy(asked, missing="zeros")
    np.testing.assert_array_equal(zeros[[1, 3]], 0.0)
    np.testing.assert_array_equal(zeros[[0, 2]], np.stack([ref[keys[0]], ref[new_keys[1]]]))


@pytest.mark.parametrize("how", ["incomplete", "exception", "abort"])
def test_an_aborted_writer_never_returns_a_store(tmp_path: Path, how: str) -> None:
    old = np.arange(6.0).reshape(2, 3)
    EmbeddingStore.from_arrays([1, 2], old).save(tmp_path / "s")
    w = EmbeddingStore.writer(tmp_path / "s", 2, 3, overwrite=True)
    w.write([5], np.zeros((1, 3)))
    if how == "incomplete":
        with pytest.raises(ValueError, match="only 1 of n = 2"):
            w.close()
    elif how == "exception":
        with pytest.raises(RuntimeError), w:
            raise RuntimeError("boom")
    else:
        w.abort()
    # close() returned the previous store at the path as if it were the one written
    with pytest.raises(ValueError, match="aborted: no store was written"):
        w.close()
    kept = EmbeddingStore.load(tmp_path / "s")
    assert kept.keys() == [1, 2]
    np.testing.assert_array_equal(kept.vectors, old)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_abort_after_close_keeps_the_store(tmp_path: Path) -> None:
    w = EmbeddingStore.writer(tmp_path / "s", 1, 2)
    w.write([1], np.ones((1, 2)))
    w.close()
    w.abort()
    np.testing.assert_array_equal(w.close().lookup_numpy([1]), np.ones((1, 2)))


@pytest.mark.parametrize(
    "damage",
    ["vectors_truncated", "vectors_header", "keys_json_truncated", "keys_json_empty"],
)
@pytest.mark.parametrize("mmap", [True, False])
def test_truncated_store_files_are_named(tmp_path: Path, damage: str, mmap: bool) -> None:
    json_keys = damage.startswith("keys_json")
    keys = [f"k{i}" for i in range(100)] if json_keys else list(range(100))
    EmbeddingStore.from_arrays(keys, np.ones((100, 8))).save(tmp_path / "s")
    name = "keys.json" if json_keys else "vectors.npy"
    f = tmp_path / "s" / name
    size = {"vectors_truncated": 300, "vectors_header": 30, "keys_json_truncated": 50}
    f.write_bytes(f.read_bytes()[: size.get(damage, 0)])
    # bare "mmap length is greater than file size" / JSONDecodeError, no file named
    with pytest.raises(ValueError, match=f"{name} is damaged"):
        EmbeddingStore.load(tmp_path / "s", mmap=mmap)


def test_a_store_copied_elsewhere_reads_the_same(tmp_path: Path) -> None:
    vec = np.random.default_rng(3).standard_normal((4, 3))
    EmbeddingStore.from_arrays(KEYS[:4], vec).save(tmp_path / "s")
    shutil.copytree(tmp_path / "s", tmp_path / "copy")
    meta = json.loads((tmp_path / "copy" / "meta.json").read_text())
    assert meta["n"] == 4 and meta["dim"] == 3 and meta["dtype"] == "float32"
    np.testing.assert_array_equal(
        EmbeddingStore.load(tmp_path / "copy").lookup_numpy(KEYS[:4][::-1]),
        vec[::-1].astype(np.float32),
    )
