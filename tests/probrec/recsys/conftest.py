"""Small synthetic interaction logs for the recsys tests."""

from __future__ import annotations

import numpy as np
import pytest

from probrec.data.movielens import InteractionLog


def synthetic_log(n: int = 3000, users: int = 60, items: int = 80, seed: int = 0) -> InteractionLog:
    """Users and items with biases and latent factors; label = 1{b_u + b_i + u.v / 2 + noise > 0};
    times with ties."""
    rng = np.random.default_rng(seed)
    u = rng.integers(1, users + 1, n)
    new = (np.arange(n) > 0.86 * n) & (rng.random(n) < 0.5)  # late events of new users
    u[new] = rng.integers(users + 1, users + 11, int(new.sum()))
    i = rng.integers(1, items + 1, n)
    uf, vf = rng.normal(size=(users + 11, 4)), rng.normal(size=(items + 1, 4))
    ub, ib = rng.normal(size=users + 11), 1.5 * rng.normal(size=items + 1)
    score = ub[u] + ib[i] + 0.5 * (uf[u] * vf[i]).sum(1) + 0.5 * rng.normal(size=n)
    y = (score > 0).astype(np.float32)
    t = np.sort(rng.integers(0, n // 3, n)) * 60  # repeated timestamps
    _, first = np.unique(np.stack([u, i, t], 1), axis=0, return_index=True)
    keep = np.sort(first)  # (user, item, time) identifies an event
    u, i, y, t = u[keep], i[keep], y[keep], t[keep]
    n = len(u)
    fields = {"gender": (u % 2) + 1, "decade": (i % 5) + 1}
    genres = np.zeros((n, 3), np.float32)
    genres[np.arange(n), i % 3] = 1.0
    return InteractionLog.sorted_by_time(
        u, i, t, y, fields, {"gender": 3, "decade": 6}, multi_hot=genres, name="synthetic"
    )


@pytest.fixture
def small_log() -> InteractionLog:
    return synthetic_log()
