"""Flag options refuse non-bools: ``bool("no")`` is ``True``, so they switched features on."""

from __future__ import annotations

import numpy as np
import pytest

from probrec.backbone import HistoryEncoder, MLPEncoder
from probrec.backbone.gmp import GmPLinear
from probrec.checks import check_bool


def test_check_bool_takes_bools_and_names_the_option() -> None:
    assert check_bool(True, "flag") is True
    assert check_bool(np.bool_(False), "flag") is False
    for bad in ("no", "False", 1, 0.0, None):
        with pytest.raises(TypeError, match="flag must be a bool"):
            check_bool(bad, "flag")


@pytest.mark.parametrize("option", ["gmp", "bias"])
@pytest.mark.parametrize("value", ["no", "False", 1])
def test_mlp_encoder_flags_refuse_non_bools(option: str, value: object) -> None:
    with pytest.raises(TypeError, match=f"{option} must be a bool"):
        MLPEncoder(4, hidden=(3,), **{option: value})


def test_mlp_encoder_flags_still_work() -> None:
    enc = MLPEncoder(4, hidden=(3,), gmp=np.bool_(True), bias=False)
    assert isinstance(enc.net[0], GmPLinear) and enc.net[0].offset is None
    assert enc.gmp is True


@pytest.mark.parametrize("pooling", ["mean", "attention"])
def test_history_encoder_recency_bias_refuses_non_bools(pooling: str) -> None:
    with pytest.raises(TypeError, match="recency_bias must be a bool"):
        HistoryEncoder(8, pooling, recency_bias="no")
    assert HistoryEncoder(8, "attention", recency_bias=True).recency_bias is True
