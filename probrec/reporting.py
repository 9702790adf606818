"""Summaries for reports: the mean and standard error over repeats, and JSON that strict
parsers read.

Every results table of the library, its examples and benchmarks quotes ``mean +- s.e.`` over
seeds or repeats; with a single repeat the standard error is undefined and is ``nan`` here
(never ``0``, which would claim a certainty the run does not have). :func:`json_safe` turns
such values into JSON ``null`` (Python's ``json`` would write ``NaN``, which is not JSON and
which ``jq``, JavaScript and most other parsers refuse).
"""

from __future__ import annotations

import math
import sys
from collections.abc import Iterable
from typing import Any

import numpy as np

__all__ = ["format_mean_se", "json_safe", "mean_and_se", "mean_se_summary"]


def _float_array(values: Any) -> np.ndarray:
    """``values`` (an array, a tensor on any device or any iterable of numbers) as float64."""
    torch = sys.modules.get("torch")  # (no tensor exists unless torch was imported)
    if torch is not None and isinstance(values, torch.Tensor):
        # (list() of a tensor gives 0-d tensors, which NumPy reads only on the CPU without
        # gradients, and not in bfloat16; a 0-d tensor is not iterable at all)
        return values.detach().cpu().double().numpy()
    return np.asarray(list(values) if not isinstance(values, np.ndarray) else values, dtype=float)


def mean_and_se(values: Iterable[float] | np.ndarray) -> tuple[float, float]:
    """Mean and standard error of the mean, ``std(ddof=1) / sqrt(n)``.

    Args:
        values: ``n`` numbers (a list, an array or a tensor on any device).

    Returns:
        ``(mean, se)``; ``se`` is ``nan`` for a single value, both are ``nan`` for none.
    """
    v = _float_array(values)
    if v.size == 0:
        return math.nan, math.nan
    se = float(v.std(ddof=1) / math.sqrt(v.size)) if v.size > 1 else math.nan
    return float(v.mean()), se


def mean_se_summary(values: Iterable[float] | np.ndarray) -> dict[str, float | int]:
    """``{"mean", "se", "n"}`` of ``values`` (see :func:`mean_and_se`)."""
    v = _float_array(values)
    mean, se = mean_and_se(v)
    return {"mean": mean, "se": se, "n": int(v.size)}


def format_mean_se(
    stat: dict[str, float], fmt: str = ".3f", *, signed: bool = False, sep: str = " +- "
) -> str:
    """``"mean +- se"`` of a :func:`mean_se_summary` entry, or the mean alone where the
    standard error is undefined (one repeat).

    Args:
        stat: ``{"mean", "se", ...}``.
        fmt: format of both numbers (e.g. ``".4f"``).
        signed: show the mean's sign (differences).
        sep: text between the two.
    """
    mean = format(stat["mean"], ("+" if signed else "") + fmt)
    se = stat["se"]
    return mean if se is None or not math.isfinite(se) else f"{mean}{sep}{format(se, fmt)}"


def json_safe(obj: Any) -> Any:
    """``obj`` in a form ``json.dumps`` writes as standard JSON.

    Recursively through dicts (keys become strings), lists and tuples: tensors and NumPy
    arrays become lists, NumPy scalars Python numbers, and every non-finite float (e.g. the
    ``nan`` s.e. of a single repeat) ``None``.
    """
    if isinstance(obj, dict):
        return {k if isinstance(k, str) else str(k): json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    torch = sys.modules.get("torch")  # (no tensor exists unless torch was imported)
    if torch is not None and isinstance(obj, torch.Tensor):
        return json_safe(obj.detach().cpu().tolist())
    if isinstance(obj, np.ndarray):
        return json_safe(obj.tolist())
    if isinstance(obj, (float, np.floating)):
        f = float(obj)
        return f if math.isfinite(f) else None
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj
