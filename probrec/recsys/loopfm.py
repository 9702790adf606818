"""LoopFM plumbing: write FM event embeddings to a frozen store, read histories back from it.

Jiang, Zheng, Liu et al., "LoopFM: Learning from Historical Representations of Foundation
Model for Recommendation" (2026): the foundation model's intermediate representation of every
logged event is written once to a store keyed by ``(user, item, time)``; the vertical model
reads the representations of a user's (and an item's) *earlier* events from the store as input
features, so serving never calls the foundation model.

* :func:`write_fm_store` -- FM event embeddings of all events of an
  :class:`~probrec.recsys.features.EventTable` -> a saved
  :class:`~probrec.backbone.store.EmbeddingStore` (memory-mapped on load).
* :class:`StoredHistory` -- adds ``fm_hist [B, L, d]`` and ``fm_ihist [B, K, d]`` to a batch:
  row indices of every event's key are resolved once, then batches gather rows.
* :func:`lookup_histories` -- the serving path: per-request key lists through
  :func:`~probrec.backbone.history.build_history_batch` (equal to :class:`StoredHistory`).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from probrec.backbone.history import build_history_batch
from probrec.backbone.store import EmbeddingStore
from probrec.checks import check_positive_int
from probrec.data.tasks import row_index
from probrec.recsys.features import EventTable, event_key_array
from probrec.recsys.models import FoundationModel, check_vocabulary, evaluating, module_device

__all__ = ["StoredHistory", "fm_embeddings", "lookup_histories", "write_fm_store"]


@torch.no_grad()
def fm_embeddings(
    fm: FoundationModel, table: EventTable, index: np.ndarray, *, batch_size: int = 2048
) -> tuple[Tensor, Tensor]:
    """FM event embeddings ``[n, d]`` and logits ``[n]`` of the events at ``index``, on the
    FM's device."""
    device = module_device(fm)
    check_positive_int(batch_size, "batch_size")  # 0 failed in range()
    check_vocabulary(fm, table)
    hs, zs = [], []
    with evaluating(fm):
        for s in range(0, len(index), batch_size):
            h, z = fm(table.batch(index[s : s + batch_size], device))
            hs.append(h)
            zs.append(z)
    if not hs:
        return torch.zeros(0, fm.embed_dim, device=device), torch.zeros(0, device=device)
    return torch.cat(hs), torch.cat(zs)


def write_fm_store(
    fm: FoundationModel,
    table: EventTable,
    path: str | os.PathLike,
    *,
    batch_size: int = 2048,
    overwrite: bool = False,
    dtype: str = "float32",
) -> EmbeddingStore:
    """Writes the FM's embedding of every event of ``table`` to a store keyed by
    ``(user, item, time)`` and returns it loaded (memory-mapped, read-only).

    Each embedding depends only on the event's features and its strictly earlier history (no
    label of the event itself), so storing the embeddings of all logged events leaks nothing.

    Args:
        fm: the trained foundation model.
        table: the events.
        path: store folder.
        batch_size: FM batch size.
        overwrite: replace an existing store.
        dtype: storage dtype.
    """
    n = len(table.log)
    check_positive_int(batch_size, "batch_size")  # 0 failed in range()
    keys = event_key_array(table.log)
    if len(np.unique(keys, axis=0)) != n:
        raise ValueError(
            "the log repeats (user, item, time) triples; the store needs one key per event "
            "(merge repeated rows first, as load_taobao_ad does)"
        )
    with EmbeddingStore.writer(
        path,
        n,
        fm.embed_dim,
        dtype=dtype,
        metadata={"model": "probrec.recsys.FoundationModel", "stored": fm.stored},
        overwrite=overwrite,
    ) as w:
        for s in range(0, n, batch_size):
            idx = np.arange(s, min(n, s + batch_size))
            h, _ = fm_embeddings(fm, table, idx, batch_size=batch_size)
            w.write(keys[idx], h.cpu().numpy())
    return EmbeddingStore.load(Path(path), mmap=True)


