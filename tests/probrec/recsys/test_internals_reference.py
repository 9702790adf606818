"""LoopFM / ExFM internals against independent computations.

* event histories (``past_events`` through ``EventTable``), the FM store and its two readers
  (``StoredHistory``, ``lookup_histories``) vs a brute-force Python loop over a random log;
* ``build_history_batch`` (order, truncation, padding, missing keys) vs a Python loop;
* ``HistoryEncoder``: padding invariance, permutation behaviour and a hand-written reference;
* KD / auxiliary-head losses vs BCE with soft labels written out, the transfer ratio vs its
  definition; ``HashedEmbedding`` vs the Carter-Wegman hash in Python integers;
* ``MLPEncoder.as_gmp`` vs the plain layers; argument validation.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probrec.backbone import EmbeddingStore, HistoryEncoder, MLPEncoder, build_history_batch
from probrec.backbone.store import MissingKeyError
from probrec.data.movielens import InteractionLog
from probrec.recsys.features import EventTable, event_key_array
from probrec.recsys.loopfm import StoredHistory, lookup_histories
from probrec.recsys.models import HashedEmbedding
from probrec.recsys.transfer import kd_loss, transfer_ratio, vm_loss


def _random_log(n: int = 400, seed: int = 0) -> InteractionLog:
    """Few users / items, many repeated timestamps (ties must be excluded from histories)."""
    rng = np.random.default_rng(seed)
    u = rng.integers(1, 9, n)
    i = rng.integers(1, 15, n)
    t = np.sort(rng.integers(0, n // 4, n)) * 10
    _, first = np.unique(np.stack([u, i, t], 1), axis=0, return_index=True)
    keep = np.sort(first)
    u, i, t = u[keep], i[keep], t[keep]
    y = (rng.random(len(u)) < 0.4).astype(np.float32)
    return InteractionLog.sorted_by_time(u, i, t, y, {"f": u % 2}, {"f": 2}, name="ref")


def _brute_history(group: np.ndarray, time: np.ndarray, e: int, max_len: int) -> list[int]:
    """Events of ``e``'s group strictly before ``time[e]``, oldest first (stable by log
    position within a timestamp), the last ``max_len`` of them."""
    earlier = [j for j in range(len(group)) if group[j] == group[e] and time[j] < time[e]]
    earlier.sort(key=lambda j: (time[j], j))
    return earlier[-max_len:]


# ---------------------------------------------------------------------------- histories
@pytest.mark.parametrize("L,K", [(5, 3), (50, 40)])
def test_event_histories_match_brute_force_loop(L, K):
    log = _random_log()
    table = EventTable.build(log, np.arange(len(log) // 2), user_history=L, item_history=K)
    batch = table.batch(np.arange(len(log)))
    for e in range(len(log)):
        for hist, mask, group, cap in (
            (batch["hist_event"], batch["hist_mask"], log.user, L),
            (batch["ihist_event"], batch["ihist_mask"], log.item, K),
        ):
            ref = _brute_history(group, log.time, e, cap)
            row = hist[e].tolist()
            assert row == ref + [-1] * (cap - len(ref)), e  # left-aligned, -1 padded
            assert mask[e].tolist() == [True] * len(ref) + [False] * (cap - len(ref))
            assert all(log.time[j] < log.time[e] for j in ref)  # no same-second / future event
        ages = batch["hist_age_days"][e]
        ref = _brute_history(log.user, log.time, e, L)
        want = [(log.time[e] - log.time[j]) / 86400.0 for j in ref] + [0.0] * (L - len(ref))
        assert np.allclose(ages.numpy(), want, rtol=1e-6, atol=0)


def test_stored_histories_match_brute_force_store_reads(tmp_path):
    """``StoredHistory`` and ``lookup_histories`` read, for every event, the stored vectors of
    exactly the brute-force history's (user, item, time) keys, zeros after them."""
    log = _random_log(seed=1)
    L, K, d = 6, 4, 5
    table = EventTable.build(log, np.arange(len(log)), user_history=L, item_history=K)
    rng = np.random.default_rng(2)
    vec = rng.normal(size=(len(log), d)).astype(np.float32)
    keys = event_key_array(log)
    perm = rng.permutation(len(log))  # store rows in another order than the log
    store = EmbeddingStore.from_arrays(keys[perm], vec[perm])
    store.save(tmp_path / "s")
    store = EmbeddingStore.load(tmp_path / "s")
    by_key = {tuple(map(int, k)): v for k, v in zip(keys, vec)}
    idx = rng.permutation(len(log))[:120]
    batch = table.batch(idx)
    read = StoredHistory(store, table)(batch)
    served = lookup_histories(store, table, batch)
    for b, e in enumerate(idx):
        for name, group, cap in (("fm_hist", log.user, L), ("fm_ihist", log.item, K)):
            ref = _brute_history(group, log.time, int(e), cap)
            want = np.zeros((cap, d), np.float32)
            for p, j in enumerate(ref):
                want[p] = by_key[(int(log.user[j]), int(log.item[j]), int(log.time[j]))]
            np.testing.assert_array_equal(read[name][b].numpy(), want)
            np.testing.assert_array_equal(served[name][b].numpy(), want)


