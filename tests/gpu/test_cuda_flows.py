"""Accelerator checks of the annotator simulators of :mod:`probrec.flows`.

Every model family (the conditional integer flow with and without an item latent, the
conditional softmax flow, the discretised-Gaussian, ordinal-logistic, softmax and MC-dropout
heads, the deep ensemble and an ensemble of integer flows) is fitted on a small seeded
synthetic population (200 items, labels 1-5, 4 features, 5 annotators) and run on the device
under test (``device`` fixture, ``tests/gpu/conftest.py``): moved there, fitted there, sampled
there, saved and loaded across devices, fed inputs from the other device, and in float64.

Monte Carlo estimates draw from a generator on the model's device (the scramble seeds of the
randomised QMC points, ``torch.randint`` on that generator in
:func:`probrec.flows.base.normal_points`; MC dropout's masks, ``torch.rand`` on that
generator): the same seed gives the same numbers on the same kind of device, other numbers on
another (as :meth:`AnnotatorModel.load` documents). Those estimates are compared across
devices within ``K_MC`` Monte Carlo standard errors -- the model's own (jackknife) standard
error where it reports one, else the spread of the estimate over 12 seeds -- and exactly on the
same kind of device. Closed-form outputs are compared up to float arithmetic.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import Tensor

from probrec.data.annotations import AnnotationSet, synthetic_annotations
from probrec.flows import (
    AnnotatorModel,
    ConditionalIntegerFlow,
    ConditionalSoftmaxFlow,
    DeepEnsemble,
    GaussianHead,
    MCDropoutHead,
    ModelEnsemble,
    OrdinalLogisticHead,
    SoftmaxHead,
    load_model,
)
from probrec.flows.metrics import evaluate

Population = tuple[AnnotationSet, AnnotationSet, AnnotationSet]

LABELS = (1, 2, 3, 4, 5)
SMALL = {"hidden": (16,), "dropout": 0.1}
# name -> (class, constructor arguments, probabilities and item moments are Monte Carlo
# estimates); latent_lr=1: with the default 10 short fits of the item-latent flows varied by
# up to 0.7 nats between seeds
CASES: dict[str, tuple[type[AnnotatorModel], dict[str, Any], bool]] = {
    "integer_flow": (ConditionalIntegerFlow, {}, False),
    "integer_flow_panel": (
        ConditionalIntegerFlow,
        {"item_latent": 1, "n_train_samples": 4, "n_eval_samples": 256, "latent_lr": 1.0},
        True,
    ),
    "integer_flow_quadrature": (
        ConditionalIntegerFlow,
        {"item_latent": 1, "quadrature": 8, "latent_lr": 1.0},
        False,
    ),
    "softmax_flow": (
        ConditionalSoftmaxFlow,
        {"n_layers": 2, "n_train_samples": 8, "n_eval_samples": 256},
        True,
    ),
    "softmax_flow_panel": (
        ConditionalSoftmaxFlow,
        {"latent": "item", "n_layers": 2, "n_train_samples": 8, "n_eval_samples": 256},
        True,
    ),
    "softmax_flow_quadrature": (
        ConditionalSoftmaxFlow,
        {"latent": "item", "n_layers": 2, "quadrature": 3},
        False,
    ),
    "gaussian": (GaussianHead, {}, False),
    "ordinal_logistic": (OrdinalLogisticHead, {}, False),
    "softmax": (SoftmaxHead, {}, False),
    "mc_dropout": (MCDropoutHead, {"mc_samples": 20}, True),
    "deep_ensemble": (DeepEnsemble, {"members": 3}, False),
    "model_ensemble": (ModelEnsemble, {"model": "ConditionalIntegerFlow", "members": 2}, False),
}
NAMES = list(CASES)
HOST_FIT = ["integer_flow_panel", "softmax_flow", "deep_ensemble", "model_ensemble"]
FIT = {"epochs": 6, "batch_size": 32, "lr": 5e-3, "patience": 6, "seed": 0, "progress": False}

#: Monte Carlo tolerance in standard errors. Between two seeds on the CPU (draws as
#: independent as two devices'), the worst entry was 6.8 jackknife s.e. over 100 pairs of
#: seeds x 40 items x 5 labels, and 5.1 seed-spread s.e. over 14 pairs.
K_MC = 10.0
SPREAD_SEEDS = range(1, 13)
#: held-out NLL per annotation: a device fit against the CPU fit with the same seed. Six
#: seeds on the CPU spread by at most 0.025; fitting improves on the untrained model by >= 0.17.
NLL_MARGIN = 0.08


def _tol(dtype: torch.dtype) -> dict[str, float]:
    """Float-arithmetic tolerances (``assert_close`` ``atol`` and ``rtol``) of probabilities
    and of item moments (labels 1-5) computed on two devices."""
    if dtype == torch.float64:
        return {"p": 1e-10, "m": 1e-9, "rtol": 1e-9}
    return {"p": 5e-5, "m": 2e-4, "rtol": 1e-4}


def _make(name: str) -> AnnotatorModel:
    klass, kw, _ = CASES[name]
    return klass(4, LABELS, seed=0, **SMALL, **kw)


def _tensors(split: AnnotationSet, device: torch.device) -> tuple[Tensor, Tensor, Tensor]:
    """Features, padded labels and mask of ``split`` as tensors on ``device``."""
    return tuple(
        torch.as_tensor(a, device=device) for a in (split.features, split.labels, split.mask)
    )


def _fit(
    model: AnnotatorModel, population: Population, inputs: torch.device | None
) -> AnnotatorModel:
    """``FIT`` on the training items, early stopping on the validation items; the data as
    tensors on ``inputs`` (``None``: NumPy training data, CPU-tensor validation data)."""
    train, valid, _ = population
    if inputs is None:
        tr = (train.features, train.labels, train.mask)
        va = _tensors(valid, torch.device("cpu"))
    else:
        tr, va = _tensors(train, inputs), _tensors(valid, inputs)
    return model.fit(*tr, valid=va, **FIT)


def _on(t: Tensor, device: torch.device) -> bool:
    return t.device.type == device.type and device.index in (None, t.device.index)


def _all_on(model: AnnotatorModel, device: torch.device, dtype: torch.dtype) -> None:
    for key, t in model.state_dict().items():
        assert _on(t, device), f"{key} on {t.device}, not {device}"
        assert not t.is_floating_point() or t.dtype == dtype, f"{key} is {t.dtype}"


def _same_state(a: AnnotatorModel, b: AnnotatorModel) -> None:
    """Every state-dict tensor bit for bit equal (compared on the CPU)."""
    sa, sb = a.state_dict(), b.state_dict()
    assert sa.keys() == sb.keys()
    for key in sa:
        ta, tb = sa[key].cpu(), sb[key].cpu()
        assert ta.dtype == tb.dtype and torch.equal(ta, tb), (
            f"{key}: max |diff| {float((ta.double() - tb.double()).abs().max()):.3g}"
        )


def _estimates(model: AnnotatorModel, x: Tensor, seed: int) -> tuple[Tensor, ...]:
    """Probabilities, their Monte Carlo s.e. (``p * se(log p)``), item means and item sds,
    as float64 CPU tensors."""
    logp, se = model.label_log_probs_se(x, seed=seed)
    mean, sd = model.item_moments(x, seed=seed)
    p = logp.double().exp()
    return tuple(t.double().cpu() for t in (p, p * se.double(), mean, sd))


def _seed_spread(model: AnnotatorModel, x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Standard deviations over ``SPREAD_SEEDS`` of the probabilities and item moments."""
    runs = [_estimates(model, x, s) for s in SPREAD_SEEDS]
    return tuple(torch.stack([r[i] for r in runs]).std(0) for i in (0, 2, 3))


