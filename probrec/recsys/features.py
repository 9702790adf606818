"""Features of click-through events: chronological splits, past-event histories, batches.

Everything here is strictly causal: the history of an event at time ``t`` holds only events of
the same user (or item) with time ``< t`` -- events at the same second are excluded too, since
their order within the second is unknown -- so no feature of an event depends on its own label
or on anything later.

* :func:`chronological_split` -- foundation-model period / vertical-model training period /
  test period by time quantiles (LoopFM's protocol: the FM is trained on an earlier period).
* :func:`past_events` -- ``[n, L]`` indices of each event's ``L`` most recent earlier events in
  its group (user or item), left-aligned oldest first, ``-1`` padded.
* :class:`IdVocabulary` -- dense ids for the ids seen in a period (``0`` for the unseen).
* :class:`EventTable` -- the log as tensors plus the history indices; :meth:`EventTable.batch`
  gathers a dict of model inputs for a set of events.
* :func:`event_keys` -- ``(user, item, time)`` keys of events, the keys of the FM store;
  :func:`event_key_array` -- the same as an ``[n, 3]`` integer array (vectorised lookups).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from probrec.checks import check_positive_int
from probrec.data.movielens import InteractionLog
from probrec.data.tasks import row_index

__all__ = [
    "EventTable",
    "IdVocabulary",
    "chronological_split",
    "event_key_array",
    "event_keys",
    "past_events",
]


def chronological_split(
    time: np.ndarray, fractions: Sequence[float] = (0.7, 0.15, 0.15)
) -> list[np.ndarray]:
    """Splits events into consecutive periods holding about the given fractions of the events.

    Boundaries are distinct event times chosen closest to the target counts, so events at one
    timestamp never straddle two periods and every period holds at least one timestamp (logs
    with few distinct times, like small TaobaoAd samples, still split).

    Args:
        time: ``[n]`` event times, non-decreasing.
        fractions: positive fractions summing to 1 (e.g. FM period, VM training, test).

    Returns:
        One ``[n_k]`` int64 index array per period, in time order.

    Raises:
        ValueError: bad fractions, unsorted times, or fewer distinct times than periods.
    """
    t = np.asarray(time)
    fr = np.asarray(fractions, dtype=float)
    if fr.ndim != 1 or len(fr) < 2 or not (fr > 0).all() or not abs(fr.sum() - 1.0) <= 1e-6:
        raise ValueError(f"fractions must be >= 2 positive numbers summing to 1, got {fractions}")
    if np.issubdtype(t.dtype, np.floating) and not np.isfinite(t).all():
        raise ValueError("time contains NaN/inf")
    if len(t) > 1 and bool((np.diff(t) < 0).any()):
        raise ValueError("time must be non-decreasing")
    uniq, first = np.unique(t, return_index=True)  # first[j] = events before time uniq[j]
    if len(uniq) < len(fr):
        raise ValueError(
            f"{len(fr)} periods need at least {len(fr)} distinct times, got {len(uniq)}"
        )
    bounds, prev = [0], 0
    for k, target in enumerate(np.cumsum(fr)[:-1] * len(t)):
        hi = len(uniq) - (len(fr) - 1 - k)  # leave one timestamp for each later period
        j = prev + 1 + int(np.argmin(np.abs(first[prev + 1 : hi + 1] - target)))
        bounds.append(int(first[j]))
        prev = j
    bounds.append(len(t))
    return [np.arange(a, b, dtype=np.int64) for a, b in zip(bounds[:-1], bounds[1:])]


def past_events(group: np.ndarray, time: np.ndarray, max_len: int) -> np.ndarray:
    """Each event's ``max_len`` most recent earlier events of the same group.

    Args:
        group: ``[n]`` group of each event (user id for user histories, item id for item
            histories).
        time: ``[n]`` event times.
        max_len: ``L``, history length kept.

    Returns:
        ``[n, L]`` int64 event indices, left-aligned and oldest first, ``-1`` padded; row ``e``
        holds only events ``j`` with ``group[j] == group[e]`` and ``time[j] < time[e]``.
    """
    L = check_positive_int(max_len, "max_len")
    g, t = np.asarray(group), np.asarray(time)
    if g.shape != t.shape or g.ndim != 1:
        raise ValueError(f"group and time must be 1-d of equal length, got {g.shape}, {t.shape}")
    if t.dtype.kind == "f" and not np.isfinite(t).all():  # NaN sorts last: later events leaked
        raise ValueError("time contains NaN or infinite values")
    n = len(g)
    order = np.lexsort((np.arange(n), t, g))  # by group, then time (stable)
    gs, ts = g[order], t[order]
    new_group = np.r_[True, gs[1:] != gs[:-1]]
    new_tie = new_group | np.r_[True, ts[1:] != ts[:-1]]
    group_start = np.maximum.accumulate(np.where(new_group, np.arange(n), 0))
    tie_start = np.maximum.accumulate(np.where(new_tie, np.arange(n), 0))
    count = tie_start - group_start  # earlier events of the group (strictly earlier time)
    k = np.minimum(count, L)
    pos = tie_start[:, None] - k[:, None] + np.arange(L)[None, :]  # oldest first
    valid = np.arange(L)[None, :] < k[:, None]
    sorted_hist = np.where(valid, order[np.clip(pos, 0, n - 1)], -1)
    out = np.empty((n, L), dtype=np.int64)
    out[order] = sorted_hist
    return out


def event_keys(log: InteractionLog, index: np.ndarray | None = None) -> list[tuple[int, int, int]]:
    """``(user, item, time)`` keys of events (all of them, or those at ``index``)."""
    return list(map(tuple, event_key_array(log, index).tolist()))


def event_key_array(log: InteractionLog, index: np.ndarray | None = None) -> np.ndarray:
    """``(user, item, time)`` keys of events as an ``int64`` array ``[n, 3]`` (row ``i`` is
    the key ``event_keys(log, index)[i]``; an :class:`~probrec.backbone.EmbeddingStore` looks
    such arrays up without a Python loop over the keys)."""
    idx = slice(None) if index is None else np.asarray(index, dtype=np.int64)
    return np.stack([log.user[idx], log.item[idx], log.time[idx]], axis=1).astype(np.int64)


def _integer_ids(ids: Any, name: str) -> np.ndarray:
    """``ids`` as int64, refusing other dtypes (float ids were truncated: 1.5 -> 1)."""
    a = np.asarray(ids)
    if a.size and a.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integer ids, got dtype {a.dtype}")
    return a.astype(np.int64)


class IdVocabulary:
    """Dense ids ``1..V`` for the ids seen when fitted; every other id maps to ``0``.

    A foundation model trained on an earlier period has embedding rows only for the users and
    items of that period; later ones share the out-of-vocabulary row ``0``.

    Args:
        ids: ids seen in the fitting period.
    """

    def __init__(self, ids: np.ndarray) -> None:
        self.values = np.unique(_integer_ids(ids, "ids"))

    def __len__(self) -> int:
        return len(self.values) + 1

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        """Dense ids ``[n]`` (``0`` for ids not seen when fitted)."""
        q = _integer_ids(ids, "ids")
        if len(self.values) == 0:
            return np.zeros(q.shape, dtype=np.int64)
        pos = np.clip(np.searchsorted(self.values, q), 0, len(self.values) - 1)
        return np.where(self.values[pos] == q, pos + 1, 0).astype(np.int64)


@dataclass
class EventTable:
    """A log as tensors with per-event histories, from which model inputs are gathered.

    Attributes:
        log: the source log.
        user_hist: ``[n, L]`` earlier events of the same user (:func:`past_events`).
        item_hist: ``[n, K]`` earlier events on the same item.
        fm_user: ``[n]`` dense user ids of the FM vocabulary (0 = unseen in the FM period).
        fm_item: ``[n]`` dense item ids of the FM vocabulary.
        fm_id_max: ``{"user": int, "item": int}``, the largest dense ids (set when built).
    """

    log: InteractionLog
    user_hist: np.ndarray
    item_hist: np.ndarray
    fm_user: np.ndarray
    fm_item: np.ndarray

    @classmethod
    def build(
        cls,
        log: InteractionLog,
        fm_index: np.ndarray,
        *,
        user_history: int = 50,
        item_history: int = 20,
    ) -> EventTable:
        """Histories for every event and the FM vocabularies fitted on ``fm_index`` events.

        Args:
            log: the events.
            fm_index: events of the foundation model's training period.
            user_history: ``L``, user-history length.
            item_history: ``K``, item-history length.
        """
        users, items = IdVocabulary(log.user[fm_index]), IdVocabulary(log.item[fm_index])
        return cls(
            log,
            past_events(log.user, log.time, user_history),
            past_events(log.item, log.time, item_history),
            users(log.user),
            items(log.item),
        )

    def __post_init__(self) -> None:
        lg = self.log
        self._t = {
            "user": torch.from_numpy(lg.user),
            "item": torch.from_numpy(lg.item),
            "fm_user": torch.from_numpy(self.fm_user),
            "fm_item": torch.from_numpy(self.fm_item),
            "fields": torch.from_numpy(lg.field_matrix()),
            "multi_hot": torch.from_numpy(
                lg.multi_hot if lg.multi_hot is not None else np.zeros((len(lg), 0), np.float32)
            ),
            "label": torch.from_numpy(lg.label),
            "time": torch.from_numpy(lg.time),
        }
        self._user_hist = torch.from_numpy(self.user_hist)
        self._item_hist = torch.from_numpy(self.item_hist)
        # the largest dense ids, which a foundation model needs rows for (checked per call)
        self.fm_id_max = {
            "user": int(self.fm_user.max(initial=0)),
            "item": int(self.fm_item.max(initial=0)),
        }

    def __len__(self) -> int:
        """Number of events in the log."""
        return int(self._user_hist.shape[0])

    @property
    def field_cardinalities(self) -> list[int]:
        """Table sizes of the side fields, in :attr:`InteractionLog.field_names` order."""
        return [self.log.cardinality[k] for k in self.log.field_names]

    @property
    def n_multi_hot(self) -> int:
        return 0 if self.log.multi_hot is None else self.log.multi_hot.shape[1]

    def batch(
        self, index: np.ndarray | Tensor, device: torch.device | str | None = None
    ) -> dict[str, Tensor]:
        """Model inputs of the events at ``index`` (``B`` of them).

        Args:
            index: ``[B]`` event positions.
            device: device of the returned tensors (default: the CPU, where they are built).

        Returns:
            A dict of tensors: ``event [B]`` (log indices), ``user``, ``item`` (raw ids),
            ``fm_user``, ``fm_item`` ``[B]``; ``fields [B, F]``; ``multi_hot [B, g]``;
            ``label [B]``; ``time [B]``; the user history ``hist_event [B, L]`` (log indices,
            -1 padded), ``hist_mask``, ``hist_label``, ``hist_item`` (raw ids),
            ``hist_fm_item``, ``hist_age_days``; the item history ``ihist_event [B, K]``,
            ``ihist_mask``, ``ihist_label``, ``ihist_user`` (raw ids), ``ihist_fm_user``; and
            ``hist_count``, ``hist_pos_rate`` ``[B]``.
        """
        raw = index.cpu() if isinstance(index, Tensor) else index
        # a float index was truncated, -1 wrapped to the last event, a 2-D one misaligned rows
        idx = torch.as_tensor(row_index(raw, len(self), "index"), dtype=torch.int64)
        out = {k: v[idx] for k, v in self._t.items()}
        for prefix, table in (("hist", self._user_hist), ("ihist", self._item_hist)):
            h = table[idx]
            mask = h >= 0
            hc = h.clamp_min(0)
            out[f"{prefix}_event"] = h
            out[f"{prefix}_mask"] = mask
            out[f"{prefix}_label"] = torch.where(mask, self._t["label"][hc], 0.0)
            if prefix == "ihist":
                out["ihist_user"] = torch.where(mask, self._t["user"][hc], 0)
                out["ihist_fm_user"] = torch.where(mask, self._t["fm_user"][hc], 0)
            if prefix == "hist":
                out["hist_item"] = torch.where(mask, self._t["item"][hc], 0)
                out["hist_fm_item"] = torch.where(mask, self._t["fm_item"][hc], 0)
                age = (out["time"][:, None] - self._t["time"][hc]).clamp_min(0) / 86400.0
                out["hist_age_days"] = torch.where(mask, age.float(), 0.0)
        n = out["hist_mask"].sum(-1).float()
        out["hist_count"] = n
        out["hist_pos_rate"] = torch.where(
            n > 0, out["hist_label"].sum(-1) / n.clamp_min(1), torch.full_like(n, 0.5)
        )
        if device is not None and torch.device(device) != torch.device("cpu"):
            out = {k: v.to(device, non_blocking=True) for k, v in out.items()}
        return out
