"""Progress bars: tqdm everywhere, switched off with ``progress=False``."""

from __future__ import annotations

import os
import sys
from collections.abc import Iterable
from typing import Any, TypeVar

from tqdm.auto import tqdm

T = TypeVar("T")


def progress_enabled(progress: bool | None) -> bool:
    """``None`` means: as ``PROBREC_PROGRESS`` says where it is set (off for ``0``, ``false``,
    ``no``, ``off`` in any case, or empty; on otherwise, e.g. ``1``), else on when stderr is a
    terminal."""
    if progress is not None:
        return bool(progress)
    if os.environ.get("PROBREC_PROGRESS") is not None:
        return os.environ["PROBREC_PROGRESS"].strip().lower() not in _OFF
    return sys.stderr.isatty()


_OFF = frozenset({"0", "false", "no", "off", ""})


def track(iterable: Iterable[T] | None = None, *, progress: bool | None = None, **kwargs: Any):
    """Wraps ``iterable`` in a tqdm bar unless progress is disabled (then a silent bar)."""
    return tqdm(iterable, disable=not progress_enabled(progress), dynamic_ncols=True, **kwargs)