def _within(a: Tensor, b: Tensor, tol: Tensor, what: str) -> None:
    excess = (a - b).abs() / tol
    assert bool((excess <= 1).all()), (
        f"{what}: {int((excess > 1).sum())} of {excess.numel()} entries differ by more than "
        f"{K_MC} Monte Carlo s.e. (worst {float(excess.max()) * K_MC:.1f} s.e.)"
    )


def _agree(name: str, a: AnnotatorModel, b: AnnotatorModel, x: Tensor) -> None:
    """Models ``a`` and ``b`` (the same weights, possibly on different devices) give the same
    probabilities and item moments at ``x`` (seed 0): up to float arithmetic where they draw
    the same numbers (no Monte Carlo, or the same kind of device), else within ``K_MC``
    Monte Carlo standard errors."""
    mc, tol = CASES[name][2], _tol(a.dtype)
    pa, sea, ma, sa = _estimates(a, x.to(a.device), 0)
    pb, seb, mb, sb = _estimates(b, x.to(b.device), 0)
    if not mc or a.device.type == b.device.type:
        torch.testing.assert_close(pa, pb, atol=tol["p"], rtol=tol["rtol"])
        torch.testing.assert_close(ma, mb, atol=tol["m"], rtol=tol["rtol"])
        torch.testing.assert_close(sa, sb, atol=tol["m"], rtol=tol["rtol"])
    if not mc:
        assert float(sea.abs().max()) == 0.0 and float(seb.abs().max()) == 0.0
        return
    # Monte Carlo error plus float arithmetic
    spread_p, spread_m, spread_s = _seed_spread(a, x.to(a.device))
    if float(sea.max()) > 0:  # the model's own standard errors
        tol_p = K_MC * torch.sqrt(sea**2 + seb**2) + tol["p"]
    else:  # MC dropout reports none: the spread over seeds
        tol_p = K_MC * math.sqrt(2) * spread_p + tol["p"]
    _within(pa, pb, tol_p, f"{name} probabilities")
    _within(ma, mb, K_MC * math.sqrt(2) * spread_m + tol["m"], f"{name} item means")
    _within(sa, sb, K_MC * math.sqrt(2) * spread_s + tol["m"], f"{name} item sds")


