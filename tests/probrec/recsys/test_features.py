"""Causal histories, chronological splits and id vocabularies; no future leakage."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.data.movielens import InteractionLog
from probrec.recsys import (
    EventTable,
    FoundationModel,
    IdVocabulary,
    StoredHistory,
    VerticalModel,
    chronological_split,
    event_keys,
    past_events,
    write_fm_store,
)
from tests.probrec.recsys.conftest import synthetic_log


def test_past_events_matches_brute_force():
    rng = np.random.default_rng(1)
    n = 400
    g = rng.integers(0, 12, n)
    t = np.sort(rng.integers(0, 60, n))
    hist = past_events(g, t, 4)
    for e in range(n):
        earlier = [j for j in range(n) if g[j] == g[e] and t[j] < t[e]]
        assert hist[e][hist[e] >= 0].tolist() == earlier[-4:]
        assert (hist[e][len(earlier[-4:]) :] == -1).all()  # left-aligned


def test_past_events_bad_input():
    with pytest.raises(ValueError, match="max_len"):
        past_events(np.zeros(3), np.zeros(3), 0)
    with pytest.raises(ValueError, match="equal length"):
        past_events(np.zeros(3), np.zeros(4), 2)
    with pytest.raises(ValueError, match="time contains NaN"):  # a later event was "earlier"
        past_events(np.zeros(3), np.array([0.0, np.nan, 1.0]), 2)


def test_chronological_split_keeps_ties_together():
    t = np.repeat(np.arange(20), 5)
    parts = chronological_split(t, (0.7, 0.15, 0.15))
    assert sum(len(p) for p in parts) == len(t)
    assert [len(p) for p in parts] == [70, 15, 15]
    for a, b in zip(parts[:-1], parts[1:]):
        assert t[a].max() < t[b].min()
    parts = chronological_split(np.array([0, 0, 0, 1, 2]), (0.9, 0.05, 0.05))
    assert [len(p) for p in parts] == [3, 1, 1]  # every period keeps one timestamp
    with pytest.raises(ValueError, match="distinct times"):
        chronological_split(np.array([0, 0, 1]), (0.5, 0.25, 0.25))
    with pytest.raises(ValueError, match="fractions"):
        chronological_split(t, (0.5, 0.6))


def test_chronological_split_refuses_nan():
    from probrec.recsys.features import chronological_split

    with pytest.raises(ValueError, match="fractions"):
        chronological_split(np.arange(20), (0.5, np.nan, 0.5))  # gave periods of 10, 1, 9
    with pytest.raises(ValueError, match="time contains NaN"):
        chronological_split(np.array([0.0, np.nan, 2.0, 3.0]), (0.5, 0.5))


def test_id_vocabulary():
    voc = IdVocabulary(np.array([7, 3, 7, 10]))
    assert len(voc) == 4
    assert voc(np.array([3, 7, 10, 4, 99])).tolist() == [1, 2, 3, 0, 0]
    with pytest.raises(TypeError, match="ids must hold integer ids"):  # 1.5 -> 1
        IdVocabulary(np.array([1.5, 2.7]))
    with pytest.raises(TypeError, match="ids must hold integer ids"):  # 1.9 mapped to 1
        voc(np.array([1.9]))


def test_events_are_addressed_by_1d_integer_positions(small_log, tmp_path):
    table = EventTable.build(small_log, np.arange(1000), user_history=4, item_history=3)
    for bad in ([[3, 5]], [1.7], [-3], [len(table)]):  # a 2-D index misaligned the histories
        with pytest.raises(ValueError, match="index must"):
            table.batch(np.asarray(bad))
    n_user, n_item = int(table.fm_user.max()) + 1, int(table.fm_item.max()) + 1
    fm = FoundationModel(
        n_user, n_item, table.field_cardinalities, 3, emb_dim=4, hidden=(8,), max_history=4
    )
    store = write_fm_store(fm, table, tmp_path / "fm")
    stored = StoredHistory(store, table)
    for bad in ([1.7], [-3]):  # event 1's vector and zeros before
        with pytest.raises(ValueError, match="events must"):
            stored.event_vectors(np.asarray(bad))
    torch.testing.assert_close(
        stored.event_vectors(torch.tensor([2, 0])), stored.event_vectors(np.array([2, 0]))
    )


def _plant_future(log: InteractionLog, t_cut: int, seed: int) -> InteractionLog:
    """The events of ``log`` up to ``t_cut`` plus planted events at or after ``t_cut`` for
    the same users and items (some at exactly ``t_cut``, i.e. tied with real events)."""
    rng = np.random.default_rng(seed)
    keep = log.time <= t_cut
    m = 300
    pu = rng.choice(log.user[keep], m)
    pi = rng.choice(log.item[keep], m)
    pt = np.where(rng.random(m) < 0.3, t_cut, t_cut + rng.integers(1, 10_000, m))
    py = rng.integers(0, 2, m).astype(np.float32)
    dup = {(a, b, c) for a, b, c in zip(log.user, log.item, log.time)}
    ok = np.zeros(m, dtype=bool)
    for j, key in enumerate(zip(pu, pi, pt)):
        ok[j] = key not in dup
        dup.add(key)
    cat = lambda a, b: np.concatenate([a[keep], b[ok]])  # noqa: E731
    fields = {k: cat(v, rng.integers(1, log.cardinality[k], m)) for k, v in log.fields.items()}
    mh = np.concatenate([log.multi_hot[keep], rng.random((m, log.multi_hot.shape[1]))[ok]])
    return InteractionLog.sorted_by_time(
        cat(log.user, pu),
        cat(log.item, pi),
        cat(log.time, pt),
        cat(log.label, py),
        fields,
        log.cardinality,
        multi_hot=mh.astype(np.float32),
    )


def test_no_future_leakage_with_planted_events(tmp_path):
    """Planted later (and same-second) events change no feature and no prediction of the
    events before them: histories, FM embeddings in the store, and VM+LoopFM outputs."""
    log = synthetic_log(1500, seed=3)
    t_cut = int(np.quantile(log.time, 0.8))
    base = log.take(np.flatnonzero(log.time <= t_cut))
    planted = _plant_future(log, t_cut, seed=4)
    t_fm = np.quantile(base.time, 0.5)
    outs = []
    for i, lg in enumerate((base, planted)):
        fm_index = np.flatnonzero(lg.time < t_fm)  # the same FM period in both logs
        table = EventTable.build(lg, fm_index, user_history=8, item_history=5)
        fm = FoundationModel(
            int(table.fm_user.max()) + 1,
            int(table.fm_item.max()) + 1,
            table.field_cardinalities,
            3,
            emb_dim=8,
            hidden=(16, 8),
            max_history=8,
            seed=0,
        )
        store = write_fm_store(fm, table, tmp_path / f"s{i}")
        vm = VerticalModel(
            table.field_cardinalities,
            3,
            emb_dim=8,
            hidden=(8,),
            fm_dim=store.dim,
            max_history=8,
            seed=0,
        )
        stored = StoredHistory(store, table)
        # the events strictly before t_cut, found by key in either log
        keys = [k for k in event_keys(base) if k[2] < t_cut]
        where = {k: j for j, k in enumerate(event_keys(lg))}
        idx = np.array([where[k] for k in keys])
        b = stored(table.batch(idx))
        with torch.no_grad():
            _, z, _ = vm(b)
        hist_keys = [[event_keys(lg, row[row >= 0])] for row in b["hist_event"].numpy()]
        outs.append((hist_keys, b["fm_hist"], b["fm_ihist"], z, store.lookup(keys)))
    assert outs[0][0] == outs[1][0]
    for a, b in zip(outs[0][1:], outs[1][1:]):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert len(planted) > len(base) + 200  # the planted events are there


def test_history_never_contains_same_second_events(small_log):
    table = EventTable.build(small_log, np.arange(1000), user_history=10, item_history=10)
    b = table.batch(np.arange(len(small_log)))
    t = b["time"][:, None]
    for key in ("hist_event", "ihist_event"):
        ev = b[key]
        past_t = small_log.time[ev.clamp_min(0).numpy()]
        assert bool(((torch.from_numpy(past_t) < t) | (ev < 0)).all())


def test_batch_history_statistics(small_log):
    table = EventTable.build(small_log, np.arange(1000), user_history=5, item_history=3)
    idx = np.arange(100, 200)
    b = table.batch(idx)
    for r, e in enumerate(idx):
        prev = [
            j
            for j in range(len(small_log))
            if small_log.user[j] == small_log.user[e] and small_log.time[j] < small_log.time[e]
        ][-5:]
        assert b["hist_count"][r] == len(prev)
        want = small_log.label[prev].mean() if prev else 0.5
        assert abs(float(b["hist_pos_rate"][r]) - want) < 1e-6
        assert b["hist_item"][r][: len(prev)].tolist() == small_log.item[prev].tolist()
