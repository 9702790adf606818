"""The shared utility layer against independent references: exact values, NumPy's and
Python's own generators, and the arguments the checks must name."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from probrec.checks import as_float_tensor, check_real, host_array


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float8_e4m3fn, torch.float8_e5m2])
def test_host_array_reads_floating_dtypes_numpy_lacks_exactly(dtype):
    """bfloat16 and float8 tensors raised torch's 'Got unsupported ScalarType BFloat16', so a
    bfloat16 model's predictions failed r2_os as 'not an array of numbers'."""
    t = torch.tensor([0.15625, -2.5, 448.0, 0.0]).to(dtype)
    exact = [float(v) for v in t.float()]  # each value of the narrow dtype, exactly
    out = host_array(t.requires_grad_(False))
    assert out.dtype == np.float64 and out.tolist() == exact
    assert host_array(t, dtype=np.float32).tolist() == exact


def test_metrics_take_bfloat16_predictions_as_their_float32_values():
    from metalearn.metrics import r2_os

    y = torch.tensor([0.1, 0.5, 0.9, 1.3])
    p = torch.tensor([0.2, 0.4, 1.0, 1.2]).bfloat16()
    assert r2_os(y, p, 0.0) == r2_os(y, p.float(), 0.0)


@pytest.mark.parametrize(
    "value",
    [
        np.array([1.0 + 2.0j, 3.0]),
        np.array([1.0 + 2.0j], dtype=np.clongdouble),
        torch.tensor([1.0 + 2.0j, 3.0]),
        [1.0, 2j],
    ],
)
def test_as_float_tensor_refuses_complex_values_by_name(value):
    """Complex input was cast to real: [1+2j, 3] became [1., 3.] (a tensor without even
    NumPy's ComplexWarning), the imaginary parts dropped silently."""
    with pytest.raises(TypeError, match="scales must be real, got complex"):
        as_float_tensor(value, "scales")


def test_as_float_tensor_reads_long_double_as_float64():
    """torch has no long double: 'can't convert np.ndarray of type numpy.longdouble'."""
    x = np.array([0.1, 2.5], dtype=np.longdouble)
    t = as_float_tensor(x, "x")
    assert t.dtype == torch.float64 and t.tolist() == x.astype(np.float64).tolist()
    assert as_float_tensor(x, "x", dtype=torch.float32).dtype == torch.float32


@pytest.mark.parametrize(
    "value", [10**400, -(10**400), np.longdouble("1e4000")], ids=["1e400", "-1e400", "ld1e4000"]
)
def test_check_real_refuses_numbers_beyond_float_range_by_name(value):
    """An int beyond float's range raised NumPy's 'ufunc isfinite not supported' TypeError
    naming nothing, and a long double of 1e4000 passed as ``inf``."""
    with pytest.raises(ValueError, match="lr must be finite"):
        check_real(value, "lr", minimum=-np.inf)


def test_check_real_keeps_large_finite_values():
    assert check_real(2**1000, "lr") == 2.0**1000
    assert check_real(np.longdouble("1e300"), "lr") == 1e300


def _global_draws(seed) -> tuple[list[float], float, list[float]]:
    from probrec.seeding import seed_everything

    seed_everything(seed)
    return np.random.rand(4).tolist(), random.random(), torch.rand(4).tolist()


def test_seed_everything_seeds_each_global_generator_as_its_own_seeding_does():
    np.random.seed(12345)
    random.seed(12345)
    torch.manual_seed(12345)
    ref = np.random.rand(4).tolist(), random.random(), torch.rand(4).tolist()
    assert _global_draws(12345) == ref  # seeds below 2**32: unchanged
    assert _global_draws(np.int64(12345)) == ref  # random.seed refused NumPy integers


def test_seed_everything_gives_distinct_seeds_distinct_numpy_streams():
    """np.random.seed(seed % 2**32) gave seeds 0 and 2**32 the same NumPy stream."""
    draws = [_global_draws(s)[0] for s in (0, 2**32, 2**32 + 1, 2**62 + 7)]
    assert all(a != b for i, a in enumerate(draws) for b in draws[i + 1 :])
    assert _global_draws(2**62 + 7) == _global_draws(2**62 + 7)


@pytest.mark.parametrize(
    ("seed", "error"), [(1.5, TypeError), (-1, ValueError), (2**64, ValueError)]
)
def test_seed_everything_names_a_bad_seed(seed, error):
    with pytest.raises(error, match="seed must"):
        _global_draws(seed)


@pytest.mark.parametrize(
    ("value", "on"),
    [("0", False), ("false", False), ("False", False), ("no", False), ("OFF", False),
     (" 0 ", False), ("", False), ("1", True), ("true", True), ("yes", True)],
)  # fmt: skip
def test_progress_environment_variable_reads_off_words_in_any_case(monkeypatch, value, on):
    """PROBREC_PROGRESS=False (or no, off, OFF) switched the bars on: only '0', 'false' and ''
    were read as off."""
    from probrec.progress import progress_enabled

    monkeypatch.setenv("PROBREC_PROGRESS", value)
    assert progress_enabled(None) is on
    assert progress_enabled(True) is True and progress_enabled(False) is False
