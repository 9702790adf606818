"""Shared data for the annotator-simulation tests (small tensors: one thread)."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import pytest
import torch

from probrec.data import synthetic_annotations


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="session")
def population():
    """A small seeded annotator population (ordinal 1-5) split by item."""
    data = synthetic_annotations(240, dim=6, per_item=(4, 8), seed=11)
    return data.split_items((0.6, 0.2, 0.2), seed=0)


@pytest.fixture(scope="session")
def bimodal():
    """Items whose annotators split between the two ends of the scale (features are noise)."""
    rng = np.random.default_rng(5)
    n, m = 200, 10
    p = np.array([0.45, 0.05, 0.05, 0.05, 0.40])
    labels = rng.choice(np.arange(1, 6), size=(n, m), p=p)
    x = rng.standard_normal((n, 3)).astype(np.float32)
    return x, labels, p