@pytest.mark.parametrize("missing", ["error", "skip", "zeros"])
@pytest.mark.parametrize("max_len", [None, 1, 3])
def test_build_history_batch_matches_python_loop(missing, max_len):
    rng = np.random.default_rng(3)
    d = 3
    keys = list(range(0, 40, 2))  # odd keys are absent
    vec = rng.normal(size=(len(keys), d))
    store = EmbeddingStore.from_arrays(keys, vec, dtype="float64")
    table = dict(zip(keys, vec))
    present = missing == "error"
    hists = [
        [int(k) for k in rng.choice(40, size=rng.integers(0, 7)) if not present or k % 2 == 0]
        for _ in range(25)
    ]
    hists[0] = []
    values, mask = build_history_batch(store, hists, max_len=max_len, missing=missing)
    rows = []
    for h in hists:
        kept = [k for k in h if k in table or missing == "zeros"]
        if max_len is not None:
            kept = kept[len(kept) - max_len :] if len(kept) > max_len else kept
        rows.append([table.get(k, np.zeros(d)) for k in kept])
    length = max(1, max(len(r) for r in rows))
    assert tuple(values.shape) == (len(hists), length, d)
    for b, r in enumerate(rows):
        want = np.zeros((length, d))
        want[: len(r)] = np.asarray(r).reshape(-1, d)
        np.testing.assert_array_equal(values[b].numpy(), want)
        assert mask[b].tolist() == [True] * len(r) + [False] * (length - len(r))
    # tuple keys given as [L_b, m] integer arrays give the same batch as Python tuples
    tstore = EmbeddingStore.from_arrays([(k, k + 1) for k in keys], vec, dtype="float64")
    arrs = [np.array([(k, k + 1) for k in h], dtype=np.int64).reshape(-1, 2) for h in hists]
    tv, tm = build_history_batch(tstore, arrs, max_len=max_len, missing=missing)
    torch.testing.assert_close(tv, values, rtol=0, atol=0)
    assert torch.equal(tm, mask)


def test_build_history_batch_missing_error_names_position():
    store = EmbeddingStore.from_arrays([1, 2], np.eye(2))
    with pytest.raises(MissingKeyError, match=r"histories\[1\]\[1\] = 7"):
        build_history_batch(store, [[1], [2, 7, 1]])


