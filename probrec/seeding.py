"""Seeds and generators: every random choice in probrec takes one of these."""

from __future__ import annotations

import random

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


def seed_everything(seed: int) -> None:
    """Seeds Python's, NumPy's and torch's global generators (for scripts, not library code)."""
    random.seed(seed)
    np.random.seed(seed % (2**32))
    torch.manual_seed(seed)