class StoredHistory:
    """Reads LoopFM history inputs for batches of events from a store.

    Every event's ``(user, item, time)`` key is resolved to a store row once; a batch then
    gathers the rows of its history events. Events missing from the store (never the case when
    the store was written by :func:`write_fm_store` for the same log) read as zero vectors.

    The vectors are copied to ``device`` once (a GPU-resident copy makes each batch's gather a
    device operation); a batch on another device gets its histories on its own device.

    Raises:
        ValueError: the store holds a non-finite vector (a damaged file; as
            :meth:`~probrec.backbone.store.EmbeddingStore.lookup` refuses it).

    Args:
        store: the FM store.
        table: the events whose histories are read.
        device: where the copy of the stored vectors lives (default: the CPU).
    """

    def __init__(
        self, store: EmbeddingStore, table: EventTable, device: torch.device | str = "cpu"
    ) -> None:
        self.store = store
        self.device = torch.device(device)
        self.rows = torch.from_numpy(store.rows(event_key_array(table.log))).to(self.device)
        arr = np.array(store.vectors, dtype=np.float32)  # a private copy
        bad = np.flatnonzero(~np.isfinite(arr).all(1))
        if bad.size:  # writers refuse these (a damaged file); they became NaN features
            raise ValueError(f"non-finite stored vectors in {store!r} at rows {bad[:5].tolist()}")
        vec = torch.from_numpy(arr)
        # last row: absent key
        self.vectors = torch.cat([vec, torch.zeros(1, store.dim)]).to(self.device)

    def _gather(self, events: Tensor) -> Tensor:
        ev = events.to(self.device)
        rows = torch.where(ev >= 0, self.rows[ev.clamp_min(0)], -1)
        return self.vectors[torch.where(rows >= 0, rows, len(self.vectors) - 1)].to(events.device)

    def event_vectors(self, events: np.ndarray | Tensor) -> Tensor:
        """Stored vectors ``[n, d]`` of the log's events ``[n]`` (zeros where absent).

        Raises:
            ValueError: ``events`` are not 1-D integer positions of the log (1.7 read event 1,
                -3 zeros).
        """
        raw = events.cpu() if isinstance(events, Tensor) else events
        idx = row_index(raw, len(self.rows), "events")
        return self._gather(torch.as_tensor(idx, dtype=torch.int64))

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """``batch`` plus ``fm_hist [B, L, d]`` and ``fm_ihist [B, K, d]`` (zero padded)."""
        out = dict(batch)
        out["fm_hist"] = self._gather(batch["hist_event"])
        out["fm_ihist"] = self._gather(batch["ihist_event"])
        return out


def lookup_histories(
    store: EmbeddingStore, table: EventTable, batch: dict[str, Tensor]
) -> dict[str, Tensor]:
    """The serving path of :class:`StoredHistory`: the keys of each request's history events
    are looked up in the store by :func:`~probrec.backbone.history.build_history_batch`.

    Returns:
        ``batch`` plus ``fm_hist [B, L, d]`` and ``fm_ihist [B, K, d]``, on the batch's device.
    """
    out = dict(batch)
    log = table.log
    for src, dst in (("hist_event", "fm_hist"), ("ihist_event", "fm_ihist")):
        device = batch[src].device
        ev = batch[src].cpu().numpy()
        valid = ev >= 0  # each row's valid events, in row order
        keys = np.split(event_key_array(log, ev[valid]), np.cumsum(valid.sum(1))[:-1])
        hb = build_history_batch(store, keys, missing="zeros", dtype=torch.float32, device=device)
        values = torch.zeros(ev.shape[0], ev.shape[1], store.dim, device=device)
        values[:, : hb.values.shape[1]] = hb.values  # histories are left-aligned in both
        out[dst] = values
    return out
