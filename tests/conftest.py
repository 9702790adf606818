"""Shared fixtures: the real-data root (tests needing it skip when it is absent)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# small tensors on a shared 2-core machine: one thread avoids oversubscription stalls
torch.set_num_threads(1)

REPO = Path(__file__).resolve().parents[1]
DATA = Path(os.environ.get("PROBREC_DATA", REPO.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def shared_data() -> Path:
    """``../shared/data``; skips the test when it is not there."""
    if not DATA.is_dir():
        pytest.skip(f"real data folder {DATA} is absent")
    return DATA


@pytest.fixture(autouse=True, scope="session")
def _isolated_cache(tmp_path_factory: pytest.TempPathFactory) -> None:
    """Keeps feature caches of the test run out of the user's home."""
    os.environ.setdefault("PROBREC_CACHE", str(tmp_path_factory.mktemp("probrec-cache")))