# ---------------------------------------------------------------------------- encoder
def _reference_attention(enc: HistoryEncoder, x: torch.Tensor, ages=None) -> torch.Tensor:
    """One row ``x [n, d]`` (all valid) pooled by loops over heads and positions."""
    n, d = x.shape
    h, dh = enc.num_heads, enc.head_dim
    heads = []
    for hh in range(h):
        sl = slice(hh * dh, (hh + 1) * dh)
        scores = []
        for pos in range(n):
            rank = n - 1 - pos
            k_in = x[pos].clone()
            if enc.position is not None:
                k_in = k_in + enc.position[min(rank, enc.max_positions - 1)]
            k = enc.key.weight @ k_in + enc.key.bias
            s = float(k[sl] @ enc.query[hh]) / math.sqrt(dh)
            if enc.recency_bias:
                a = float(rank) if ages is None else float(ages[pos])
                s -= float(torch.nn.functional.softplus(enc.decay_raw[hh])) * math.log1p(a)
            scores.append(s)
        w = np.exp(np.array(scores) - max(scores))
        w /= w.sum()
        v = sum(
            float(w[pos]) * (enc.value.weight @ x[pos] + enc.value.bias)[sl] for pos in range(n)
        )
        heads.append(v)
    return enc.out.weight @ torch.cat(heads) + enc.out.bias


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"num_heads": 2},
        {"num_heads": 2, "max_positions": 3},
        {"recency_bias": True},
        {"num_heads": 4, "max_positions": 10, "recency_bias": True},
    ],
)
def test_attention_pooling_matches_loop_reference_and_ignores_padding(kw):
    torch.manual_seed(0)
    d = 8
    enc = HistoryEncoder(d, pooling="attention", out_dim=5, seed=1, **kw).double().eval()
    if enc.recency_bias:
        with torch.no_grad():
            enc.decay_raw.copy_(torch.linspace(-1.0, 1.5, enc.num_heads))
    lengths = [4, 1, 0, 6]
    L = 9
    real = [torch.randn(n, d, dtype=torch.float64) for n in lengths]
    # left-aligned with NaN padding, and right-aligned (padding first) with garbage
    left = torch.full((len(lengths), L, d), float("nan"), dtype=torch.float64)
    right = 1e6 * torch.randn(len(lengths), L, d, dtype=torch.float64)
    ml = torch.zeros(len(lengths), L, dtype=torch.bool)
    mr = torch.zeros_like(ml)
    for b, x in enumerate(real):
        left[b, : len(x)] = x
        ml[b, : len(x)] = True
        right[b, L - len(x) :] = x
        mr[b, L - len(x) :] = True
    with torch.no_grad():
        out_l, w_l = enc(left, ml, return_weights=True)
        out_r = enc(right, mr)
        for b, x in enumerate(real):
            want = enc.empty if len(x) == 0 else _reference_attention(enc, x)
            torch.testing.assert_close(out_l[b], want.to(out_l.dtype), rtol=1e-10, atol=1e-10)
        torch.testing.assert_close(out_r, out_l, rtol=1e-10, atol=1e-10)
        assert bool((w_l[~ml.unsqueeze(1).expand_as(w_l)] == 0).all())
        torch.testing.assert_close(w_l.sum(-1)[ml.any(1)], torch.ones(3, enc.num_heads).double())
        # order: without positions / recency attention pooling is a set function
        perm = torch.tensor([2, 0, 3, 1])
        shuffled = left.clone()
        shuffled[0, :4] = left[0, perm]
        moved = enc(shuffled, ml)
        if not kw.get("max_positions") and not kw.get("recency_bias"):
            torch.testing.assert_close(moved, out_l, rtol=1e-10, atol=1e-10)
        else:
            assert not torch.allclose(moved[0], out_l[0])
            torch.testing.assert_close(moved[1:], out_l[1:], rtol=1e-10, atol=1e-10)


def test_attention_with_ages_matches_reference():
    d = 4
    enc = HistoryEncoder(d, pooling="attention", recency_bias=True, seed=0).double().eval()
    with torch.no_grad():
        enc.decay_raw.fill_(0.7)
    x = torch.randn(5, d, dtype=torch.float64)
    ages = torch.tensor([9.0, 4.0, 2.5, 1.0, 0.0], dtype=torch.float64)
    vals = torch.cat([x, torch.zeros(2, d, dtype=torch.float64)])[None]
    mask = torch.tensor([[True] * 5 + [False] * 2])
    ag = torch.cat([ages, torch.tensor([float("nan"), -3.0], dtype=torch.float64)])[None]
    with torch.no_grad():
        got = enc(vals, mask, ag)[0]
        torch.testing.assert_close(got, _reference_attention(enc, x, ages), rtol=1e-10, atol=1e-10)


