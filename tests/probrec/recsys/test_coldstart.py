"""Cold-start tasks, popularity, and the fine-tuning / scoring baselines."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.optimize import minimize

from probrec.data.movielens import InteractionLog
from probrec.recsys import (
    ColumnScore,
    EventTable,
    FoundationModel,
    HeadFineTune,
    StoredHistory,
    VerticalModel,
    cold_start_features,
    cold_start_tasks,
    item_popularity,
    write_fm_store,
)


def test_item_popularity_brute_force():
    rng = np.random.default_rng(0)
    n = 300
    item, time = rng.integers(0, 10, n), np.sort(rng.integers(0, 50, n))
    y = rng.integers(0, 2, n)
    got = item_popularity(item, time, y)
    for e in range(n):
        prev = (item == item[e]) & (time < time[e])
        assert got[e] == pytest.approx((y[prev].sum() + 1) / (prev.sum() + 2))
    with pytest.raises(ValueError, match="one length"):  # a longer label was cut
        item_popularity(item[:3], time[:3], y[:5])
    # with users: the same user's earlier events of the item are left out
    user = rng.integers(0, 4, n)
    got = item_popularity(item, time, y, user)
    for e in range(n):
        prev = (item == item[e]) & (time < time[e]) & (user != user[e])
        assert got[e] == pytest.approx((y[prev].sum() + 1) / (prev.sum() + 2))
    with pytest.raises(ValueError, match="one length"):
        item_popularity(item, time, y, user[:-1])


def test_head_finetune_matches_scipy():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(30, 4))
    y = (x[:, 0] + 0.5 * rng.normal(size=30) > 0).astype(float)
    w0, b0, lam = np.array([0.2, -0.1, 0.0, 0.3]), 0.1, 0.7
    inputs = np.concatenate([rng.normal(size=(30, 2)), x], axis=1)  # block at columns 2..6
    ft = HeadFineTune("ft", (2, 6), torch.tensor(w0), b0, l2=lam, steps=100)
    pred = ft.adapt(inputs, y)

    def obj(th):
        z = x @ th[:4] + th[4]
        nll = np.sum(np.logaddexp(0, z) - y * z)
        return nll + 0.5 * lam * np.sum((th - np.r_[w0, b0]) ** 2)

    th = minimize(obj, np.r_[w0, b0], method="BFGS", options={"gtol": 1e-10}).x
    want = 1 / (1 + np.exp(-(x @ th[:4] + th[4])))
    np.testing.assert_allclose(pred.predict_proba(inputs).numpy(), want, atol=1e-5)
    # a huge pull keeps the trained head
    stiff = HeadFineTune("ft", (2, 6), torch.tensor(w0), b0, l2=1e9).adapt(inputs, y)
    np.testing.assert_allclose(
        stiff.predict_proba(inputs).numpy(), 1 / (1 + np.exp(-(x @ w0 + b0))), atol=1e-6
    )
    with pytest.raises(ValueError, match="columns"):
        HeadFineTune("ft", (0, 3), torch.tensor(w0), b0)
    nan_x = inputs.copy()
    nan_x[0, 3] = np.nan
    for args, match in (  # NaN predictions, a fitted label of 2, a torch size mismatch
        ((nan_x, y), "support_x contains"),
        ((inputs, np.where(y > 0, 2.0, 0.0)), "0/1 labels"),
        ((inputs[:, :5], y), "the head reads columns 2:6"),
    ):
        with pytest.raises(ValueError, match=match):
            ft.adapt(*args)


def test_column_score():
    x = np.array([[0.0, 0.3], [1.0, -2.0]])
    assert ColumnScore("p", 1).adapt(x[:1], [1]).predict_proba(x).tolist() == [0.3, -2.0]
    with pytest.raises(ValueError, match="column 2 is outside the task inputs' 2 columns"):
        ColumnScore("p", 2).adapt(x[:1], [1])  # a bare IndexError at prediction
    with pytest.raises(ValueError, match="column"):
        ColumnScore("p", -1)
    p = ColumnScore("v", 1, logit=True).adapt(x, [0, 1]).predict_proba(x)
    torch.testing.assert_close(p, torch.sigmoid(torch.tensor([0.3, -2.0], dtype=p.dtype)))


def _stored_and_vm(table: EventTable, path) -> tuple[StoredHistory, VerticalModel]:
    """An untrained FM's store and a vertical model over ``table`` (seeded)."""
    fm = FoundationModel(
        int(table.fm_user.max()) + 1,
        int(table.fm_item.max()) + 1,
        table.field_cardinalities,
        3,
        emb_dim=8,
        hidden=(8,),
        max_history=5,
        seed=0,
    )
    stored = StoredHistory(write_fm_store(fm, table, path), table)
    vm = VerticalModel(table.field_cardinalities, 3, emb_dim=4, hidden=(6,), fm_dim=24, seed=0)
    return stored, vm


