"""Report helpers of :mod:`probrec.reporting`: mean and s.e., their text form, and standard-JSON
reports (re-exported by :mod:`metalearn.metrics`)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch

import metalearn.metrics
from probrec.reporting import format_mean_se, json_safe, mean_and_se, mean_se_summary


def test_mean_and_se_against_numpy_and_single_repeat_is_nan():
    v = np.array([0.1, 0.4, 0.2, 0.7])
    m, se = mean_and_se(v)
    assert m == pytest.approx(v.mean()) and se == pytest.approx(v.std(ddof=1) / 2)
    assert mean_and_se(iter([0.1, 0.4, 0.2, 0.7])) == (m, se)  # any iterable
    assert math.isnan(mean_and_se([0.3])[1]) and mean_and_se([0.3])[0] == 0.3
    assert all(math.isnan(x) for x in mean_and_se([]))
    assert mean_se_summary(v) == {"mean": m, "se": se, "n": 4}
    assert metalearn.metrics.mean_and_se is mean_and_se
    assert metalearn.metrics.json_safe is json_safe


def test_json_safe_writes_null_for_non_finite_numbers_and_keeps_the_rest():
    report = {"r2": [0.5, float("nan")], "nested": {"x": (float("inf"), 2, "a")}, "ok": 1.25}
    text = json.dumps(json_safe(report), allow_nan=False)  # raises on any NaN left
    assert json.loads(text) == {"r2": [0.5, None], "nested": {"x": [None, 2, "a"]}, "ok": 1.25}


def test_json_safe_converts_tensors_numpy_values_and_keys():
    report = {
        3: torch.tensor([1.0, float("nan")]),
        ("a", 1): np.array([[np.inf, 2.5]], dtype=np.float32),
        "scalars": [np.float32(0.5), np.int64(7), np.bool_(True), np.float64("nan")],
    }
    text = json.dumps(json_safe(report), allow_nan=False)
    assert json.loads(text) == {
        "3": [1.0, None],
        "('a', 1)": [[None, 2.5]],
        "scalars": [0.5, 7, True, None],
    }


def test_format_mean_se_leaves_out_an_undefined_standard_error():
    assert format_mean_se({"mean": 0.12345, "se": 0.0123}) == "0.123 +- 0.012"
    assert format_mean_se({"mean": 0.5, "se": 0.01}, ".2f", signed=True, sep=" ± ") == (
        "+0.50 ± 0.01"
    )
    assert format_mean_se(mean_se_summary([0.25]), ".2f") == "0.25"
    assert format_mean_se({"mean": -0.5, "se": None}, ".1f", signed=True) == "-0.5"


@pytest.mark.parametrize(
    "values",
    [
        torch.tensor([0.5, 1.25, 3.0], requires_grad=True),
        torch.tensor([0.5, 1.25, 3.0], dtype=torch.bfloat16),
        torch.tensor([0.5, 1.25, 3.0], dtype=torch.float64),
    ],
)
def test_mean_and_se_of_tensors_equals_scipy_on_their_values(values):
    """A tensor with gradients (RuntimeError 'Can't call numpy() on Tensor that requires
    grad'), a bfloat16 one ('Got unsupported ScalarType BFloat16') and a 0-d one ('iteration
    over a 0-d tensor') failed; tensors on a GPU failed alike."""
    from scipy import stats

    ref = [0.5, 1.25, 3.0]  # exact in every dtype above
    assert mean_and_se(values) == pytest.approx((np.mean(ref), stats.sem(ref)), rel=1e-15)
    assert mean_se_summary(values)["n"] == 3
    m, se = mean_and_se(torch.tensor(2.5))
    assert m == 2.5 and math.isnan(se)
