"""Seeds and generators: every random choice in probrec takes one of these."""

from __future__ import annotations

import contextlib
import random
from collections.abc import Iterator

import numpy as np
import torch

from probrec.checks import check_seed

SeedLike = int | np.random.Generator | None


def numpy_rng(seed: SeedLike) -> np.random.Generator:
    """Returns a NumPy ``Generator`` from an int seed (``>= 0``), an existing generator or
    ``None``; other values raise a ``TypeError`` / ``ValueError`` naming ``seed``."""
    if isinstance(seed, np.random.Generator):
        return seed
    seed = check_seed(seed, optional=True)
    if seed is not None and seed < 0:
        raise ValueError(f"seed must be >= 0 (NumPy seeds are non-negative), got {seed}")
    return np.random.default_rng(seed)


def torch_generator(seed: int | torch.Generator | None, device: torch.device | str = "cpu"):
    """Returns a ``torch.Generator`` on ``device`` seeded with ``seed`` (random if ``None``)."""
    if isinstance(seed, torch.Generator):
        return seed
    seed = check_seed(seed, optional=True)  # a float was truncated silently
    g = torch.Generator(device=device)
    if seed is None:
        g.seed()
    else:
        g.manual_seed(seed)
    return g


def check_generator_device(
    generator: torch.Generator, device: torch.device | str, name: str = "seed"
) -> torch.Generator:
    """Checks that ``generator`` draws on ``device``'s type (a CPU generator given to draws on
    a GPU failed inside torch, far from the argument); returns it.

    Raises:
        ValueError: naming ``name`` and both devices.
    """
    device = torch.device(device)
    if generator.device.type != device.type:
        raise ValueError(
            f"{name} is a torch.Generator on {generator.device} but the draws are made on "
            f"{device}: pass an int seed or a generator on {device.type}"
        )
    return generator


def wrap_seed(value: int) -> int:
    """``value`` reduced into ``[0, 2**63)``, the seeds :func:`~probrec.checks.check_seed` takes.

    For seeds derived by arithmetic (``seed * 1000 + it``, ``seed + r``), which leave that range
    for large run seeds (a ``time.time_ns()`` seed, say); a value already in range is itself.
    """
    return value % 2**63


def child_seeds(seed: int, n: int) -> list[int]:
    """``n`` seeds for independent streams derived from one ``seed`` (NumPy's ``SeedSequence``).

    For code that needs several generators from one user seed: seeding each with ``seed``
    itself would make them draw the same Mersenne-Twister stream (the initialisation and the
    minibatch order of one fit, say), and ``seed + k`` would make seed ``s``'s ``k``-th stream
    seed ``s + k``'s first. The children are fixed functions of ``(seed, n)`` in
    ``[0, 2**63)``; the ``k``-th does not depend on ``n``.

    Raises:
        TypeError / ValueError: ``seed`` is not an int in ``[0, 2**63)`` or ``n`` not >= 1.
    """
    seed = check_seed(seed)
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"n must be an int >= 1, got {n!r}")
    return [
        int(np.random.SeedSequence([seed, k]).generate_state(1, np.uint64)[0] >> np.uint64(1))
        for k in range(int(n))
    ]


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (for scripts, not library code).

    ``seed`` is an int in ``[0, 2**63)`` (a NumPy integer too). NumPy's global generator takes
    32-bit seeds: one below ``2**32`` seeds it as ``np.random.seed(seed)``, a larger one by its
    two 32-bit words, so that distinct seeds never share a stream.

    Raises:
        TypeError / ValueError: ``seed`` is not an int in ``[0, 2**63)``.
    """
    seed = check_seed(seed)
    random.seed(seed)
    np.random.seed(seed if seed < 2**32 else [seed & 0xFFFFFFFF, seed >> 32])
    torch.manual_seed(seed)


@contextlib.contextmanager
def seeded_rng(seed: int | None, device: torch.device | str = "cpu") -> Iterator[None]:
    """Seeds torch's global generators inside the block, restoring them after.

    For library code whose random draws come from torch's global generators (default weight
    initialisers, dropout masks). The CPU generator is seeded, and on a CUDA device that
    device's generator: the same draws as ``torch.manual_seed``, without its ~0.3 ms of queueing
    seeds for devices not in use, and without touching the generators of other GPUs, which the
    block would not restore (``torch.manual_seed`` inside ``fork_rng(devices=[])`` reseeded
    every GPU's generator for good). Other accelerators: every generator, as
    ``torch.manual_seed`` does. ``seed=None``: the block runs on the global streams.

    Args:
        seed: an int seed, or ``None``.
        device: the device whose draws the block makes (``"cpu"``: initialisers on the CPU).
    """
    if seed is None:
        yield
        return
    seed = check_seed(seed)
    device = torch.device(device)
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.random.default_generator.manual_seed(seed)
        if device.type == "cuda":
            with torch.cuda.device(device):
                torch.cuda.manual_seed(seed)
        elif device.type != "cpu":
            torch.manual_seed(seed)
        yield
