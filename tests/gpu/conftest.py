"""Device fixture of the accelerator checks.

These tests run each capability on an accelerator and compare it with the same computation on
the CPU. They skip where torch sees no CUDA device (CI). ``PROBREC_TEST_DEVICE=cpu`` runs them
with the CPU standing in for the accelerator, which checks the tests themselves on a machine
without one (the comparisons are then CPU against CPU).
"""

from __future__ import annotations

import os

import pytest
import torch


@pytest.fixture(scope="session")
def device() -> torch.device:
    """The accelerator under test: ``$PROBREC_TEST_DEVICE``, default ``cuda``."""
    dev = torch.device(os.environ.get("PROBREC_TEST_DEVICE", "cuda"))
    if dev.type == "cuda" and not torch.cuda.is_available():
        pytest.skip("no CUDA device (set PROBREC_TEST_DEVICE=cpu to run these on the CPU)")
    return dev
