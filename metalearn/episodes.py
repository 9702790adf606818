"""Meta-batches: episodes of several tasks stacked into padded tensors.

A meta-batch holds ``B`` episodes with a common support size (so support sets need no
padding) and query sets padded to the longest one with a mask.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from probrec.data.tasks import Episode, Task, sample_episode, stratified_counts


@dataclass
class MetaBatch:
    """``B`` episodes as tensors.

    Attributes:
        support_x: ``[B, n_s, d]``; support_y: ``[B, n_s]``.
        query_x: ``[B, n_q, d]``; query_y: ``[B, n_q]``; query_mask: ``[B, n_q]`` bool.
        names: task names.
    """

    support_x: torch.Tensor
    support_y: torch.Tensor
    query_x: torch.Tensor
    query_y: torch.Tensor
    query_mask: torch.Tensor
    names: list[str]

    def __len__(self) -> int:
        return self.support_x.shape[0]

    def to(self, device: torch.device | str) -> MetaBatch:
        return MetaBatch(
            self.support_x.to(device),
            self.support_y.to(device),
            self.query_x.to(device),
            self.query_y.to(device),
            self.query_mask.to(device),
            self.names,
        )

    def select(self, index: Sequence[int]) -> MetaBatch:
        """The episodes ``index`` of the batch (for splitting across processes)."""
        idx = torch.as_tensor(list(index), dtype=torch.long)
        return MetaBatch(
            self.support_x[idx],
            self.support_y[idx],
            self.query_x[idx],
            self.query_y[idx],
            self.query_mask[idx],
            [self.names[i] for i in idx.tolist()],
        )


def stack_episodes(episodes: Sequence[Episode], dtype: torch.dtype = torch.float32) -> MetaBatch:
    """Stacks episodes with equal support sizes into a :class:`MetaBatch`.

    Raises:
        ValueError: support sizes differ or inputs are not featurised.
    """
    if not episodes:
        raise ValueError("episodes is empty")
    sizes = {len(e.support_index) for e in episodes}
    if len(sizes) != 1:
        raise ValueError(f"episodes of a meta-batch need one support size, got {sorted(sizes)}")
    if not all(e.task.is_featurized for e in episodes):
        raise ValueError("meta-batches need featurised tasks (inputs [n, d]); see featurize_tasks")
    n_q = max(len(e.query_index) for e in episodes)
    d = episodes[0].task.inputs.shape[1]
    b = len(episodes)
    # built in the requested dtype (float64 inputs went through float32 before)
    np_dtype = torch.empty((), dtype=dtype).numpy().dtype
    sx = torch.as_tensor(np.stack([np.asarray(e.support_x, dtype=np_dtype) for e in episodes]))
    sy = torch.as_tensor(np.stack([e.support_y for e in episodes]))
    qx = torch.zeros(b, n_q, d, dtype=dtype)
    qy = torch.zeros(b, n_q, dtype=torch.float64)
    qm = torch.zeros(b, n_q, dtype=torch.bool)
    for i, e in enumerate(episodes):
        k = len(e.query_index)
        qx[i, :k] = torch.as_tensor(np.asarray(e.query_x, dtype=np_dtype))
        qy[i, :k] = torch.as_tensor(e.query_y)
        qm[i, :k] = True
    return MetaBatch(
        sx.to(dtype), sy.to(dtype), qx.to(dtype), qy.to(dtype), qm, [e.task.name for e in episodes]
    )


def eligible_tasks(tasks: Sequence[Task], support_size: int, min_query: int = 1) -> list[Task]:
    """Tasks that can give a stratified episode with ``support_size`` support and a query.

    Classification tasks need ``support_size + min_query`` rows and a positive and a negative
    for the query after the stratified support set has taken its share of each class (a task
    of 40 rows with two positives gave both to a support set of 32, every time).
    """
    out = []
    for t in tasks:
        if len(t) < support_size + min_query:
            continue
        if t.is_classification:
            n_pos = int(t.labels.sum())
            n_neg = len(t) - n_pos
            if n_pos < 2 or n_neg < 2:
                continue
            k_pos, k_neg = stratified_counts(n_pos, n_neg, support_size, f"task {t.name!r}")
            if k_pos >= n_pos or k_neg >= n_neg:
                continue
        out.append(t)
    return out


def sample_meta_batch(
    tasks: Sequence[Task],
    batch_size: int,
    support_size: int,
    query_size: int | None,
    rng: np.random.Generator,
    dtype: torch.dtype = torch.float32,
) -> MetaBatch:
    """Draws ``batch_size`` tasks (without replacement when possible) and one episode each.

    Query sets have ``query_size`` rows (stratified) or every remaining row if the task is
    smaller (``None``: all remaining rows).
    """
    if not tasks:
        raise ValueError("no task is large enough for the requested support size")
    replace = len(tasks) < batch_size
    chosen = rng.choice(len(tasks), size=batch_size, replace=replace)
    episodes = []
    for i in chosen:
        t = tasks[int(i)]
        rest = len(t) - support_size
        q = None if query_size is None or query_size >= rest else query_size
        episodes.append(sample_episode(t, support_size, q, seed=int(rng.integers(2**31))))
    return stack_episodes(episodes, dtype)
