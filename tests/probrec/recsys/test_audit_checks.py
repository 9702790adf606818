"""Argument checks found missing by the samplers / flows / recsys audit (F1-F3, F7, F9)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from probrec.recsys import HeadFineTune, LoopFMConfig, TrainSpec, item_popularity, robust_std


@pytest.mark.parametrize(
    ("weight", "bias", "name"),
    [
        (torch.zeros(2), float("nan"), "bias"),
        (torch.zeros(2), float("inf"), "bias"),
        (torch.tensor([float("nan"), 0.0]), 0.0, "weight"),
        (torch.tensor([0.0, float("-inf")]), 0.0, "weight"),
    ],
)
def test_head_finetune_refuses_non_finite_trained_head(weight, bias, name):
    # gave NaN predictions after adapt
    with pytest.raises(ValueError, match=name):
        HeadFineTune("h", (0, 2), weight, bias)


def test_head_finetune_refuses_an_empty_support_set_as_documented():
    head = HeadFineTune("h", (0, 2), torch.zeros(2), 0.0)
    assert "empty one raises" in HeadFineTune.__doc__
    with pytest.raises(ValueError, match="empty"):
        head.adapt(np.zeros((0, 2)), np.zeros(0))


@pytest.mark.parametrize("time", [[np.nan, 1.0], [np.inf, 1.0]])
def test_item_popularity_refuses_non_finite_times(time):
    # a NaN time sorts last and was scored on later events
    with pytest.raises(ValueError, match="time"):
        item_popularity(np.array([1, 1]), np.array(time), np.array([0, 1]))


@pytest.mark.parametrize("label", [[3, 1], [np.nan, 0], [0.5, 1]])
def test_item_popularity_refuses_labels_other_than_0_1(label):
    # a label of 3 gave a "rate" above 1, NaN was counted as a positive
    with pytest.raises(ValueError, match="label"):
        item_popularity(np.array([1, 1]), np.array([0, 1]), np.array(label))


def test_item_popularity_takes_bool_and_integer_times():
    got = item_popularity(np.array([1, 1]), np.array([0, 1]), np.array([True, False]))
    np.testing.assert_allclose(got, [0.5, 2 / 3])


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_robust_std_refuses_non_finite_values(bad):
    values = torch.tensor([[bad, 1.0], [0.0, 2.0], [1.0, 3.0]])
    with pytest.raises(ValueError, match="values"):  # returned NaN, documented positive
        robust_std(values)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"kd_weight": 1.5}, "kd_weight"),
        ({"kd_weight": -0.1}, "kd_weight"),
        ({"kd_weight": float("nan")}, "kd_weight"),
        ({"temperature": 0.0}, "temperature"),
        ({"temperature": -1.0}, "temperature"),
        ({"aux_weight": -1.0}, "aux_weight"),
        ({"aux_weight": float("nan")}, "aux_weight"),
    ],
)
def test_loopfm_config_checks_loss_settings_when_built(kwargs, name):
    # failed only after the FM and the first VM had trained
    with pytest.raises(ValueError, match=name):
        LoopFMConfig(**kwargs)
    with pytest.raises(ValueError, match=name):
        TrainSpec(**kwargs)


@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -1.0}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_train_spec_checks_the_optimiser_settings(kwargs, name):
    with pytest.raises(ValueError, match=name):
        TrainSpec(**kwargs)


def test_settings_type_errors_name_the_field():
    with pytest.raises(TypeError, match="kd_weight"):
        LoopFMConfig(kd_weight="0.5")
    with pytest.raises(TypeError, match="lr"):
        TrainSpec(lr="1e-3")
    assert TrainSpec(kd_weight=1, temperature=2, aux_weight=0).kd_weight == 1
