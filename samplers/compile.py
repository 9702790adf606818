"""The compiled step path: ``torch.compile`` with a safe eager fallback.

Samplers run their pure transition functions through :class:`CompiledFn`. When compilation is
on and available, the first call compiles the function (``torch.compile``, default settings,
so a change of the number of chains triggers at most one recompilation with dynamic shapes);
if compiling or running the compiled code fails for any reason, a warning is issued once and the
function runs eagerly from then on, with identical semantics.

Compilation is available when ``torch.compile`` exists, the environment variable
``PROBREC_COMPILE`` is not ``0``, and, for CPU tensors, a C++ compiler is on the ``PATH``
(TorchInductor generates C++).
"""

from __future__ import annotations

import os
import shutil
import warnings
from collections.abc import Callable
from typing import Any

import torch

__all__ = ["CompiledFn", "compile_available"]


def compile_available() -> bool:
    """Whether ``torch.compile`` can be used here (see the module docstring)."""
    if os.environ.get("PROBREC_COMPILE", "1").strip().lower() in {"0", "false", "no", "off"}:
        return False
    if not hasattr(torch, "compile"):
        return False
    cxx = os.environ.get("CXX")
    return any(shutil.which(c) for c in ([cxx] if cxx else []) + ["g++", "c++", "clang++"])


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""


class CompiledFn:
    """Calls ``fn`` compiled when ``enabled`` (and compilation works), else eagerly.

    Args:
        fn: a pure tensor function.

    Attributes:
        enabled: whether to try the compiled path.
        failed: set after a compilation failure (the eager path is used from then on).
    """

    def __init__(self, fn: Callable[..., Any]) -> None:
        self.fn = fn
        self.enabled = False
        self.failed = False
        self._compiled: Callable[..., Any] | None = None

    @property
    def active(self) -> bool:
        """Whether the next call takes the compiled path."""
        return self.enabled and not self.failed

    def __call__(self, *args: Any) -> Any:
        if self.enabled and not self.failed:
            if self._compiled is None:
                self._compiled = torch.compile(self.fn)
            try:
                return self._compiled(*args)
            except Exception as exc:  # noqa: BLE001 - any compiler failure falls back to eager
                self.failed = True
                warnings.warn(
                    f"torch.compile of {getattr(self.fn, '__name__', 'step')} failed "
                    f"({type(exc).__name__}: {_first_line(exc)}); "
                    "running the eager step instead",
                    RuntimeWarning,
                    stacklevel=2,
                )
        return self.fn(*args)