@pytest.fixture(scope="module")
def population() -> Population:
    """200 items (train / valid / test 120 / 40 / 40), 3-5 of 5 annotators per item."""
    data = synthetic_annotations(200, dim=4, n_annotators=5, per_item=(3, 5), seed=3)
    return data.split_items((0.6, 0.2, 0.2), seed=0)


@pytest.fixture(scope="module")
def cpu_models(population: Population) -> dict[str, AnnotatorModel]:
    """Every case fitted on the CPU (seed 0)."""
    cpu = torch.device("cpu")
    return {name: _fit(_make(name), population, cpu) for name in NAMES}


@pytest.fixture(scope="module")
def device_models(population: Population, device: torch.device) -> dict[str, AnnotatorModel]:
    """Every case built on the CPU, moved to the device and fitted there on device tensors."""
    return {name: _fit(_make(name).to(device), population, device) for name in NAMES}


@pytest.fixture(scope="module")
def x_test(population: Population) -> Tensor:
    """Features of 16 held-out items (a CPU tensor), where predictions are compared."""
    return torch.as_tensor(population[2].features[:16])


# ---------------------------------------------------------------------- 1. moved with .to
@pytest.mark.parametrize("name", NAMES)
def test_moved_model_matches_cpu(name, cpu_models, x_test, population, device):
    """A CPU-fitted model moved with ``.to(device)``: its probabilities, s.e. and item
    moments against the CPU model's (float tolerance; Monte Carlo error for MC estimates on
    another kind of device), and every output of the public API on the device."""
    cpu = cpu_models[name]
    dev = copy.deepcopy(cpu).to(device)
    _all_on(dev, device, torch.float32)
    _agree(name, dev, cpu, x_test)
    x = x_test.to(device)
    labels, mask = (t[: len(x)] for t in _tensors(population[2], device)[1:])
    outputs = {
        "label_log_probs_se": dev.label_log_probs_se(x, seed=0),
        "item_moments": dev.item_moments(x, seed=0),
        "predict_proba": dev.predict_proba(x, seed=0),
        "log_prob": dev.log_prob(x, labels[:, 0], seed=0),
        "panel_log_prob": dev.panel_log_prob(x, labels, mask, seed=0),
        "sample": dev.sample(x, 2, seed=0),
    }
    for what, out in outputs.items():
        for t in out if isinstance(out, tuple) else (out,):
            assert _on(t, device), f"{what} on {t.device}"
            assert t.dtype == (torch.int64 if what == "sample" else torch.float32), what
    if isinstance(dev, ConditionalIntegerFlow):
        torch.testing.assert_close(
            dev.cdf_at_cuts(x).cpu(), cpu.cdf_at_cuts(x_test), atol=1e-4, rtol=1e-4
        )
    p = outputs["predict_proba"].double()
    torch.testing.assert_close(p.sum(-1), torch.ones_like(p[:, 0]), atol=1e-5, rtol=0)
    assert math.isfinite(dev.nll(x, labels, mask, seed=0))


