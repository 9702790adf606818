"""Shared argument checks: each refuses bad input with an error naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from probrec.checks import as_bool_mask, as_float_tensor, check_real, host_array


@pytest.mark.parametrize("value", [0.0, 1, 2.5, np.float32(3.0), np.int64(4)])
def test_check_real_accepts_finite_numbers_at_or_above_the_minimum(value):
    out = check_real(value, "rate")
    assert isinstance(out, float) and out == float(value)


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, -1e-12])
def test_check_real_refuses_non_finite_or_small_values(value):
    with pytest.raises(ValueError, match="rate"):
        check_real(value, "rate")


@pytest.mark.parametrize("value", [True, "1", None, [1.0]])
def test_check_real_refuses_non_numbers(value):
    with pytest.raises(TypeError, match="rate must be a real number"):
        check_real(value, "rate")


def test_check_real_strict_minimum():
    assert check_real(0.5, "lr", minimum=0.5) == 0.5
    with pytest.raises(ValueError, match="lr must be > 0.5"):
        check_real(0.5, "lr", minimum=0.5, strict=True)
    assert check_real(0.6, "lr", minimum=0.5, strict=True) == 0.6


def test_host_array_reads_tensors_with_gradients_and_array_likes():
    t = torch.tensor([1.0, 2.5], requires_grad=True)  # np.asarray refuses it
    out = host_array(t)
    assert out.dtype == np.float64 and out.tolist() == [1.0, 2.5]
    assert host_array([1, 2], dtype=np.int64).tolist() == [1, 2]


@pytest.mark.parametrize("value", [np.float32(0.5), np.float64(0.5), np.array(0.5), 0.5])
def test_as_float_tensor_keeps_scalars_scalars(value):
    """NumPy scalars were made one-dimensional (GaussianMixture(means, np.float32(0.5)) then
    refused its scales as having 1 entry)."""
    t = as_float_tensor(value, "scales")
    assert t.shape == () and float(t) == 0.5
    assert as_float_tensor(np.ones((2, 3))[:, ::2], "x").shape == (2, 2)  # made contiguous


@pytest.mark.parametrize(
    "mask",
    [
        [True, False, True],
        [1, 0, 1],
        np.array([1.0, 0.0, 1.0]),
        torch.tensor([1.0, 0.0, 1.0], dtype=torch.float64),
        np.array([1, 0, 1], dtype=np.uint8),
    ],
)
def test_masks_of_bools_or_zero_one_numbers_read_alike(mask):
    assert torch.equal(as_bool_mask(mask), torch.tensor([True, False, True]))


@pytest.mark.parametrize(
    ("mask", "error"),
    [
        ([1.0, 0.5], ValueError),  # 0.5 would have been read as True
        ([2, 0], ValueError),
        (np.array([np.nan, 1.0]), ValueError),
        (["1", "0"], TypeError),
        (np.array([None, 1]), TypeError),
        (torch.tensor([1j, 0j]), TypeError),
    ],
)
def test_masks_with_other_values_are_refused_by_name(mask, error):
    with pytest.raises(error, match="seen must be bool"):
        as_bool_mask(mask, "seen")
