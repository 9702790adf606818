"""Few-shot metrics of the FS-Mol protocol (Stanley et al., NeurIPS 2021).

* delta-AUPRC: area under the precision-recall curve minus the query set's fraction of
  positives (the AUPRC of a random classifier), so 0 is chance and the number is comparable
  across tasks with different class balance.
* out-of-sample R^2: ``1 - SSE / SST`` where SST uses the *support* (training) mean as the
  baseline prediction, so predicting the training mean scores 0.
"""

from __future__ import annotations

import numpy as np
from sklearn.metrics import average_precision_score

from probrec.checks import host_array
from probrec.reporting import json_safe, mean_and_se

__all__ = ["delta_auprc", "json_safe", "mean_and_se", "r2_os"]  # the last two from probrec


def _vector(a, name: str) -> np.ndarray:
    """``a`` (array-like or tensor on any device) as a non-empty 1-d float array; a column or
    row vector (``[n, 1]``, ``[1, n]``) is flattened, a matrix refused (it was flattened
    silently, so a ``[2, 3]`` prediction matched a ``[6]`` label vector)."""
    try:
        arr = host_array(a)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{name} must be an array of numbers: {e}") from None
    if sum(d > 1 for d in arr.shape) > 1:
        raise ValueError(f"{name} must be 1-d, got shape {arr.shape}")
    arr = arr.reshape(-1)
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    return arr


def delta_auprc(y_true, scores) -> float:
    """AUPRC (average precision) of ``scores`` minus the positive fraction of ``y_true``.

    AUPRC is scikit-learn's ``average_precision_score`` (the step-wise sum ``sum_n (R_n -
    R_{n-1}) P_n`` over distinct score thresholds, tied scores forming one threshold), as in
    FS-Mol's ``compute_binary_task_metrics``. A query set of one class is refused: its
    delta-AUPRC carries no information about the ranking.

    Raises:
        ValueError: ``y_true`` or ``scores`` is empty or not 1-d, their lengths differ,
            ``y_true`` is not 0 / 1 or has no positive or no negative, or ``scores`` is not
            finite.
    """
    y = _vector(y_true, "y_true")
    s = _vector(scores, "scores")
    if len(y) != len(s):
        raise ValueError(f"mismatched lengths: y_true has {len(y)}, scores has {len(s)}")
    if not np.isin(y, (0.0, 1.0)).all():  # e.g. -1 / +1 labels: the baseline would be wrong
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5].tolist()
        raise ValueError(f"y_true must hold 0 / 1 labels, got values {bad}")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError(
            "y_true: delta-AUPRC needs at least one positive and one negative query label, "
            f"got {int(y.sum())} positive(s) of {len(y)}"
        )
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN/inf")
    return float(average_precision_score(y, s) - y.mean())


def r2_os(y_true, y_pred, train_mean: float) -> float:
    """Out-of-sample R^2 with the training mean as the zero point.

    ``1 - sum_i (y_i - p_i)^2 / sum_i (y_i - train_mean)^2`` (FS-Mol's ``r2_score_os``);
    with ``train_mean`` the query mean it is scikit-learn's ``r2_score``.

    Raises:
        ValueError: ``y_true`` or ``y_pred`` empty or not 1-d, mismatched lengths,
            ``train_mean`` not one number, NaN / inf in any of them, or every label equal to
            ``train_mean`` (R^2_os undefined).
    """
    y = _vector(y_true, "y_true")
    p = _vector(y_pred, "y_pred")
    tm = host_array(train_mean) if not isinstance(train_mean, (str, bytes)) else None
    if tm is None or tm.size != 1:
        raise ValueError(f"train_mean must be one number, got {train_mean!r}")
    train_mean = float(tm.reshape(-1)[0])
    if len(y) != len(p):
        raise ValueError(f"mismatched lengths: y_true has {len(y)}, y_pred has {len(p)}")
    for name, v in (("y_true", y), ("y_pred", p), ("train_mean", np.float64(train_mean))):
        if not np.isfinite(v).all():
            raise ValueError(f"{name} contains NaN/inf")
    sst = float(((y - train_mean) ** 2).sum())
    if sst == 0:
        raise ValueError("y_true: R^2_os is undefined when every query label equals train_mean")
    return 1.0 - float(((y - p) ** 2).sum()) / sst