# ---------------------------------------------------------------------- 2. fit on the device
@pytest.mark.parametrize("name", NAMES)
def test_fit_on_device(name, device_models, cpu_models, population, device):
    """``fit`` on device tensors: finite losses, weights and outputs on the device, the same
    seed twice gives bit-identical weights, and the held-out NLL per annotation within
    ``NLL_MARGIN`` of the CPU fit with the same seed (other random streams, so not equal)."""
    model = device_models[name]
    assert model.history and not model.training
    for rec in model.history:
        assert math.isfinite(rec["train"]) and math.isfinite(rec["valid"]), rec
    _all_on(model, device, torch.float32)
    x, labels, mask = _tensors(population[2], device)
    assert _on(model.predict_proba(x, seed=0), device)
    again = _fit(_make(name).to(device), population, device)
    _same_state(model, again)
    assert again.history == model.history
    nll_device = model.nll(x, labels, mask, seed=0)
    nll_cpu = cpu_models[name].nll(*(t.cpu() for t in (x, labels, mask)), seed=0)
    assert abs(nll_device - nll_cpu) < NLL_MARGIN, (nll_device, nll_cpu)


# ---------------------------------------------------------------------- 3. sampling
@pytest.mark.parametrize("name", NAMES)
def test_sample_on_device(name, device_models, x_test, device):
    """``sample`` on the device: device, int64, ``[n, N]``, labels in the label set, the same
    seed twice identical, another seed different; one annotation per row of 3000 copies of 4
    items against ``predict_proba`` (6 binomial s.e. plus the reference's MC error)."""
    model = device_models[name]
    x = x_test[:4].to(device)
    first = model.sample(x, 3, seed=7)
    assert _on(first, device) and first.dtype == torch.int64 and first.shape == (3, 4)
    assert torch.equal(first, model.sample(x, 3, seed=7))
    assert torch.isin(first.cpu(), torch.tensor(LABELS)).all()
    reps = 3000
    many = model.sample(x.repeat(reps, 1), 1, seed=11)
    assert _on(many, device) and many.shape == (1, 4 * reps)
    some = model.sample(x.repeat(50, 1), 1, seed=11)
    assert torch.equal(some, model.sample(x.repeat(50, 1), 1, seed=11))
    assert not torch.equal(some, model.sample(x.repeat(50, 1), 1, seed=12))
    draws = many.reshape(reps, 4).cpu()
    freq = (draws[..., None] == torch.tensor(LABELS)).double().mean(0)  # [4, K]
    assert torch.isin(draws, torch.tensor(LABELS)).all()
    logp, se = model.label_log_probs_se(x, seed=0, n_samples=4096)
    p = logp.double().exp().cpu()
    se_p = p * se.double().cpu()
    tol = 6 * torch.sqrt(p * (1 - p) / reps + se_p**2) + 5e-3
    bad = (freq - p).abs() > tol
    assert not bad.any(), f"frequencies {freq[bad]} against probabilities {p[bad]}"


