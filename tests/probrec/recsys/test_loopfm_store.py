"""The FM store: identical embeddings after save / load, and both read paths agree."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.backbone.store import EmbeddingStore
from probrec.recsys import (
    EventTable,
    FoundationModel,
    StoredHistory,
    event_key_array,
    event_keys,
    fm_embeddings,
    lookup_histories,
    write_fm_store,
)


def _fm(table: EventTable, *, dropout: float = 0.0, seed: int = 1) -> FoundationModel:
    """A small foundation model sized to ``table``'s FM vocabulary."""
    return FoundationModel(
        int(table.fm_user.max()) + 1,
        int(table.fm_item.max()) + 1,
        table.field_cardinalities,
        table.n_multi_hot,
        emb_dim=8,
        hidden=(16, 12),
        max_history=6,
        dropout=dropout,
        seed=seed,
    )


def test_store_round_trip_is_exact(small_log, tmp_path):
    table = EventTable.build(small_log, np.arange(1500), user_history=6, item_history=4)
    fm = _fm(table)
    store = write_fm_store(fm, table, tmp_path / "fm")
    assert store.is_memory_mapped and len(store) == len(small_log) and store.dim == 8 + 8 + 12
    direct, _ = fm_embeddings(fm, table, np.arange(len(small_log)))
    keys = event_keys(small_log)
    assert store.keys() == keys  # (user, item, time) tuples, written from an [n, 3] array
    np.testing.assert_array_equal(store.lookup_numpy(keys), direct.numpy())
    np.testing.assert_array_equal(store.lookup_numpy(event_key_array(small_log)), direct.numpy())
    # save the loaded store elsewhere and load it again, in memory and memory-mapped
    store.save(tmp_path / "copy")
    for mmap in (True, False):
        again = EmbeddingStore.load(tmp_path / "copy", mmap=mmap)
        perm = np.random.default_rng(0).permutation(len(keys))[:500]
        sub = [keys[i] for i in perm]
        np.testing.assert_array_equal(again.lookup_numpy(sub), direct.numpy()[perm])
        assert again.keys() == store.keys()
        assert again.metadata["stored"] == "item+sequence+hidden"


def test_stored_history_equals_serving_lookup(small_log, tmp_path):
    table = EventTable.build(small_log, np.arange(1500), user_history=6, item_history=4)
    store = write_fm_store(_fm(table), table, tmp_path / "fm")
    stored = StoredHistory(store, table)
    b = table.batch(np.arange(2000, 2300))
    fast = stored(b)
    serving = lookup_histories(store, table, b)
    for k in ("fm_hist", "fm_ihist"):
        torch.testing.assert_close(fast[k], serving[k], rtol=0, atol=0)
    # padded positions are zero, valid ones are the stored vectors of the right events
    ev = b["hist_event"]
    assert bool((fast["fm_hist"][ev < 0] == 0).all())
    r, c = torch.nonzero(ev >= 0, as_tuple=True)
    want = store.lookup(event_keys(small_log, ev[r, c].numpy()))
    torch.testing.assert_close(fast["fm_hist"][r, c], want, rtol=0, atol=0)


def test_a_damaged_stored_vector_is_refused_by_both_read_paths(small_log, tmp_path):
    table = EventTable.build(small_log, np.arange(1500), user_history=6, item_history=4)
    write_fm_store(_fm(table), table, tmp_path / "fm")
    arr = np.load(tmp_path / "fm" / "vectors.npy", mmap_mode="r+")
    arr[5, 0] = np.nan  # the writers refuse this: only damage puts it there
    arr.flush()
    del arr
    store = EmbeddingStore.load(tmp_path / "fm")
    b = table.batch(np.arange(len(small_log)))
    readers = (b["hist_event"] == 5).any(1) | (b["ihist_event"] == 5).any(1)
    assert int(readers.sum()) > 0  # events whose histories hold event 5
    rows = torch.nonzero(readers).flatten()[:3].numpy()
    with pytest.raises(ValueError, match=r"non-finite stored vectors.*rows \[5\]"):
        lookup_histories(store, table, table.batch(rows))
    # the training / prediction path gave those events NaN history features silently
    with pytest.raises(ValueError, match=r"non-finite stored vectors.*rows \[5\]"):
        StoredHistory(store, table)
