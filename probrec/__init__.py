"""probrec: Bayesian and meta-learning models that learn from few examples.

The shared core of the distribution: tasks and loaders (:mod:`probrec.data`), feature
backbones (:mod:`probrec.backbone`) and Gaussian-process heads (:mod:`probrec.gp`).
Meta-learners live in the sibling package :mod:`metalearn`, samplers in :mod:`samplers`.
Subpackages are imported lazily so that ``import probrec`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"
__all__ = ["__version__", "data", "backbone", "gp"]


def __getattr__(name: str) -> Any:
    if name in {"data", "backbone", "gp", "flows", "recsys"}:
        return importlib.import_module(f"probrec.{name}")
    raise AttributeError(f"module 'probrec' has no attribute {name!r}")
