"""Shared pieces of the meta-learner tests: tiny meta-training settings and tasks."""

from __future__ import annotations

import pytest

from probrec.data import latent_feature_tasks

#: meta-training settings small enough for a few seconds on one CPU core
TINY_META = dict(
    n_steps=4,
    batch_size=4,
    support_size=16,
    query_size=32,
    hidden=(16,),
    eval_every=2,
    valid_support_size=16,
)


@pytest.fixture(scope="module")
def cls_tasks():
    """Eight classification tasks of 64 points with 8-d latent features."""
    return latent_feature_tasks(8, 64, dim=8, seed=0)