def test_mean_pooling_is_masked_mean_and_permutation_invariant():
    d = 6
    for out_dim in (None, 3):
        enc = HistoryEncoder(d, pooling="mean", out_dim=out_dim, seed=0).double().eval()
        x = torch.randn(2, 5, d, dtype=torch.float64)
        mask = torch.tensor([[True, False, True, True, False], [False] * 5])
        x_nan = x.masked_fill(~mask.unsqueeze(-1), float("nan"))
        with torch.no_grad():
            out, w = enc(x_nan, mask, return_weights=True)
            mean = x[0, [0, 2, 3]].mean(0)
            want = mean if out_dim is None else enc.out.weight @ mean + enc.out.bias
            torch.testing.assert_close(out[0], want, rtol=1e-12, atol=1e-12)
            torch.testing.assert_close(out[1], enc.empty.double())
            assert w[1].abs().sum() == 0
            perm = torch.tensor([3, 1, 0, 4, 2])
            torch.testing.assert_close(enc(x[:, perm], mask[:, perm]), out)


# ---------------------------------------------------------------------------- losses
def _bce_soft(p: np.ndarray, z: np.ndarray) -> float:
    q = 1.0 / (1.0 + np.exp(-z))
    return float(np.mean(-(p * np.log(q) + (1 - p) * np.log(1 - q))))


@pytest.mark.parametrize("T", [1.0, 0.5, 3.0])
def test_kd_loss_closed_form_and_gradient(T):
    rng = np.random.default_rng(0)
    zs, zt = rng.normal(size=12) * 2, rng.normal(size=12) * 2
    s = torch.tensor(zs, requires_grad=True)
    loss = kd_loss(s, torch.tensor(zt), temperature=T)
    pt = 1.0 / (1.0 + np.exp(-zt / T))
    assert float(loss.detach()) == pytest.approx(T * T * _bce_soft(pt, zs / T), rel=1e-12)
    loss.backward()
    ps = 1.0 / (1.0 + np.exp(-zs / T))
    np.testing.assert_allclose(s.grad.numpy(), T * (ps - pt) / len(zs), rtol=1e-10, atol=1e-14)


def test_vm_loss_closed_form_with_kd_and_auxiliary_head():
    rng = np.random.default_rng(1)
    z, za, zt = (rng.normal(size=10) for _ in range(3))
    y = (rng.random(10) < 0.5).astype(float)
    T, w_kd, w_aux = 2.0, 0.3, 0.7
    got = vm_loss(
        torch.tensor(z),
        torch.tensor(y),
        teacher_logit=torch.tensor(zt),
        kd_weight=w_kd,
        temperature=T,
        aux_logit=torch.tensor(za),
        aux_weight=w_aux,
    )
    pt = 1.0 / (1.0 + np.exp(-zt / T))
    want = (
        (1 - w_kd) * _bce_soft(y, z)
        + w_kd * T * T * _bce_soft(pt, z / T)
        + w_aux * T * T * _bce_soft(pt, za / T)
    )
    assert float(got) == pytest.approx(want, rel=1e-12)
    # the serving head sees the teacher only through w_kd: with w_kd = 0 it is pure BCE
    only_aux = vm_loss(
        torch.tensor(z),
        torch.tensor(y),
        teacher_logit=torch.tensor(zt),
        aux_logit=torch.tensor(za),
        aux_weight=w_aux,
        temperature=T,
    )
    assert float(only_aux) == pytest.approx(
        _bce_soft(y, z) + w_aux * T * T * _bce_soft(pt, za / T), rel=1e-12
    )


def test_transfer_ratio_definition():
    # FM gains 0.04 over the VM; the transfer captures 0.01 of it
    assert transfer_ratio(0.71, 0.70, 0.74) == pytest.approx(0.25)
    assert transfer_ratio(0.74, 0.70, 0.74) == pytest.approx(1.0)
    assert transfer_ratio(0.70, 0.70, 0.74) == 0.0
    assert transfer_ratio(0.69, 0.70, 0.74) == pytest.approx(-0.25)


# ---------------------------------------------------------------------------- hashing, GmP
def test_hashed_embedding_is_carter_wegman_and_deterministic():
    e1, e2 = HashedEmbedding(97, 4, seed=5), HashedEmbedding(97, 4, seed=5)
    ids = torch.tensor([0, 1, -1, 96, 97, 2**31 - 1, 2**31, -(2**40), 2**62], dtype=torch.int64)
    a, b, p = int(e1.a), int(e1.b), 2**31 - 1
    want = [((a * (x % p) + b) % p) % 97 for x in ids.tolist()]
    assert e1.bucket(ids).tolist() == want
    assert torch.equal(e1(ids), e2(ids))
    assert torch.equal(e1.table.weight, e2.table.weight)
    assert not torch.equal(HashedEmbedding(97, 4, seed=6).table.weight, e1.table.weight)