# ---------------------------------------------------------------------- 4. checkpoints
@pytest.mark.parametrize("name", NAMES)
def test_checkpoint_across_devices(name, device_models, cpu_models, x_test, device, tmp_path):
    """A device-fitted model saved and loaded on the CPU (and back onto the device with
    ``map_location``), and a CPU-saved model loaded onto the device: state dicts bit for bit
    equal, predictions equal (float / Monte Carlo tolerance across devices; exactly on the
    same device, where loading onto it is moving there), histories kept."""
    model = device_models[name]
    path = tmp_path / "device.pt"
    model.save(path)
    on_cpu = load_model(path)
    assert type(on_cpu) is type(model) and not on_cpu.training
    _all_on(on_cpu, torch.device("cpu"), torch.float32)
    _same_state(on_cpu, model)
    assert on_cpu.history == model.history
    _agree(name, model, on_cpu, x_test)
    back = load_model(path, map_location=device)
    _all_on(back, device, torch.float32)
    x = x_test.to(device)
    torch.testing.assert_close(
        back.label_log_probs_se(x, seed=0), model.label_log_probs_se(x, seed=0), rtol=0, atol=0
    )
    cpu = cpu_models[name]
    cpu.save(tmp_path / "cpu.pt")
    loaded = type(cpu).load(Path(tmp_path / "cpu.pt"), map_location=device)
    _all_on(loaded, device, torch.float32)
    _same_state(loaded, cpu)
    moved = copy.deepcopy(cpu).to(device)  # against the CPU model: test_moved_model_matches_cpu
    torch.testing.assert_close(
        loaded.label_log_probs_se(x, seed=0), moved.label_log_probs_se(x, seed=0), rtol=0, atol=0
    )
    torch.testing.assert_close(
        loaded.item_moments(x, seed=0), moved.item_moments(x, seed=0), rtol=0, atol=0
    )


# ---------------------------------------------------------------------- 5. mixed devices
def _api_calls(model: AnnotatorModel, x: Any, labels: Any, mask: Any) -> dict[str, Any]:
    return {
        "label_log_probs_se": model.label_log_probs_se(x, seed=0),
        "item_moments": model.item_moments(x, seed=0),
        "log_prob": model.log_prob(x, labels[:, 0], seed=0),
        "panel_log_prob": model.panel_log_prob(x, labels, mask, seed=0),
        "sample": model.sample(x, 3, seed=1),
        "nll": model.nll(x, labels, mask, seed=0),
    }


def _same_outputs(
    got: dict[str, Any], ref: dict[str, Any], where: Callable[[Tensor], bool], label: str
) -> None:
    for what in ref:
        outs = got[what] if isinstance(got[what], tuple) else (got[what],)
        refs = ref[what] if isinstance(ref[what], tuple) else (ref[what],)
        for o, r in zip(outs, refs):
            if isinstance(r, Tensor):
                assert where(o), f"{label}: {what} on {o.device}"
                assert torch.equal(o, r), f"{label}: {what} differs"
            else:
                assert o == r, f"{label}: {what} {o} != {r}"


