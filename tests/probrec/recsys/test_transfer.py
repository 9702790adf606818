"""KD and auxiliary-head losses, metrics, transfer ratio and training."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probrec.recsys import (
    EventTable,
    TrainSpec,
    VerticalModel,
    ctr_metrics,
    kd_loss,
    predict_logits,
    train_ctr,
    transfer_ratio,
    vm_loss,
)


def test_kd_loss_closed_form_and_gradient():
    zs = torch.tensor([0.3, -1.2, 2.0], requires_grad=True)
    zt = torch.tensor([1.0, -0.5, 0.1])
    T = 2.0
    loss = kd_loss(zs, zt, T)
    want = 0.0
    for s, t in zip(zs.tolist(), zt.tolist()):
        q, p = 1 / (1 + math.exp(-t / T)), 1 / (1 + math.exp(-s / T))
        want += -(q * math.log(p) + (1 - q) * math.log(1 - p))
    assert abs(loss.item() - T * T * want / 3) < 1e-6
    loss.backward()
    sig = lambda v: 1 / (1 + math.exp(-v))  # noqa: E731
    expect = [T * (sig(s / T) - sig(t / T)) / 3 for s, t in zip(zs.tolist(), zt.tolist())]
    np.testing.assert_allclose(zs.grad.numpy(), expect, rtol=1e-5)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(zs, zt, 0.0)


def test_vm_loss_mixes_terms():
    z, y, zt = torch.tensor([0.2, -0.4]), torch.tensor([1.0, 0.0]), torch.tensor([0.5, 0.5])
    za = torch.tensor([0.0, 1.0])
    bce = torch.nn.functional.binary_cross_entropy_with_logits
    got = vm_loss(z, y, teacher_logit=zt, kd_weight=0.3, aux_logit=za, aux_weight=2.0)
    want = 0.7 * bce(z, y) + 0.3 * bce(z, torch.sigmoid(zt)) + 2.0 * bce(za, torch.sigmoid(zt))
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match="teacher_logit"):
        vm_loss(z, y, kd_weight=0.5)
    with pytest.raises(ValueError, match="auxiliary head"):
        vm_loss(z, y, teacher_logit=zt, aux_weight=1.0)
    torch.testing.assert_close(vm_loss(z, y.long()), vm_loss(z, y))  # failed inside torch


def test_ctr_metrics_against_pair_counting():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 200).astype(float)
    z = rng.normal(size=200) + y
    pos, neg = z[y == 1], z[y == 0]
    auc = ((pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()) / (
        len(pos) * len(neg)
    )
    p = 1 / (1 + np.exp(-z))
    ll = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    m = ctr_metrics(y, z)
    assert abs(m["auc"] - auc) < 1e-12 and abs(m["logloss"] - ll) < 1e-9
    # tensors (with gradients, on the model's device in general) give the same numbers
    zt = torch.tensor(z, requires_grad=True)
    assert ctr_metrics(torch.tensor(y), zt) == m
    with pytest.warns(UserWarning, match="one class"):
        assert math.isnan(ctr_metrics(np.ones(3), np.zeros(3))["auc"])
    with pytest.raises(ValueError, match="NaN"):
        ctr_metrics(y, np.full(200, np.nan))
    # confident logits are scored exactly (a clip at 1e-7 gave 8.216 here, not 10.157)
    yc, zc = np.array([0.0, 1.0, 0.0, 1.0]), np.array([20.0, -20.0, -1.0, 1.0])
    exact = np.mean([20 + math.log1p(math.exp(-20))] * 2 + [math.log1p(math.exp(-1))] * 2)
    assert ctr_metrics(yc, zc)["logloss"] == pytest.approx(exact, rel=1e-12)
    with pytest.raises(ValueError, match="0/1"):
        ctr_metrics(np.array([0.0, 2.0]), np.zeros(2))


def test_transfer_ratio():
    assert transfer_ratio(0.75, 0.70, 0.80) == pytest.approx(0.5)
    assert transfer_ratio(0.68, 0.70, 0.80) == pytest.approx(-0.2)
    with pytest.raises(ValueError, match="undefined"):
        transfer_ratio(0.7, 0.7, 0.7)
    with pytest.raises(ValueError, match="finite"):
        transfer_ratio(float("nan"), 0.73, 0.75)  # returned NaN


def test_bad_training_settings_are_named():
    z, y = torch.zeros(4), torch.ones(4)
    for bad in (-1.0, float("nan")):  # contributed nothing, silently
        with pytest.raises(ValueError, match="aux_weight"):
            vm_loss(z, y, teacher_logit=z, aux_logit=z, aux_weight=bad)
    for field in ("epochs", "batch_size", "patience"):
        with pytest.raises(ValueError, match=field):
            TrainSpec(**{field: 0})  # batch_size 0 failed in range(), epochs 0 did nothing


def test_predictions_keep_the_model_mode_and_check_the_index(small_log):
    from probrec.recsys import FoundationModel, fm_embeddings

    table = EventTable.build(small_log, np.arange(1000), user_history=4, item_history=3)
    vm = VerticalModel(table.field_cardinalities, 3, emb_dim=4, hidden=(8,), seed=0)
    fm = FoundationModel(
        int(table.fm_user.max()) + 1, int(table.fm_item.max()) + 1,
        table.field_cardinalities, 3, emb_dim=4, hidden=(8,), seed=0,
    )  # fmt: skip
    vm.train()
    fm.train()
    predict_logits(vm, table, np.arange(5))
    fm_embeddings(fm, table, np.arange(5))
    assert vm.training and fm.training  # both were left in eval mode
    for bad in ([0.9, 1.7], [-1], [len(table)]):  # floats truncated, -1 the last event
        with pytest.raises(ValueError, match="index must"):
            predict_logits(vm, table, np.asarray(bad))
    for call in (  # failed in range()
        lambda: predict_logits(vm, table, np.arange(5), batch_size=0),
        lambda: fm_embeddings(fm, table, np.arange(5), batch_size=0),
    ):
        with pytest.raises(ValueError, match="batch_size"):
            call()
    with pytest.raises(TypeError, match="seed must be an int"):
        VerticalModel(table.field_cardinalities, 3, emb_dim=4, hidden=(8,), seed=0.5)
    with pytest.raises(ValueError, match="n_users"):  # a torch "negative dimension" error
        FoundationModel(-1, 5, table.field_cardinalities, 3, emb_dim=4, hidden=(8,))
    short = FoundationModel(2, 5, table.field_cardinalities, 3, emb_dim=4, hidden=(8,), seed=0)
    for call in (  # torch's "index out of range" at the first batch
        lambda: fm_embeddings(short, table, np.arange(5)),
        lambda: predict_logits(short, table, np.arange(5)),
        lambda: train_ctr(short, table, np.arange(10), np.arange(10, 20), TrainSpec(epochs=1)),
    ):
        with pytest.raises(
            ValueError, match="dense user ids reach .* but the FoundationModel has 2"
        ):
            call()
    with pytest.raises(ValueError, match=r"field_cardinalities\[0\]"):
        FoundationModel(5, 5, [0], 3, emb_dim=4, hidden=(8,))
    with torch.no_grad():  # training inside no_grad failed on backward()
        hist = train_ctr(vm, table, np.arange(100), np.arange(100, 200), TrainSpec(epochs=1))
    assert len(hist["valid_logloss"]) == 1
    spec = TrainSpec(epochs=1, batch_size=64, kd_weight=0.5)
    for bad in (torch.zeros(3), torch.full((len(table),), float("nan"))):
        with pytest.raises(ValueError, match="teacher_logit must be"):
            train_ctr(vm, table, np.arange(100), np.arange(100, 200), spec, teacher_logit=bad)


def test_train_ctr_learns_and_keeps_best(small_log):
    table = EventTable.build(small_log, np.arange(1000), user_history=8, item_history=4)
    tr, va = np.arange(0, 2400), np.arange(2400, len(small_log))
    vm = VerticalModel(table.field_cardinalities, 3, emb_dim=8, hidden=(16,), seed=0)
    before = predict_logits(vm, table, va)
    hist = train_ctr(vm, table, tr, va, TrainSpec(epochs=4, batch_size=128, lr=5e-3), seed=0)
    after = ctr_metrics(small_log.label[va], predict_logits(vm, table, va).numpy())
    assert after["auc"] > ctr_metrics(small_log.label[va], before.numpy())["auc"] + 0.05
    best = int(np.argmin(hist["valid_logloss"]))
    assert hist["best_epoch"] == [best]
    assert after["logloss"] == pytest.approx(hist["valid_logloss"][best], rel=1e-5)


def test_train_ctr_is_reproducible_with_dropout(small_log):
    from probrec.recsys import FoundationModel

    table = EventTable.build(small_log, np.arange(1000), user_history=4, item_history=3)
    tr, va = np.arange(0, 1500), np.arange(1500, 1800)
    outs = []
    for _ in range(2):
        fm = FoundationModel(
            int(table.fm_user.max()) + 1,
            int(table.fm_item.max()) + 1,
            table.field_cardinalities,
            3,
            emb_dim=4,
            hidden=(8,),
            dropout=0.5,
            seed=0,
        )
        torch.manual_seed(len(outs))  # a different global state must not matter
        train_ctr(fm, table, tr, va, TrainSpec(epochs=1, batch_size=256), seed=3)
        outs.append(predict_logits(fm, table, va))
    torch.testing.assert_close(outs[0], outs[1], rtol=0, atol=0)
