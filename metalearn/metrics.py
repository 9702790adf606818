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

from probrec.reporting import json_safe, mean_and_se

__all__ = ["delta_auprc", "json_safe", "mean_and_se", "r2_os"]  # the last two from probrec


def delta_auprc(y_true, scores) -> float:
    """AUPRC (average precision) of ``scores`` minus the positive fraction of ``y_true``.

    Raises:
        ValueError: ``y_true`` is not 0 / 1 or has no positive or no negative, or ``scores``
            is not finite.
    """
    y = np.asarray(y_true, dtype=float).reshape(-1)
    s = np.asarray(scores, dtype=float).reshape(-1)
    if len(y) != len(s):
        raise ValueError(f"mismatched lengths: y_true has {len(y)}, scores has {len(s)}")
    if not np.isin(y, (0.0, 1.0)).all():  # e.g. -1 / +1 labels: the baseline would be wrong
        bad = np.unique(y[~np.isin(y, (0.0, 1.0))])[:5].tolist()
        raise ValueError(f"y_true must hold 0 / 1 labels, got values {bad}")
    if y.sum() == 0 or y.sum() == len(y):
        raise ValueError("delta-AUPRC needs at least one positive and one negative query label")
    if not np.isfinite(s).all():
        raise ValueError("scores contain NaN/inf")
    return float(average_precision_score(y, s) - y.mean())


def r2_os(y_true, y_pred, train_mean: float) -> float:
    """Out-of-sample R^2 with the training mean as the zero point.

    Raises:
        ValueError: mismatched lengths, or NaN / inf in ``y_true``, ``y_pred`` or
            ``train_mean``.
    """
    y = np.asarray(y_true, dtype=float).reshape(-1)
    p = np.asarray(y_pred, dtype=float).reshape(-1)
    if len(y) != len(p):
        raise ValueError(f"mismatched lengths: y_true has {len(y)}, y_pred has {len(p)}")
    for name, v in (("y_true", y), ("y_pred", p), ("train_mean", np.float64(train_mean))):
        if not np.isfinite(v).all():
            raise ValueError(f"{name} contains NaN/inf")
    sst = float(((y - train_mean) ** 2).sum())
    if sst == 0:
        raise ValueError("R^2_os is undefined when every query label equals the training mean")
    return 1.0 - float(((y - p) ** 2).sum()) / sst
