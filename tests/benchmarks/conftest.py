"""Shared pieces of the benchmark script tests."""

from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"
# the smallest sizes every script takes
TINY = ["--data", "none", "--threads", "1", "--repeats", "1", "--warmup", "0", "--dim", "32"]


@pytest.fixture
def bench(monkeypatch: pytest.MonkeyPatch):
    """Imports a benchmark script by name (the scripts import ``_common`` from their folder)."""
    import importlib

    monkeypatch.syspath_prepend(str(BENCH))
    return importlib.import_module
