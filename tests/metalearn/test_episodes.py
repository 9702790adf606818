"""Meta-batches: eligibility of tasks and the stacked tensors against the episodes."""

from __future__ import annotations

import numpy as np
import torch

from metalearn.episodes import eligible_tasks, sample_meta_batch
from probrec.data import Task, sample_episode


def test_eligible_tasks_leave_both_classes_for_the_query():
    x = np.zeros((40, 2))
    two = Task(x, [1, 1] + [0] * 38, "classification", "two")  # both positives go to support
    five = Task(x, [1] * 5 + [0] * 35, "classification", "five")
    assert [t.name for t in eligible_tasks([two, five], 32)] == ["five"]
    for seed in range(20):  # the promise the check keeps
        ep = sample_episode(five, 32, seed=seed)
        assert 0 < ep.query_y.sum() < len(ep.query_y)
    assert [t.name for t in eligible_tasks([two], 8)] == ["two"]  # 40 * 2 / 8 rounds to 0 -> 1


def test_a_float64_meta_batch_holds_the_features_exactly():
    rng = np.random.default_rng(0)
    x = 1.2e4 + rng.random((30, 3))  # float32 rounds these by ~1e-3
    task = Task(x, rng.normal(size=30), "regression", "t")
    batch = sample_meta_batch([task], 1, 10, 8, np.random.default_rng(1), dtype=torch.float64)
    rows = {tuple(r) for r in x.tolist()}
    for part in (batch.support_x[0], batch.query_x[0][batch.query_mask[0]]):
        assert all(tuple(r) in rows for r in part.tolist())  # exact rows of the task
