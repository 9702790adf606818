"""Argument types for the command-line scripts (``probrec``, ``examples/``, ``benchmarks/``).

Each factory returns a callable for ``argparse``'s ``type=``: it converts the option's text or
raises ``argparse.ArgumentTypeError``, which argparse reports as ``argument --name: ...`` with
the usage line and exit status 2 -- before any data is loaded or any model is trained, and
without a traceback. Comma-separated lists are checked element by element (``--sizes 16,abc``
was an ``int()`` error after meta-training; ``--seeds 0,0`` counted one seed twice).
"""

from __future__ import annotations

import argparse
import json
import math
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = [
    "HelpFormatter",
    "choice_list",
    "existing_path",
    "float_list",
    "fraction",
    "int_list",
    "json_object",
    "json_objects_by_name",
    "number",
    "path_or_word",
    "seed_list",
    "single_seed",
    "torch_device",
    "whole",
]


def _fail(message: str) -> argparse.ArgumentTypeError:
    return argparse.ArgumentTypeError(message)


def whole(minimum: int = 1) -> Callable[[str], int]:
    """An integer ``>= minimum`` (default: a positive integer)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise _fail(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise _fail(f"must be >= {minimum}, got {value}")
        return value

    parse.__name__ = "integer"  # argparse names the type in "invalid <name> value" messages
    return parse


def number(minimum: float = 0.0, *, strict: bool = True) -> Callable[[str], float]:
    """A finite real number ``> minimum`` (``>= minimum`` if not ``strict``)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _fail(f"expected a number, got {text!r}") from None
        if not math.isfinite(value):
            raise _fail(f"must be finite, got {text!r}")
        if value < minimum or (strict and value == minimum):
            raise _fail(f"must be {'>' if strict else '>='} {minimum:g}, got {value:g}")
        return value

    parse.__name__ = "number"
    return parse


def _items(text: str) -> list[str]:
    items = [t.strip() for t in text.split(",")]
    if not text.strip() or any(not t for t in items):
        raise _fail(f"expected a comma-separated list without empty entries, got {text!r}")
    return items


def _distinct(values: list[Any], text: str) -> list[Any]:
    repeated = sorted({v for v in values if values.count(v) > 1}, key=str)
    if repeated:
        raise _fail(f"repeats {', '.join(map(str, repeated))} in {text!r}")
    return values


def int_list(minimum: int = 1, *, distinct: bool = True) -> Callable[[str], list[int]]:
    """Comma-separated integers ``>= minimum`` (distinct unless ``distinct=False``)."""
    one = whole(minimum)

    def parse(text: str) -> list[int]:
        values = [one(t) for t in _items(text)]
        return _distinct(values, text) if distinct else values

    parse.__name__ = "integer list"
    return parse


def single_seed(text: str) -> int:
    """A seed: an integer in ``[0, 2**63)``, the range NumPy's and torch's generators take."""
    value = whole(0)(text)
    if value >= 2**63:
        raise _fail(f"seeds must be < 2**63, got {value}")
    return value


single_seed.__name__ = "seed"


def seed_list(text: str) -> list[int]:
    """Comma-separated distinct seeds in ``[0, 2**63)`` (a repeated seed is not a new repeat)."""
    return _distinct([single_seed(t) for t in _items(text)], text)


def float_list(minimum: float = 0.0, *, strict: bool = True) -> Callable[[str], list[float]]:
    """Comma-separated distinct finite numbers ``> minimum`` (``>=`` if not ``strict``)."""
    one = number(minimum, strict=strict)

    def parse(text: str) -> list[float]:
        return _distinct([one(t) for t in _items(text)], text)

    parse.__name__ = "number list"
    return parse


def choice_list(choices: Iterable[str]) -> Callable[[str], list[str]]:
    """Comma-separated distinct names, each one of ``choices``."""
    allowed = list(choices)

    def parse(text: str) -> list[str]:
        names = _items(text)
        unknown = [n for n in names if n not in allowed]
        if unknown:
            raise _fail(f"unknown {', '.join(unknown)}; choose from {', '.join(allowed)}")
        return _distinct(names, text)

    parse.__name__ = "name list"
    return parse


def existing_path(kind: str = "any") -> Callable[[str], Path]:
    """A path that exists (``kind``: ``"file"``, ``"dir"`` or ``"any"``)."""

    def parse(text: str) -> Path:
        p = Path(text).expanduser()
        ok = {"file": p.is_file, "dir": p.is_dir, "any": p.exists}[kind]()
        if not ok:
            what = {"file": "file", "dir": "folder", "any": "path"}[kind]
            raise _fail(f"{what} {text!r} does not exist")
        return p

    parse.__name__ = "path"
    return parse


def json_object(text: str) -> dict[str, Any]:
    """A JSON object (``{...}``)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        raise _fail(f"not valid JSON ({exc.msg} at character {exc.pos})") from None
    if not isinstance(value, dict):
        raise _fail(f"expected a JSON object {{...}}, got {type(value).__name__}")
    return value


def fraction(text: str) -> float:
    """A number in ``[0, 1)`` (a dropout rate, say)."""
    value = number(0.0, strict=False)(text)
    if value >= 1:
        raise _fail(f"must be in [0, 1), got {value:g}")
    return value


fraction.__name__ = "number"


def torch_device(text: str) -> str:
    """A torch device that exists here (``cpu``, ``cuda``, ``cuda:1``, ``mps``, ``xpu``, ...).

    Accelerators with a torch module that knows whether they are present (``torch.cuda``,
    ``torch.mps``, ``torch.xpu``, ``torch.mtia``) are checked, index included; ``meta`` (which
    holds no data) is refused; devices of out-of-tree backends (``xla``, ``hpu``) are taken as
    written.
    """
    import torch

    try:
        dev = torch.device(text)
    except (RuntimeError, ValueError):
        raise _fail(f"not a torch device: {text!r}") from None
    if dev.type == "meta":
        raise _fail(f"{text!r}: the meta device holds no data; use cpu or an accelerator")
    backend = getattr(torch, dev.type, None) if dev.type != "cpu" else None
    if backend is not None and hasattr(backend, "is_available"):
        name = dev.type.upper()
        if not backend.is_available():
            raise _fail(f"{text!r}: {name} is not available here")
        if dev.index is not None and dev.index >= backend.device_count():
            raise _fail(f"{text!r}: there are {backend.device_count()} {name} device(s)")
    return text


torch_device.__name__ = "device"


def json_objects_by_name(text: str, names: Iterable[str], what: str) -> dict[str, dict[str, Any]]:
    """A JSON object whose keys are among ``names`` (``what`` they are, for the message) and
    whose values are objects."""
    value = json_object(text)
    allowed = list(names)
    for key, inner in value.items():
        if key not in allowed:
            raise _fail(f"unknown {what} {key!r}; choose from {', '.join(allowed)}")
        if not isinstance(inner, dict):
            raise _fail(f"{key!r} needs an object, got {inner!r}")
    return value


def path_or_word(kind: str, words: Iterable[str] = ("auto", "none")) -> Callable[[str], Any]:
    """One of ``words`` (case-insensitive, returned lower-case), or a path that exists
    (``kind`` as in :func:`existing_path`), e.g. ``--data auto | none | <folder>``."""
    allowed = tuple(w.lower() for w in words)
    as_path = existing_path(kind)

    def parse(text: str) -> str | Path:
        return text.lower() if text.lower() in allowed else as_path(text)

    parse.__name__ = "path"
    return parse


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """``--help`` with each option's default shown and the description's layout kept."""
