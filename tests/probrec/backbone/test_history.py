"""History encoder and padded history batches from an embedding store."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from probrec.backbone import (
    EmbeddingStore,
    HistoryEncoder,
    MissingKeyError,
    build_history_batch,
    recency_rank,
)

D = 8


def _batch(seed: int = 0, lengths=(5, 0, 2, 6)) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    length = max(lengths)
    x = torch.randn(len(lengths), length, D, generator=g, dtype=torch.float64)
    mask = torch.arange(length)[None, :] < torch.tensor(lengths)[:, None]
    return x, mask


ENCODERS = {
    "mean": dict(pooling="mean"),
    "mean_proj": dict(pooling="mean", out_dim=5),
    "attn": dict(pooling="attention"),
    "attn_heads": dict(pooling="attention", num_heads=4, out_dim=6),
    "attn_recency": dict(pooling="attention", num_heads=2, max_positions=4, recency_bias=True),
}


def _encoder(name: str, seed: int = 0) -> HistoryEncoder:
    return HistoryEncoder(D, seed=seed, **ENCODERS[name]).double()


def test_mean_pooling_equals_mean_of_valid_rows() -> None:
    x, mask = _batch()
    out = _encoder("mean")(x, mask).detach().numpy()
    for b in range(len(x)):
        if mask[b].any():
            np.testing.assert_allclose(out[b], x[b][mask[b]].numpy().mean(0), atol=1e-12)


@pytest.mark.parametrize("name", list(ENCODERS))
def test_padded_positions_have_no_effect(name: str) -> None:
    enc = _encoder(name)
    x, mask = _batch()
    ages = torch.rand(x.shape[:2], dtype=torch.float64) * 30
    kwargs = {"ages": ages} if ENCODERS[name].get("recency_bias") else {}
    ref = enc(x, mask, **kwargs)
    x2 = x.clone()
    x2[~mask] = torch.randn(int((~mask).sum()), D, dtype=torch.float64) * 1e3
    x2[0, -1] = float("nan")  # padding may even be NaN
    if kwargs:
        ages = ages.clone()
        ages[~mask] = -5.0  # invalid values at padding are ignored too
        kwargs = {"ages": ages}
    x2.requires_grad_(True)
    out = enc(x2, mask, **kwargs)
    assert torch.equal(out, ref)
    out.sum().backward()
    assert bool((x2.grad[~mask] == 0).all()) and bool(torch.isfinite(x2.grad).all())


@pytest.mark.parametrize("name", list(ENCODERS))
@pytest.mark.parametrize("empty", ["learned", "zeros"])
def test_empty_histories_give_the_empty_vector_without_nan(name: str, empty: str) -> None:
    enc = HistoryEncoder(D, seed=0, empty=empty, **ENCODERS[name]).double()
    if empty == "learned":
        with torch.no_grad():
            enc.empty.copy_(torch.arange(enc.out_dim, dtype=torch.float64))
    x, mask = _batch()
    x = x.requires_grad_(True)
    out = enc(x, mask)
    assert bool(torch.isfinite(out).all())
    np.testing.assert_array_equal(out[1].detach().numpy(), enc.empty.detach().numpy())
    out.sum().backward()
    grads = [p.grad for p in enc.parameters() if p.grad is not None]
    assert all(bool(torch.isfinite(g).all()) for g in grads)
    # all rows empty, and a zero-length history
    none = torch.zeros(3, 4, dtype=torch.bool)
    assert torch.equal(
        enc(torch.randn(3, 4, D, dtype=torch.float64), none), enc.empty.detach().expand(3, -1)
    )
    zero_len = enc(torch.zeros(2, 0, D, dtype=torch.float64), torch.zeros(2, 0, dtype=torch.bool))
    assert torch.equal(zero_len, enc.empty.detach().expand(2, -1))


def test_attention_matches_torch_multihead_attention() -> None:
    """Learned-query pooling equals nn.MultiheadAttention with that query and our weights."""
    heads = 4
    enc = HistoryEncoder(D, "attention", num_heads=heads, seed=1).double()
    x, mask = _batch(seed=2, lengths=(5, 3, 1, 6))
    mha = nn.MultiheadAttention(D, heads, batch_first=True).double()
    with torch.no_grad():
        mha.in_proj_weight.copy_(torch.cat([torch.eye(D), enc.key.weight, enc.value.weight]))
        mha.in_proj_bias.copy_(torch.cat([torch.zeros(D), enc.key.bias, enc.value.bias]))
        mha.out_proj.weight.copy_(enc.out.weight)
        mha.out_proj.bias.copy_(enc.out.bias)
    query = enc.query.detach().reshape(1, 1, D).expand(len(x), 1, D)
    ref, ref_w = mha(query, x, x, key_padding_mask=~mask, average_attn_weights=False)
    out, weights = enc(x, mask, return_weights=True)
    np.testing.assert_allclose(out.detach().numpy(), ref[:, 0].detach().numpy(), atol=1e-12)
    np.testing.assert_allclose(
        weights.detach().numpy(), ref_w[:, :, 0].detach().numpy(), atol=1e-12
    )


def test_attention_without_position_is_order_invariant_and_with_position_is_not() -> None:
    x, mask = _batch(lengths=(6, 6))
    perm = torch.tensor([3, 0, 5, 1, 4, 2])
    plain = _encoder("attn")
    assert torch.allclose(plain(x, mask), plain(x[:, perm], mask), atol=1e-12)
    positional = HistoryEncoder(D, "attention", max_positions=6, seed=0).double()
    with torch.no_grad():
        positional.position.mul_(50)
    assert not torch.allclose(positional(x, mask), positional(x[:, perm], mask), atol=1e-6)


def test_left_and_right_padding_agree() -> None:
    enc = _encoder("attn_recency")
    x, mask = _batch(lengths=(5, 2, 6))
    right = enc(x, mask)
    # move each row's valid events to the end of the row
    x_left, m_left = torch.zeros_like(x), torch.zeros_like(mask)
    for b in range(len(x)):
        n = int(mask[b].sum())
        x_left[b, x.shape[1] - n :] = x[b, :n]
        m_left[b, x.shape[1] - n :] = True
    assert torch.allclose(enc(x_left, m_left), right, atol=1e-12)


def test_recency_rank() -> None:
    mask = torch.tensor([[True, True, True, False], [False, True, False, True]])
    rank = recency_rank(mask)
    assert rank[0, :3].tolist() == [2, 1, 0]
    assert rank[1, [1, 3]].tolist() == [1, 0]


def test_recency_bias_prefers_recent_or_young_events() -> None:
    enc = HistoryEncoder(D, "attention", num_heads=2, recency_bias=True, seed=0).double()
    with torch.no_grad():
        enc.decay_raw.fill_(60.0)  # decay ~ 60 per unit of log(1 + age)
    x, mask = _batch(lengths=(5, 3))
    _, w = enc(x, mask, return_weights=True)
    w = w.detach()
    assert float(w[0, :, 4].min()) > 0.999 and float(w[1, :, 2].min()) > 0.999
    ages = torch.tensor([[1.0, 0.0, 9.0, 4.0, 2.0], [3.0, 5.0, 0.5, 0.0, 0.0]], dtype=torch.float64)
    _, w = enc(x, mask, ages, return_weights=True)
    w = w.detach()
    assert float(w[0, :, 1].min()) > 0.999 and float(w[1, :, 2].min()) > 0.999


def test_input_validation() -> None:
    enc = _encoder("attn_recency")
    x, mask = _batch()
    with pytest.raises(ValueError, match="values must have shape"):
        enc(x[..., :3], mask)
    with pytest.raises(ValueError, match="mask must have shape"):
        enc(x, mask[:, :2])
    with pytest.raises(ValueError, match="mask must be bool"):
        enc(x, mask.double() * 2)
    assert torch.equal(enc(x, mask.long()), enc(x, mask))  # 0/1 numbers are accepted
    assert torch.equal(enc(x, mask.double()), enc(x, mask))
    bad_ages = torch.zeros(mask.shape, dtype=torch.float64)
    bad_ages[0, 0] = -1.0
    with pytest.raises(ValueError, match="non-negative"):
        enc(x, mask, bad_ages)
    with pytest.raises(ValueError, match="ages must have shape"):
        enc(x, mask, bad_ages[:, :2])
    with pytest.raises(ValueError, match="ages are only used"):
        _encoder("attn")(x, mask, bad_ages.abs())
    with pytest.raises(ValueError, match="must divide"):
        HistoryEncoder(D, "attention", num_heads=3)
    with pytest.raises(ValueError, match="pooling='attention' only"):
        HistoryEncoder(D, "mean", recency_bias=True)
    with pytest.raises(ValueError, match="pooling"):
        HistoryEncoder(D, "max")


# ---------------------------------------------------------------------- batches from a store
@pytest.fixture
def store() -> EmbeddingStore:
    keys = [f"item{i}" for i in range(10)]
    vec = np.arange(10 * 3, dtype=np.float32).reshape(10, 3)
    return EmbeddingStore.from_arrays(keys, vec)


def test_build_history_batch(store: EmbeddingStore) -> None:
    hist = [["item1", "item2", "item3"], [], ["item9"]]
    values, mask = build_history_batch(store, hist)
    assert values.shape == (3, 3, 3) and mask.tolist() == [
        [True] * 3,
        [False] * 3,
        [True, False, False],
    ]
    np.testing.assert_array_equal(values[0].numpy(), store.vectors[[1, 2, 3]])
    np.testing.assert_array_equal(values[2, 0].numpy(), store.vectors[9])
    assert not values[~mask].any()


def test_build_history_batch_truncates_to_the_most_recent(store: EmbeddingStore) -> None:
    hist = [["item1", "item2", "item3", "item4"], ["item5"]]
    values, mask = build_history_batch(store, hist, max_len=2, dtype=torch.float64)
    assert values.dtype == torch.float64 and mask.tolist() == [[True, True], [True, False]]
    np.testing.assert_array_equal(values[0].numpy(), store.vectors[[3, 4]])


def test_build_history_batch_missing_keys(store: EmbeddingStore) -> None:
    hist = [["item1", "nope", "item2"], ["gone"]]
    with pytest.raises(MissingKeyError, match=r"histories\[0\]\[1\] = 'nope'"):
        build_history_batch(store, hist)
    values, mask = build_history_batch(store, hist, missing="skip")
    assert mask.tolist() == [[True, True], [False, False]]
    np.testing.assert_array_equal(values[0].numpy(), store.vectors[[1, 2]])
    values, mask = build_history_batch(store, hist, missing="zeros")
    assert mask.tolist() == [[True, True, True], [True, False, False]]
    assert not values[0, 1].any() and not values[1, 0].any()
    # truncation counts kept events only
    values, mask = build_history_batch(
        store, [["item1", "item2", "nope"]], missing="skip", max_len=1
    )
    np.testing.assert_array_equal(values[0, 0].numpy(), store.vectors[2])


def test_tuple_key_histories_as_arrays_equal_lists_of_tuples() -> None:
    rng = np.random.default_rng(4)
    keys = np.unique(rng.integers(0, 50, size=(300, 3)), axis=0)
    store = EmbeddingStore.from_arrays(keys, rng.standard_normal((len(keys), 4)))
    hists = [keys[rng.choice(len(keys), n)] for n in (5, 0, 1, 7)]
    hists[3][2] = [99, 99, 99]  # not in the store
    as_lists = [[tuple(k) for k in h.tolist()] for h in hists]
    for opts in ({"missing": "zeros"}, {"missing": "skip", "max_len": 3}):
        want = build_history_batch(store, as_lists, **opts)
        got = build_history_batch(store, hists, **opts)
        assert torch.equal(got.values, want.values) and torch.equal(got.mask, want.mask)
    with pytest.raises(MissingKeyError, match=r"histories\[3\]\[2\] = \(99, 99, 99\)") as info:
        build_history_batch(store, hists)
    assert info.value.missing == [(99, 99, 99)]


def test_build_history_batch_errors(store: EmbeddingStore) -> None:
    with pytest.raises(TypeError, match="histories"):
        build_history_batch(store, "item1")
    with pytest.raises(TypeError, match=r"histories\[0\]"):
        build_history_batch(store, ["item1"])


def test_store_to_encoder_end_to_end() -> None:
    rng = np.random.default_rng(0)
    item_ids = np.arange(1000, 1050)
    store = EmbeddingStore.from_arrays(item_ids, rng.standard_normal((50, 16)))
    hist = [rng.choice(item_ids, size=int(n), replace=False) for n in rng.integers(0, 12, 32)]
    batch = build_history_batch(store, hist, max_len=8)
    enc = HistoryEncoder(
        16, "attention", num_heads=4, max_positions=8, recency_bias=True, out_dim=4, seed=0
    )
    out = enc(*batch)
    assert out.shape == (32, 4) and bool(torch.isfinite(out).all())
    out.pow(2).sum().backward()
    assert all(p.grad is not None for p in enc.parameters())
    # integer histories as tensors or lists give the same batch
    as_tensors = build_history_batch(store, [torch.from_numpy(h) for h in hist], max_len=8)
    as_lists = build_history_batch(store, [h.tolist() for h in hist], max_len=8)
    for other in (as_tensors, as_lists):
        assert torch.equal(other.values, batch.values) and torch.equal(other.mask, batch.mask)
    square = np.stack([h[:3] for h in hist if len(h) >= 3])
    assert torch.equal(
        build_history_batch(store, square).values, build_history_batch(store, list(square)).values
    )
    # each row equals encoding that row alone (no leakage between rows)
    for b in (0, 5):
        one = build_history_batch(store, [hist[b]], max_len=8)
        assert torch.allclose(enc(*one)[0], out[b], atol=1e-5)