@pytest.mark.parametrize("name", NAMES)
def test_inputs_on_another_device_are_moved(name, device_models, cpu_models, population, device):
    """The contract: inputs (features, labels, masks; tensors or NumPy) are moved to the
    model's device. A device model given CPU tensors and NumPy arrays returns, on the device,
    exactly what it returns for device tensors; a CPU model given device tensors returns, on
    the CPU, exactly what it returns for CPU tensors."""
    cpu = torch.device("cpu")
    cpu_in = tuple(t[:16] for t in _tensors(population[2], cpu))
    dev_in = tuple(t.to(device) for t in cpu_in)
    np_in = tuple(t.numpy() for t in cpu_in)
    model = device_models[name]
    ref = _api_calls(model, *dev_in)
    for label, inputs in (("CPU tensors", cpu_in), ("NumPy arrays", np_in)):
        _same_outputs(_api_calls(model, *inputs), ref, lambda t: _on(t, device), label)
    model = cpu_models[name]
    ref = _api_calls(model, *cpu_in)
    _same_outputs(_api_calls(model, *dev_in), ref, lambda t: _on(t, cpu), "device tensors")


@pytest.mark.parametrize("name", HOST_FIT)
def test_fit_on_device_from_host_data(name, device_models, population, device):
    """A device model fitted from NumPy training data and CPU-tensor validation data: the
    same weights, bit for bit, as fitted from device tensors (``device_models``). (The inputs
    go through the base class's checks in every model; one model of each kind of training
    loop.)"""
    model = _fit(_make(name).to(device), population, None)
    _all_on(model, device, torch.float32)
    _same_state(model, device_models[name])


# ---------------------------------------------------------------------- 6. float64
@pytest.mark.parametrize("name", NAMES)
def test_float64_on_device(name, cpu_models, population, x_test, device):
    """A fitted model in float64 on the device against the same model in float64 on the CPU
    (1e-10, or Monte Carlo error), float32 inputs cast, distributions summing to one to 1e-10;
    and a float64 model built on the device trains there (2 epochs) with finite losses."""
    dev = copy.deepcopy(cpu_models[name]).to(device).double()
    cpu = copy.deepcopy(cpu_models[name]).double()
    _all_on(dev, device, torch.float64)
    _agree(name, dev, cpu, x_test)
    x = x_test.to(device)  # float32: cast to the model's dtype
    logp = dev.label_log_probs(x, seed=0)
    assert _on(logp, device) and logp.dtype == torch.float64
    ones = torch.ones(len(x), dtype=torch.float64, device=device)
    torch.testing.assert_close(logp.exp().sum(-1), ones, atol=1e-10, rtol=0)
    mean, sd = dev.item_moments(x, seed=0)
    assert mean.dtype == sd.dtype == torch.float64 and _on(mean, device)
    draws = dev.sample(x, 2, seed=0)
    assert _on(draws, device) and draws.dtype == torch.int64
    train, valid, _ = population
    fresh = _make(name).to(device, torch.float64)
    tr = [t.double() if t.is_floating_point() else t for t in _tensors(train, device)]
    fresh.fit(*tr, valid=_tensors(valid, device), **{**FIT, "epochs": 2})
    assert all(math.isfinite(r["train"]) and math.isfinite(r["valid"]) for r in fresh.history)
    _all_on(fresh, device, torch.float64)
    assert fresh.predict_proba(x, seed=0).dtype == torch.float64


# ---------------------------------------------------------------------- metrics
@pytest.mark.parametrize("name", ["integer_flow_panel", "softmax_flow", "deep_ensemble"])
def test_evaluate_takes_a_device_model(name, device_models, population, device):
    """:func:`probrec.flows.metrics.evaluate` of a device model on device tensors: finite
    metrics, its NLL the model's own ``nll`` (same seed, same device)."""
    model = device_models[name]
    x, labels, mask = _tensors(population[2], device)
    res = evaluate(model, x, labels, mask, seed=0, panels=16)
    assert all(np.isfinite(v) for k, v in res.items() if not k.startswith("kappa")), res
    assert res["nll"] == pytest.approx(model.nll(x, labels, mask, seed=0), rel=1e-5)
