"""Backbone tests run single-threaded: their tensors are small, and on a busy 2-core machine
torch's intra-op threads spin against each other (a 50-step training loop measured 0.10 s per
step with 2 threads under load, 0.004 s with 1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def _single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
