"""Frozen-embedding store: keys, lookup, save / load (memory-mapped), chunked writer."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from probrec.backbone import EmbeddingStore, MissingKeyError, canonical_key


def _vectors(n: int, d: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)


MIXED_KEYS = ["user-7", 7, ("u1", 42, 1700000000), ("u1", 42, 1700000001), "7", (3, ("a", 1))]


def test_lookup_returns_rows_in_request_order_for_mixed_keys() -> None:
    vec = _vectors(len(MIXED_KEYS), 5)
    store = EmbeddingStore.from_arrays(MIXED_KEYS, vec)
    assert len(store) == 6 and store.dim == 5
    order = [4, 0, 2, 2, 5, 1, 3]
    out = store.lookup([MIXED_KEYS[i] for i in order])
    assert out.shape == (7, 5) and out.dtype == torch.float32
    np.testing.assert_array_equal(out.numpy(), vec[order])
    # 7 and "7" are different keys; lists are read as tuples
    np.testing.assert_array_equal(store["7"], vec[4])
    np.testing.assert_array_equal(store[7], vec[1])
    np.testing.assert_array_equal(store[["u1", 42, 1700000000]], vec[2])
    assert ("u1", 42, 1700000001) in store and ("u1", 42, 5) not in store and 3.5 not in store


def test_numpy_and_torch_integers_are_the_same_keys() -> None:
    vec = _vectors(3, 2)
    store = EmbeddingStore.from_arrays(np.array([10, 20, 30]), vec)
    np.testing.assert_array_equal(store.lookup(torch.tensor([30, 10])).numpy(), vec[[2, 0]])
    np.testing.assert_array_equal(store.lookup([np.int32(20)]).numpy(), vec[[1]])
    np.testing.assert_array_equal(store[torch.tensor(30)], vec[2])


def test_missing_keys_raise_a_clear_error_or_give_zeros() -> None:
    vec = _vectors(3, 4)
    store = EmbeddingStore.from_arrays(["a", "b", "c"], vec)
    with pytest.raises(MissingKeyError, match=r"keys\[1\] = 'zz'") as info:
        store.lookup(["a", "zz", "b", "yy"])
    assert isinstance(info.value, KeyError) and isinstance(info.value, ValueError)
    assert info.value.missing == ["zz", "yy"] and info.value.positions == [1, 3]
    out = store.lookup(["a", "zz", "c"], missing="zeros")
    np.testing.assert_array_equal(out.numpy(), np.stack([vec[0], np.zeros(4), vec[2]]))
    np.testing.assert_array_equal(store.contains(["a", "zz", "c"]), [True, False, True])
    with pytest.raises(KeyError):
        store["nope"]
    with pytest.raises(ValueError, match="missing"):
        store.lookup(["a"], missing="skip")


def test_bad_keys_and_vectors() -> None:
    with pytest.raises(TypeError, match="float"):
        EmbeddingStore.from_arrays([1.5], np.ones((1, 2)))
    with pytest.raises(TypeError, match="bool"):
        EmbeddingStore.from_arrays([True], np.ones((1, 2)))
    with pytest.raises(TypeError, match=r"keys\[1\]\[0\]"):
        EmbeddingStore.from_arrays(["a", (None, 1)], np.ones((2, 2)))
    with pytest.raises(ValueError, match="more than once"):
        EmbeddingStore.from_arrays(["a", "b", "a"], np.ones((3, 2)))
    with pytest.raises(ValueError, match="mismatched lengths"):
        EmbeddingStore.from_arrays(["a", "b"], np.ones((3, 2)))
    with pytest.raises(ValueError, match="non-finite"):
        EmbeddingStore.from_arrays(["a"], np.array([[1.0, np.nan]]))
    with pytest.raises(ValueError, match=r"shape \[n, d\]"):
        EmbeddingStore.from_arrays(["a"], np.ones(3))
    with pytest.raises(ValueError, match="dtype"):
        EmbeddingStore(4, dtype="int8")
    with pytest.raises(TypeError):
        canonical_key({"a": 1})


def test_add_and_overwrite() -> None:
    store = EmbeddingStore(3)
    store.add([1, 2], np.ones((2, 3)))
    with pytest.raises(ValueError, match="already in the store"):
        store.add([2, 3], np.zeros((2, 3)))
    store.add([2, 3], np.zeros((2, 3)), overwrite=True)
    np.testing.assert_array_equal(
        store.lookup([1, 2, 3]).numpy(), [[1, 1, 1], [0, 0, 0], [0, 0, 0]]
    )
    store.add(["s"], np.full((1, 3), 2.0))  # switching from integer keys to general keys
    assert store.keys() == [1, 2, 3, "s"]
    np.testing.assert_array_equal(store.lookup(["s", 1]).numpy(), [[2, 2, 2], [1, 1, 1]])


def test_an_integer_keyed_store_finds_its_keys_among_keys_of_other_kinds(tmp_path: Path) -> None:
    s = EmbeddingStore.from_arrays([5, 7], np.array([[1.0, 1.0], [2.0, 2.0]]))
    # one key of another kind made every key of the request absent (5 read as zeros)
    np.testing.assert_array_equal(s.contains([5, "x", 2**70, 7]), [True, False, False, True])
    np.testing.assert_array_equal(
        s.lookup([5, "x"], missing="zeros").numpy(), [[1.0, 1.0], [0.0, 0.0]]
    )
    with pytest.raises(ValueError, match="key 5 is already in the store"):  # was added twice
        s.add([5, "x"], np.array([[9.0, 9.0], [3.0, 3.0]]))
    assert s.keys() == [5, 7] and len(s) == 2
    s.add([5, "x"], np.array([[9.0, 9.0], [3.0, 3.0]]), overwrite=True)
    assert s.keys() == [5, 7, "x"]
    np.testing.assert_array_equal(s.lookup([5, "x"]).numpy(), [[9.0, 9.0], [3.0, 3.0]])
    back = EmbeddingStore.load(s.save(tmp_path / "s"))  # could not be saved before
    np.testing.assert_array_equal(back.lookup([7, 5, "x"]).numpy(), s.lookup([7, 5, "x"]).numpy())


@pytest.mark.parametrize(
    "keys",
    [list(range(100, 140)), [f"item{i}" for i in range(40)], [("u", i, i * 10) for i in range(40)]],
)
@pytest.mark.parametrize("mmap", [True, False])
def test_save_load_identical(tmp_path: Path, keys: list, mmap: bool) -> None:
    vec = _vectors(40, 16, seed=3)
    store = EmbeddingStore.from_arrays(keys, vec, metadata={"model": "fm-v1", "layer": 12})
    store.save(tmp_path / "s")
    key_file = "keys.npy" if isinstance(keys[0], int) else "keys.json"
    assert (tmp_path / "s" / key_file).is_file()
    assert not list(tmp_path.glob(".*tmp*"))  # no temporary folder left behind
    loaded = EmbeddingStore.load(tmp_path / "s", mmap=mmap)
    assert loaded.is_memory_mapped == mmap
    assert loaded.keys() == store.keys() and loaded.metadata == {"model": "fm-v1", "layer": 12}
    rng = np.random.default_rng(0)
    idx = rng.integers(0, 40, size=25)
    req = [keys[i] for i in idx]
    assert torch.equal(loaded.lookup(req), store.lookup(req))
    np.testing.assert_array_equal(np.asarray(loaded.vectors), vec)


def test_memory_mapped_store_is_read_only_and_cannot_overwrite_itself(tmp_path: Path) -> None:
    EmbeddingStore.from_arrays(["a"], np.ones((1, 2))).save(tmp_path / "s")
    loaded = EmbeddingStore.load(tmp_path / "s")
    assert isinstance(loaded.vectors, np.memmap)
    with pytest.raises(ValueError, match="read-only"):
        loaded.add(["b"], np.ones((1, 2)))
    with pytest.raises(ValueError, match="its own folder"):
        loaded.save(tmp_path / "s", overwrite=True)
    with pytest.raises(FileExistsError):
        EmbeddingStore.from_arrays(["z"], np.ones((1, 2))).save(tmp_path / "s")
    EmbeddingStore.from_arrays(["z"], np.zeros((1, 2))).save(tmp_path / "s2")
    copy = EmbeddingStore.load(tmp_path / "s2", mmap=False)
    copy.add(["y"], np.ones((1, 2)))  # a store read into memory can grow
    copy.save(tmp_path / "s2", overwrite=True)
    assert EmbeddingStore.load(tmp_path / "s2").keys() == ["z", "y"]


def test_load_errors(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="meta.json"):
        EmbeddingStore.load(tmp_path / "nothing")
    EmbeddingStore.from_arrays([1, 2], np.ones((2, 3))).save(tmp_path / "s")
    meta = json.loads((tmp_path / "s" / "meta.json").read_text())
    meta["dim"] = 4
    (tmp_path / "s" / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(ValueError, match="shape"):
        EmbeddingStore.load(tmp_path / "s")


def test_writer_builds_a_store_chunk_by_chunk(tmp_path: Path) -> None:
    n, d = 1000, 8
    vec = _vectors(n, d, seed=5)
    keys = [("user", i // 10, i % 10) for i in range(n)]
    with EmbeddingStore.writer(tmp_path / "big", n, d, dtype="float16", metadata={"fm": "x"}) as w:
        for start in range(0, n, 128):
            w.write(keys[start : start + 128], vec[start : start + 128])
        assert w.written == n
    store = EmbeddingStore.load(tmp_path / "big")
    assert store.dtype == np.float16 and len(store) == n and store.is_memory_mapped
    got = store.lookup(keys[::-7], dtype=torch.float32)
    np.testing.assert_array_equal(got.numpy(), vec[::-7].astype(np.float16).astype(np.float32))


def test_writer_discards_incomplete_or_failed_stores(tmp_path: Path) -> None:
    w = EmbeddingStore.writer(tmp_path / "s", 3, 2)
    w.write([1, 2], np.ones((2, 2)))
    with pytest.raises(ValueError, match="only 2 of n = 3"):
        w.close()
    assert not (tmp_path / "s").exists()
    with pytest.raises(RuntimeError):
        with EmbeddingStore.writer(tmp_path / "s", 3, 2) as w:
            w.write([1], np.ones((1, 2)))
            raise RuntimeError("boom")
    assert not (tmp_path / "s").exists() and not list(tmp_path.iterdir())
    w = EmbeddingStore.writer(tmp_path / "s", 2, 2)
    with pytest.raises(ValueError, match="more than once"):
        w.write([1, 1], np.ones((2, 2)))
    w.abort()
    w = EmbeddingStore.writer(tmp_path / "s", 1, 2)
    with pytest.raises(ValueError, match="exceed n = 1"):
        w.write([1, 2], np.ones((2, 2)))
    w.abort()


def test_a_refused_write_changes_nothing_and_values_must_fit_the_dtype(tmp_path: Path) -> None:
    vec = _vectors(3, 2)
    w = EmbeddingStore.writer(tmp_path / "s", 3, 2)
    with pytest.raises(ValueError, match="more than once"):
        w.write([1, 2, 1], vec)
    w.write([1, 2, 3], vec)  # the corrected retry (key 1 was marked written before)
    np.testing.assert_array_equal(w.close().lookup([3]).numpy(), vec[2:])
    # 1e6 does not fit float16: it was stored as inf
    with pytest.raises(ValueError, match="beyond the range of the storage dtype float16"):
        EmbeddingStore.from_arrays([1], [[1e6, 1.0]], dtype="float16")
    with EmbeddingStore.writer(tmp_path / "h", 1, 2, dtype="float16") as w16:
        with pytest.raises(ValueError, match="float16"):
            w16.write([1], [[1e6, 1.0]])
        w16.write([1], [[1.0, 1.0]])


@pytest.mark.parametrize("mmap", [True, False])
def test_damaged_stored_vectors_are_refused_not_returned(tmp_path: Path, mmap: bool) -> None:
    EmbeddingStore.from_arrays([10, 11], _vectors(2, 3)).save(tmp_path / "s")
    arr = np.load(tmp_path / "s" / "vectors.npy", mmap_mode="r+")
    arr[1, 0] = np.nan  # the writers refuse this: only damage puts it there
    arr.flush()
    del arr
    store = EmbeddingStore.load(tmp_path / "s", mmap=mmap)
    assert bool(torch.isfinite(store.lookup([10])).all())
    with pytest.raises(ValueError, match="non-finite stored vectors.* rows \\[1\\]"):
        store.lookup([11])
    with pytest.raises(TypeError, match="integer row indices"):
        store.take_rows(np.array([1.7]))  # read row 1


@pytest.mark.parametrize("damage", ["meta_truncated", "meta_no_key_format", "keys_truncated"])
def test_damaged_store_files_are_named(tmp_path: Path, damage: str) -> None:
    EmbeddingStore.from_arrays(np.arange(100), _vectors(100, 3)).save(tmp_path / "s")
    meta, keys = tmp_path / "s" / "meta.json", tmp_path / "s" / "keys.npy"
    if damage == "meta_truncated":  # a bare JSONDecodeError
        meta.write_text(meta.read_text()[:20])
    elif damage == "meta_no_key_format":  # a KeyError
        m = json.loads(meta.read_text())
        del m["key_format"]
        meta.write_text(json.dumps(m))
    else:  # "mmap length is greater than file size"
        keys.write_bytes(keys.read_bytes()[:200])
    name = "keys.npy" if damage == "keys_truncated" else "meta.json"
    with pytest.raises(ValueError, match=f"{name} is damaged"):
        EmbeddingStore.load(tmp_path / "s")


def test_a_failed_overwrite_keeps_the_previous_store(tmp_path: Path, monkeypatch) -> None:
    import os

    old = _vectors(2, 3, seed=1)
    EmbeddingStore.from_arrays([1, 2], old).save(tmp_path / "s")
    real = os.replace

    def fail_into_place(src, dst):
        if Path(src).name.startswith(".s.tmp-"):
            raise OSError("disk full")  # the new store's rename into place
        return real(src, dst)

    monkeypatch.setattr(os, "replace", fail_into_place)
    with pytest.raises(OSError, match="disk full"):
        EmbeddingStore.from_arrays([1, 2], _vectors(2, 3, seed=2)).save(
            tmp_path / "s", overwrite=True
        )
    monkeypatch.undo()
    # the path held no store at all before
    np.testing.assert_array_equal(EmbeddingStore.load(tmp_path / "s").lookup([1, 2]).numpy(), old)
    assert [p.name for p in tmp_path.iterdir()] == ["s"]


def test_integer_lookup_matches_a_dictionary_at_scale() -> None:
    rng = np.random.default_rng(1)
    keys = rng.choice(10**12, size=50_000, replace=False)
    vec = rng.standard_normal((50_000, 4)).astype(np.float32)
    store = EmbeddingStore.from_arrays(keys, vec)
    query = np.concatenate([rng.choice(keys, 3000), rng.integers(0, 10**12, 50)])
    ref = {int(k): i for i, k in enumerate(keys)}
    expected_rows = np.array([ref.get(int(q), -1) for q in query])
    np.testing.assert_array_equal(store.rows(query), expected_rows)
    out = store.lookup(query, missing="zeros").numpy()
    hit = expected_rows >= 0
    np.testing.assert_array_equal(out[hit], vec[expected_rows[hit]])
    assert not out[~hit].any()


def test_lookup_device_and_dtype() -> None:
    store = EmbeddingStore.from_arrays(["a", "b"], _vectors(2, 3))
    out = store.lookup(["b"], device="cpu", dtype=torch.float64)
    assert out.dtype == torch.float64 and out.device.type == "cpu"
    if torch.cuda.is_available():
        cuda = store.lookup(["b", "a"], device="cuda")
        assert cuda.device.type == "cuda"
        assert torch.equal(cuda.cpu(), store.lookup(["b", "a"]))


def test_take_rows() -> None:
    vec = _vectors(4, 3)
    store = EmbeddingStore.from_arrays(["a", "b", "c", "d"], vec)
    rows = store.rows(["d", "x", "a", "d"])
    np.testing.assert_array_equal(rows, [3, -1, 0, 3])
    out = store.take_rows(rows)
    np.testing.assert_array_equal(out, np.stack([vec[3], np.zeros(3), vec[0], vec[3]]))
    with pytest.raises(ValueError, match="rows must be"):
        store.take_rows(np.array([4]))


def test_tuple_key_arrays_are_found_as_the_dictionary_finds_them() -> None:
    rng = np.random.default_rng(2)
    n = 20_000
    cols = [rng.integers(-5, 900, n), rng.integers(0, 1700, n), rng.integers(-(2**40), 2**40, n)]
    trip = np.unique(np.stack(cols, 1), axis=0)
    others = ["s", 7, (1, "a"), (1, 2), (1, 2, 3, 4), (2**70, 1, 1), (0, 0, 5)]
    keys = [tuple(t) for t in trip.tolist()] + others
    vec = _vectors(len(keys), 3)
    store = EmbeddingStore.from_arrays(keys, vec)
    present = trip[rng.choice(len(trip), 3000)]
    # absent: known column values in new combinations, and values no key has
    mixed = np.stack([present[:, 0], np.roll(present[:, 1], 1), present[:, 2]], 1)
    unseen = present[:50].copy()
    unseen[:, 2] = 2**41
    query = np.concatenate([present, mixed, unseen, [[0, 0, 5]]])
    expected = store.rows([tuple(q) for q in query.tolist()])  # the dictionary path
    assert (expected[:3000] >= 0).all() and (expected[-51:-1] == -1).all()
    assert expected[-1] == len(keys) - 1  # (0, 0, 5) is one of the others
    np.testing.assert_array_equal(store.rows(query), expected)
    assert store._tuple_tables[3] is not None  # the coded table answered
    np.testing.assert_array_equal(store.rows(torch.from_numpy(query)), expected)
    np.testing.assert_array_equal(store.lookup_numpy(query[:3000]), vec[expected[:3000]])
    # pairs are a table of their own; an integer-keyed store holds no tuples
    pair_row = keys.index((1, 2))
    assert store.rows(np.array([[1, 2], [2, 1]])).tolist() == [pair_row, -1]
    assert EmbeddingStore.from_arrays(np.arange(3), _vectors(3, 2)).rows(
        np.array([[1, 2]])
    ).tolist() == [-1]
    # added keys are found (the table is rebuilt)
    store.add(np.array([[10**6, 1, 2]]), _vectors(1, 3, seed=5))
    assert store.rows(np.array([[10**6, 1, 2]])).tolist() == [len(keys)]
    with pytest.raises(MissingKeyError, match=r"keys\[1\] = \(1, 2, 3\)"):
        store.lookup(np.array([[0, 0, 5], [1, 2, 3]]))


def test_tuple_keys_too_varied_to_code_fall_back_to_the_dictionary() -> None:
    rng = np.random.default_rng(3)
    # 5 columns of ~6,000 distinct values: about 8e18 codes, more than int64 allows
    tup = rng.integers(0, 2**50, size=(6000, 5))
    store = EmbeddingStore.from_arrays(tup, _vectors(6000, 2))
    query = np.concatenate([tup[::7], tup[:20] + 1])
    expected = store.rows([tuple(q) for q in query.tolist()])
    np.testing.assert_array_equal(store.rows(query), expected)
    assert store._tuple_tables[5] is None  # the dictionary answered
    assert (expected[: len(tup[::7])] == np.arange(0, 6000, 7)).all()


def test_key_arrays_of_other_shapes_are_refused() -> None:
    store = EmbeddingStore.from_arrays([(1, 2)], _vectors(1, 2))
    with pytest.raises(ValueError, match=r"keys must be one-dimensional, or \[n, m\]"):
        store.rows(np.zeros((2, 2, 2), dtype=np.int64))
    with pytest.raises(ValueError, match="keys must be"):
        store.rows(np.zeros((2, 0), dtype=np.int64))
    with pytest.raises(TypeError, match="keys must hold"):
        store.rows(np.zeros((2, 2)))


def test_a_large_json_keyed_store_round_trips_exactly(tmp_path: Path) -> None:
    # more keys than one chunk of the JSON writer (65,536), nested and mixed keys among them
    rng = np.random.default_rng(5)
    trip = np.unique(rng.integers(0, 10**6, size=(70_000, 3)), axis=0)
    keys = [tuple(t) for t in trip.tolist()] + MIXED_KEYS
    vec = _vectors(len(keys), 2)
    store = EmbeddingStore.from_arrays(keys, vec)
    store.save(tmp_path / "s")
    assert json.loads((tmp_path / "s" / "keys.json").read_text())[-1] == [3, ["a", 1]]
    again = EmbeddingStore.load(tmp_path / "s")
    assert again.keys() == keys
    order = rng.permutation(len(keys))[:2000]
    np.testing.assert_array_equal(again.lookup_numpy([keys[i] for i in order]), vec[order])


def test_keys_with_bools_inside_are_refused_with_their_position() -> None:
    with pytest.raises(TypeError, match=r"keys\[1\]\[0\] must be .* bool"):
        EmbeddingStore.from_arrays([(1, 2), (True, 2)], np.ones((2, 2)))
    with pytest.raises(TypeError, match=r"keys\[0\]\[1\]\[1\] must be .* float"):
        EmbeddingStore.from_arrays([("a", ("b", 1.5))], np.ones((1, 2)))
