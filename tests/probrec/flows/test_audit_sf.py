"""Argument checks of the annotator flows found missing by the samplers / flows / recsys audit
(F5, F6, F10, F11)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.flows import (
    AnnotatorModel,
    ConditionalIntegerFlow,
    ConditionalSoftmaxFlow,
    load_model,
)
from probrec.flows.baselines import DeepEnsemble, MCDropoutHead


@pytest.mark.parametrize(
    "kwargs",
    [
        {"n_bins": np.int64(4)},
        {"n_layers": np.int32(2)},
        {"item_latent": np.int64(1)},
        {"item_latent": np.int64(1), "quadrature": np.int16(8)},
    ],
)
def test_integer_flow_takes_numpy_integers(kwargs):
    # "n_bins must be an int >= 2, got np.int64(4)"
    flow = ConditionalIntegerFlow(4, hidden=(8,), **kwargs)
    for name, value in kwargs.items():
        assert getattr(flow, name) == value and type(getattr(flow, name)) is int
        assert type(flow._config[name]) is int


def test_softmax_flow_takes_numpy_integers():
    flow = ConditionalSoftmaxFlow(4, hidden=(8,), n_layers=np.int64(2))
    assert len(flow.couplings) == 2 and type(flow._config["n_layers"]) is int


@pytest.mark.parametrize(
    ("kwargs", "error", "name"),
    [
        ({"n_bins": 1}, ValueError, "n_bins"),
        ({"n_bins": 2.5}, TypeError, "n_bins"),
        ({"n_bins": True}, TypeError, "n_bins"),
        ({"n_layers": -1}, ValueError, "n_layers"),
        ({"item_latent": -1}, ValueError, "item_latent"),
        ({"item_latent": 1, "quadrature": -1}, ValueError, "quadrature"),
        ({"item_latent": 1, "quadrature": "8"}, TypeError, "quadrature"),
    ],
)
def test_integer_flow_counts_keep_their_ranges(kwargs, error, name):
    with pytest.raises(error, match=name):
        ConditionalIntegerFlow(4, **kwargs)


def test_softmax_flow_n_layers_keeps_its_range():
    with pytest.raises(ValueError, match="n_layers"):
        ConditionalSoftmaxFlow(4, n_layers=-1)
    with pytest.raises(TypeError, match="n_layers"):
        ConditionalSoftmaxFlow(4, n_layers=1.5)


def test_integer_flow_quadrature_needs_an_item_latent():
    # quadrature=32 without an item latent was dropped silently
    with pytest.raises(ValueError, match="quadrature"):
        ConditionalIntegerFlow(4, quadrature=32)
    assert ConditionalIntegerFlow(4, hidden=(8,), item_latent=1, quadrature=32).quadrature == 32
    doc = ConditionalIntegerFlow.__doc__
    assert "quadrature:" in doc and "latent_lr:" in doc


def test_a_file_saved_with_a_dropped_quadrature_still_loads(tmp_path):
    flow = ConditionalIntegerFlow(4, hidden=(8,))
    flow.fitted = True  # initial (or hand-set) weights, no fit
    path = tmp_path / "flow.pt"
    flow.save(path)
    blob = torch.load(path, weights_only=False)
    blob["config"]["quadrature"] = 32  # what older versions stored
    torch.save(blob, path)
    again = load_model(path)
    assert again.quadrature == 0
    x = torch.randn(5, 4, generator=torch.Generator().manual_seed(0))
    torch.testing.assert_close(again.predict_proba(x), flow.eval().predict_proba(x))


def _data(n: int = 20):
    rng = np.random.default_rng(0)
    return rng.normal(size=(n, 4)).astype("float32"), rng.integers(1, 6, (n, 3))


def test_fit_input_dropout_must_be_a_number():
    x, labels = _data()
    flow = ConditionalIntegerFlow(4, hidden=(8,))
    with pytest.raises(TypeError, match="input_dropout"):  # '<=' not supported ... 'str'
        flow.fit(x, labels, input_dropout="0.2", epochs=1)
    for bad in (-0.1, 1.0, float("nan")):
        with pytest.raises(ValueError, match="input_dropout"):
            flow.fit(x, labels, input_dropout=bad, epochs=1)


def test_baseline_dropout_must_be_a_number():
    with pytest.raises(TypeError, match="dropout"):
        MCDropoutHead(4, dropout="0.2")
    with pytest.raises(TypeError, match="dropout"):
        DeepEnsemble(4, dropout="0.2")
    with pytest.raises(ValueError, match="dropout"):
        MCDropoutHead(4, dropout=0.0)
    with pytest.raises(ValueError, match="dropout"):
        DeepEnsemble(4, dropout=1.0)


@pytest.mark.parametrize(
    "content",
    [b"print('a python file')\n", b"", bytes(range(256)) * 4, b"PK\x03\x04 not a zip"],
)
def test_load_refuses_files_that_are_not_torch_pickles_with_a_value_error(tmp_path, content):
    # UnpicklingError: could not find MARK
    path = tmp_path / "not_a_model.py"
    path.write_bytes(content)
    with pytest.raises(ValueError, match="not a saved probrec.flows model") as info:
        load_model(path)
    assert info.value.__cause__ is not None
    with pytest.raises(ValueError, match="not a saved probrec.flows model"):
        AnnotatorModel.load(path)


def test_load_of_a_missing_file_says_so(tmp_path):
    with pytest.raises(FileNotFoundError):
        load_model(tmp_path / "missing.pt")