@pytest.mark.parametrize("norm", [None, "layer", "batch"])
def test_as_gmp_equals_plain_layers(norm):
    enc = MLPEncoder(40, hidden=(16, 8), out_dim=3, norm=norm, seed=0).double()
    x = torch.randn(50, 40, dtype=torch.float64)
    if norm == "batch":
        enc.train()
        enc(x)  # running statistics
    enc.eval()
    gmp = enc.as_gmp()
    assert gmp.gmp and all(type(m).__name__ == "GmPLinear" for m in gmp.linear_layers())
    for plain, g in zip(enc.linear_layers(), gmp.linear_layers()):
        torch.testing.assert_close(g.weight, plain.weight, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(g.bias, plain.bias, rtol=1e-12, atol=1e-14)
        # the layer itself, written out: lambda * (U x + beta)
        u = g.direction
        torch.testing.assert_close(u.norm(dim=1), torch.ones(len(u)).double())
        xi = torch.randn(7, g.in_features, dtype=torch.float64)
        torch.testing.assert_close(g(xi), xi @ plain.weight.T + plain.bias, rtol=1e-11, atol=1e-12)
    torch.testing.assert_close(gmp(x), enc(x), rtol=1e-10, atol=1e-12)
    back = gmp.as_standard()
    torch.testing.assert_close(back(x), enc(x), rtol=1e-10, atol=1e-12)


# ---------------------------------------------------------------------------- validation
def test_argument_validation_names_the_argument():
    store = EmbeddingStore.from_arrays([1, 2], np.eye(2))
    with pytest.raises(ValueError, match="max_len"):
        build_history_batch(store, [[1]], max_len=0)
    with pytest.raises(ValueError, match="missing"):
        build_history_batch(store, [[1]], missing="drop")
    with pytest.raises(ValueError, match="mask"):
        HistoryEncoder(2)(torch.zeros(1, 3, 2), torch.ones(1, 2, dtype=torch.bool))
    with pytest.raises(ValueError, match="num_heads"):
        HistoryEncoder(6, pooling="attention", num_heads=4)
    with pytest.raises(ValueError, match="temperature"):
        kd_loss(torch.zeros(2), torch.zeros(2), temperature=0.0)
    with pytest.raises(ValueError, match="temperature"):
        vm_loss(
            torch.zeros(2),
            torch.zeros(2),
            teacher_logit=torch.zeros(2),
            kd_weight=0.5,
            temperature=float("nan"),
        )
    with pytest.raises((TypeError, ValueError), match="kd_weight"):
        vm_loss(torch.zeros(2), torch.zeros(2), kd_weight="0.5")
    with pytest.raises(ValueError, match="kd_weight"):
        vm_loss(torch.zeros(2), torch.zeros(2), kd_weight=float("nan"))
    with pytest.raises(ValueError, match="label"):
        vm_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="teacher_logit"):
        kd_loss(torch.zeros(3), torch.zeros(2))
    with pytest.raises(ValueError, match="auc_fm"):
        transfer_ratio(0.7, 0.7, float("nan"))
    with pytest.raises(ValueError, match="buckets"):
        HashedEmbedding(0, 2)
    with pytest.raises(TypeError, match="ids"):
        HashedEmbedding(3, 2).bucket(torch.zeros(2))


def test_validation_of_history_keys_dropout_and_teacher():
    store = EmbeddingStore.from_arrays([1, 2], np.eye(2))
    with pytest.raises(TypeError, match=r"histories\[1\]\[0\]"):
        build_history_batch(store, [[1], np.array([2.0, 1.0])])
    with pytest.raises(TypeError, match=r"histories\[0\]\[1\]"):
        build_history_batch(store, [[1, 1.5]])
    with pytest.raises(TypeError, match="dropout"):
        HistoryEncoder(4, dropout="0.1")
    with pytest.raises(ValueError, match="dropout"):
        HistoryEncoder(4, dropout=1.0)
    with pytest.raises(ValueError, match="teacher_logit"):
        kd_loss(torch.zeros(2), torch.tensor([float("nan"), 0.0]))
