"""Shared argument checks: each refuses bad input with an error naming the argument."""

from __future__ import annotations

import math

import numpy as np
import pytest

from probrec.checks import check_real


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


def _entry_points():
    """Public entry points whose real-valued arguments go through ``check_real``."""
    import torch

    from probrec.data import synthetic_annotations
    from probrec.data.fsmol import clean_chembl_assay_table
    from probrec.gp.exact import GPConfig
    from probrec.recsys.coldstart import HeadFineTune
    from probrec.recsys.transfer import kd_loss

    z = torch.zeros(3)
    return {
        "prior_scale": lambda v: GPConfig(prior_scale=v),
        "max_mol_weight": lambda v: clean_chembl_assay_table("missing.csv", max_mol_weight=v),
        "buffer_fraction": lambda v: clean_chembl_assay_table("missing.csv", buffer_fraction=v),
        "l2": lambda v: HeadFineTune("ft", (0, 2), torch.zeros(2), 0.0, l2=v),
        "temperature": lambda v: kd_loss(z, z, v),
        "cut_power": lambda v: synthetic_annotations(5, cut_power=v),
    }


@pytest.mark.parametrize("argument", sorted(_entry_points()))
@pytest.mark.parametrize("value", [math.nan, math.inf, -1.0])
def test_entry_points_refuse_non_finite_and_negative_reals(argument, value):
    """A NaN passed the former ``x <= 0`` / ``x < 0`` tests and reached the numerics."""
    with pytest.raises(ValueError, match=argument):
        _entry_points()[argument](value)