def _with_labels(log: InteractionLog, label: np.ndarray) -> InteractionLog:
    return InteractionLog(
        log.user, log.item, log.time, label, dict(log.fields), log.cardinality, log.multi_hot
    )


def test_cold_start_tasks_and_features(small_log, tmp_path):
    log = small_log
    table = EventTable.build(log, np.arange(1500), user_history=5, item_history=4)
    stored, vm = _stored_and_vm(table, tmp_path / "fm")
    test_idx = np.arange(2000, len(log))
    feats = cold_start_features(table, stored, {"vm": vm}, test_idx)
    x = feats.matrix()
    cols = feats.columns()
    assert x.shape == (len(test_idx), 2 * 24 + 2 + 1 + 6 + 1)
    assert cols["vm/hidden"] == (51, 57) and cols["vm/logit"] == (57, 58)
    # flipping every test-period label changes no feature of events whose item histories
    # lie before the test period: features never read a user's own (task) labels
    y2 = log.label.copy()
    y2[test_idx] = 1 - y2[test_idx]
    t2 = EventTable.build(_with_labels(log, y2), np.arange(1500), user_history=5, item_history=4)
    f2 = cold_start_features(t2, StoredHistory(stored.store, t2), {"vm": vm}, test_idx)
    ih = table.item_hist[test_idx]
    clean = ((ih < test_idx[0]) | (ih < 0)).all(1)
    assert clean.sum() > 10
    np.testing.assert_array_equal(x[clean], f2.matrix()[clean])
    # tasks: only users first seen in the test period, with enough events of both classes
    tasks = cold_start_tasks(table, test_idx, x, min_events=3, min_per_class=1)
    seen = set(log.user[: test_idx[0]].tolist())
    assert len(tasks) >= 3
    for t in tasks:
        u = int(t.name[4:])
        assert u not in seen
        ev = np.array(t.metadata["events"])
        assert (log.user[ev] == u).all() and np.array_equal(t.labels, log.label[ev])
        np.testing.assert_array_equal(t.inputs, x[np.searchsorted(test_idx, ev)])
    with pytest.raises(ValueError, match="rows"):
        cold_start_tasks(table, test_idx, x[:-1])


def test_cold_start_features_never_read_the_users_own_labels(small_log, tmp_path):
    """A user who met an item twice: the later event's item history and popularity held the
    earlier event's label, another row of the user's own task. Flipping every label of one
    cold-start user now changes none of that user's features (store and models frozen)."""
    log = small_log
    table = EventTable.build(log, np.arange(1500), user_history=5, item_history=4)
    stored, vm = _stored_and_vm(table, tmp_path / "fm")
    test_idx = np.arange(2000, len(log))
    x = cold_start_features(table, stored, {"vm": vm}, test_idx).matrix()
    tasks = cold_start_tasks(table, test_idx, x, min_events=3, min_per_class=1)
    repeats = 0
    for t in tasks:
        ev = np.array(t.metadata["events"])
        pairs = log.item[ev]
        repeats += len(pairs) - len(np.unique(pairs))
        y2 = log.label.copy()
        y2[ev] = 1 - y2[ev]
        t2 = EventTable.build(
            _with_labels(log, y2), np.arange(1500), user_history=5, item_history=4
        )
        x2 = cold_start_features(t2, StoredHistory(stored.store, t2), {"vm": vm}, ev).matrix()
        np.testing.assert_array_equal(x[np.searchsorted(test_idx, ev)], x2)
    assert repeats > 0  # the log has users meeting an item again
