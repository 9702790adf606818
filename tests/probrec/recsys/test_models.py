"""Hashed embeddings, the DLRM interaction, and model input checks."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.recsys import EventTable, HashedEmbedding, VerticalModel, dot_interaction, robust_std


def test_hashed_embedding_matches_python_integers():
    emb = HashedEmbedding(97, 4, seed=3)
    ids = torch.tensor([0, 1, 5, 2**40 + 17, -3, 123456789012], dtype=torch.int64)
    a, b, p = int(emb.a), int(emb.b), 2**31 - 1
    want = [((a * (x % p) + b) % p) % 97 for x in ids.tolist()]  # Python big integers
    assert emb.bucket(ids).tolist() == want
    out = emb(ids)
    assert out.shape == (6, 4)
    torch.testing.assert_close(out[2], emb.table.weight[want[2]])
    # unseen ids need no table growth and the same seed gives the same hash
    assert emb.table.weight.shape[0] == 97
    assert HashedEmbedding(97, 4, seed=3).bucket(ids).tolist() == want
    with pytest.raises(TypeError, match="int64"):
        emb(ids.float())


def test_dot_interaction_matches_loops():
    x = torch.randn(3, 5, 4, generator=torch.Generator().manual_seed(0))
    got = dot_interaction(x)
    want = torch.stack(
        [
            torch.stack([x[b, i] @ x[b, j] for i in range(5) for j in range(i + 1, 5)])
            for b in range(3)
        ]
    )
    torch.testing.assert_close(got, want)
    with pytest.raises(ValueError, match=r"vectors must be \[B, F, e\]"):  # an IndexError
        dot_interaction(torch.zeros(3, 4))


def test_vertical_model_needs_loopfm_inputs(small_log):
    table = EventTable.build(small_log, np.arange(1000), user_history=4, item_history=3)
    vm = VerticalModel(table.field_cardinalities, 3, emb_dim=4, hidden=(8,), fm_dim=6, seed=0)
    with pytest.raises(ValueError, match="fm_hist"):
        vm(table.batch(np.arange(5)))
    b = table.batch(np.arange(5))
    gen = torch.Generator().manual_seed(0)
    good = {
        **b,
        "fm_hist": torch.randn(5, 4, 6, generator=gen),
        "fm_ihist": torch.randn(5, 3, 6, generator=gen),
    }
    with pytest.raises(ValueError, match=r"batch\['fm_ihist'\] must be \[5, 3, 6\]"):
        vm({**good, "fm_ihist": good["fm_ihist"][..., :5]})
    for key, bad in (  # one history broadcast to every event, or to every position
        ("fm_hist", good["fm_hist"][:1]),
        ("fm_hist", good["fm_hist"][:, :1]),
        ("fm_ihist", good["fm_ihist"][:, :1]),
    ):
        with pytest.raises(ValueError, match=rf"batch\['{key}'\] must be \[5, "):
            vm({**good, key: bad})
    with pytest.raises(ValueError, match="batch needs 'fm_ihist'"):  # a bare KeyError
        vm({k: v for k, v in good.items() if k != "fm_ihist"})
    n_fields = len(table.field_cardinalities)
    for cols in (n_fields - 1, n_fields + 1):  # extra columns ignored, too few an IndexError
        fields = torch.zeros(5, cols, dtype=torch.long)
        with pytest.raises(ValueError, match=rf"batch\['fields'\] must be \[B, {n_fields}\]"):
            vm({**good, "fields": fields})
    with torch.no_grad():  # float64 stored vectors are cast (a Linear failed on them)
        f64 = {**good, "fm_hist": good["fm_hist"].double(), "fm_ihist": good["fm_ihist"].double()}
        torch.testing.assert_close(vm(f64)[1], vm(good)[1])
    vm2 = VerticalModel(table.field_cardinalities, 3, emb_dim=4, hidden=(8,), aux_head=True)
    h, z, aux = vm2(table.batch(np.arange(5)))
    assert h.shape == (5, 8) and z.shape == (5,) and aux.shape == (5,)


def test_models_are_seeded_without_touching_global_rng(small_log):
    table = EventTable.build(small_log, np.arange(1000), user_history=4, item_history=3)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = VerticalModel(table.field_cardinalities, 3, seed=5)
    assert torch.equal(before, torch.random.get_rng_state())
    b = VerticalModel(table.field_cardinalities, 3, seed=5)
    for p, q in zip(a.parameters(), b.parameters()):
        assert torch.equal(p, q)


def test_fm_scaling_makes_vm_invariant_to_affine_store_changes(small_log):
    table = EventTable.build(small_log, np.arange(1000), user_history=4, item_history=3)
    gen = torch.Generator().manual_seed(0)
    b = table.batch(np.arange(200, 260))
    d = 6
    store = torch.randn(len(small_log), d, generator=gen)
    scale, shift = torch.rand(d, generator=gen) * 5 + 0.1, torch.randn(d, generator=gen)
    outs = []
    for vec in (store, store * scale + shift):
        vm = VerticalModel(table.field_cardinalities, 3, emb_dim=4, hidden=(8,), fm_dim=d, seed=0)
        vm.set_fm_scaling(vec[:1000])
        batch = dict(b)
        batch["fm_hist"] = vec[b["hist_event"].clamp_min(0)]
        batch["fm_ihist"] = vec[b["ihist_event"].clamp_min(0)]
        with torch.no_grad():
            outs.append(vm(batch)[1])
    torch.testing.assert_close(outs[0], outs[1], rtol=1e-4, atol=1e-5)
    with pytest.raises(ValueError, match="shape"):
        vm.set_fm_scaling(store[:, :3])
    with pytest.raises(ValueError, match="non-finite"):
        vm.set_fm_scaling(torch.full_like(store, float("nan")))
    with pytest.raises(ValueError, match="no LoopFM"):
        VerticalModel(table.field_cardinalities, 3).set_fm_scaling(store)


def test_fm_scaling_of_a_dimension_constant_over_the_training_vectors():
    """A dead-on-training ReLU dimension (all zeros) is scaled by the median spread, so a later
    event's ordinary value stays an ordinary input (it was divided by 1e-6)."""
    vm = VerticalModel([3], fm_dim=4, seed=0)
    gen = torch.Generator().manual_seed(0)
    spreads = torch.tensor([0.5, 1.0, 2.0, 0.0])
    vec = torch.randn(500, 4, generator=gen) * spreads
    vm.set_fm_scaling(vec)
    std = vec.std(0)
    torch.testing.assert_close(vm.fm_std[:3], std[:3])
    assert float(vm.fm_std[3]) == pytest.approx(float(std.median()))
    later = torch.tensor([[0.0, 0.0, 0.0, 1.0]])
    assert float(vm._scale(later).abs().max()) < 10.0
    vm.set_fm_scaling(torch.zeros(10, 4))  # every dimension constant: unit scale
    assert torch.equal(vm.fm_std, torch.ones(4))


def test_robust_std_needs_two_rows():
    v = torch.tensor([[0.0, 1.0, 5.0], [2.0, 1.0, 9.0]])
    torch.testing.assert_close(robust_std(v), torch.tensor([2.0**0.5, 2.0**0.5, 8.0**0.5]))
    for bad in (v[:1], v[:0], v[0]):  # one row gave NaN "standard deviations"
        with pytest.raises(ValueError, match=r"values must have shape \[n >= 2, d\]"):
            robust_std(bad)
