"""Few-shot metrics of the FS-Mol protocol (Stanley et al., NeurIPS 2021).

* delta-AUPRC: area under the precision-recall curve minus the query set's fraction of
  positives (the AUPRC of a random classifier), so 0 is chance and the number is comparable
  across tasks with different class balance.
* out-of-sample R^2: ``1 - SSE / SST`` where SST uses the *support* (training) mean as the
  baseline prediction, so predicting the training mean scores 0.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
from sklearn.metrics import average_precision_score


def delta_auprc(y_true, scores) -> float:
    """AUPRC (average precision) of ``scores`` minus the positive fraction of ``y_true``.

    Raises:
        ValueError: ``y_true`` has no positive or no negative, or ``scores`` is not finite.
    """
    y = np.asarray(y_true, dtype=float).reshape(-1)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"mismatched lengths: y_true has {len(y)}, scores has {len(s)}")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("delta-AUPRC needs at least one positive and one negative query label")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN/inf")
    return float(average_precision_score(y, s) - y.mean())


def r2_os(y_true, y_pred, train_mean: float) -> float:
    """Out-of-sample R^2 with the training mean as the zero point."""
    y = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(y_pred, dtype=float).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"mismatched lengths: y_true has {len(y)}, y_pred has {len(p)}")
    if not np.isfinite(p).all():
        raise ValueError("y_pred contains NaN/inf")
    sst = float(((y - train_mean) ** 2).sum())
    if sst == 0:
        raise ValueError("R^2_os is undefined when every query label equals the training mean")
    return 1.0 - float(((y - p) ** 2).sum()) / sst


def json_safe(obj: Any) -> Any:
    """``obj`` with every non-finite float (e.g. the ``nan`` s.e. of a single repeat) replaced by
    ``None``, recursively through dicts, lists and tuples, so that ``json.dumps`` writes
    standard JSON (``null``) instead of ``NaN``."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: json_safe(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [json_safe(v) for v in obj]
    return obj


def mean_and_se(values) -> tuple[float, float]:
    """Mean and standard error of the mean (``nan`` SE for fewer than two values)."""
    v = np.asarray(values, dtype=float)
    if v.size == 0:
        return float("nan"), float("nan")
    se = float(v.std(ddof=1) / np.sqrt(v.size)) if v.size > 1 else float("nan")
    return float(v.mean()), se
