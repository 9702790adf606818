"""Summary helpers of :mod:`metalearn.metrics`: mean and s.e., and standard-JSON reports."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from metalearn.metrics import json_safe, mean_and_se


def test_mean_and_se_against_numpy_and_single_repeat_is_nan():
    v = np.array([0.1, 0.4, 0.2, 0.7])
    m, se = mean_and_se(v)
    assert m == pytest.approx(v.mean()) and se == pytest.approx(v.std(ddof=1) / 2)
    assert math.isnan(mean_and_se([0.3])[1])


def test_json_safe_writes_null_for_non_finite_numbers_and_keeps_the_rest():
    report = {"r2": [0.5, float("nan")], "nested": {"x": (float("inf"), 2, "a")}, "ok": 1.25}
    text = json.dumps(json_safe(report), allow_nan=False)  # raises on any NaN left
    assert json.loads(text) == {"r2": [0.5, None], "nested": {"x": [None, 2, "a"]}, "ok": 1.25}
