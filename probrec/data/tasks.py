"""Few-shot tasks, support/query episodes and task-level splits.

A :class:`Task` is one few-shot problem: inputs (SMILES strings, or a feature matrix), labels,
a kind (``"classification"`` with labels in {0, 1}, or ``"regression"``) and a name. An
:class:`Episode` is a seeded support/query split of a task. Support sets for classification
follow FS-Mol's stratified sampler (Stanley et al., "FS-Mol: A Few-Shot Learning Dataset of
Molecules", NeurIPS 2021 Datasets and Benchmarks): the task's class ratio is kept and at least
one positive and one negative are present.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from probrec.checks import check_choice, check_positive_int, check_seed, host_array
from probrec.seeding import SeedLike, numpy_rng

KINDS = ("classification", "regression")


def row_index(index: Any, n: int, name: str, *, unique: bool = False) -> np.ndarray:
    """``index`` as ``int64`` row indices ``[m]`` of an ``n``-row table, checked.

    Negative indices (which NumPy wraps to the last rows), fractional ones (which it truncates)
    and nested ones (which a reshape would flatten) are refused, not reinterpreted.

    Raises:
        ValueError: ``index`` is not 1-D, not integer, out of ``[0, n)`` or (``unique``)
            repeats a row.
    """
    idx = np.asarray(index)
    if idx.size == 0 and idx.ndim == 1:
        return idx.astype(np.int64)
    if idx.ndim != 1 or not np.issubdtype(idx.dtype, np.integer):
        raise ValueError(f"{name} must be 1-D integer row indices, got {idx.dtype} {idx.shape}")
    if idx.min() < 0 or idx.max() >= n:
        raise ValueError(f"{name} must index rows in [0, {n}), got {idx.min()}..{idx.max()}")
    if unique and len(np.unique(idx)) != len(idx):
        raise ValueError(f"{name} repeats a row")
    return idx.astype(np.int64)


class RowView:
    """Rows ``index`` of a shared ``[N, d]`` matrix, indexed lazily instead of copied.

    Hundreds of tasks over one molecule table (ToxCast: 500 tasks, 1.3 M labelled pairs) share
    one feature matrix; each task holds a view, and indexing it (``view[idx]``) returns a
    plain ``[len(idx), d]`` array.

    Args:
        matrix: ``[N, d]`` shared feature matrix.
        index: ``[n]`` row indices into ``matrix``.
    """

    def __init__(self, matrix: np.ndarray, index: np.ndarray) -> None:
        self.matrix = matrix
        self.index = row_index(index, len(matrix), "index")

    @property
    def shape(self) -> tuple[int, ...]:
        return (len(self.index),) + tuple(self.matrix.shape[1:])

    @property
    def ndim(self) -> int:
        return self.matrix.ndim

    @property
    def dtype(self) -> np.dtype:
        return self.matrix.dtype

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: Any) -> np.ndarray:
        return self.matrix[self.index[key]]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        out = self.matrix[self.index]
        return out if dtype is None else out.astype(dtype)

    def take(self, index: np.ndarray) -> RowView:
        """The view of rows ``index`` of this view (no copy)."""
        return RowView(self.matrix, self.index[np.asarray(index, dtype=np.int64)])


def _as_inputs(inputs: Any) -> np.ndarray | RowView:
    if isinstance(inputs, (np.ndarray, RowView)):
        return inputs
    try:  # torch tensors and other array-likes
        import torch

        if isinstance(inputs, torch.Tensor):
            return inputs.detach().cpu().numpy()
    except ImportError:  # pragma: no cover
        pass
    seq = list(inputs)
    if seq and isinstance(seq[0], str):
        return np.asarray(seq, dtype=object)
    return np.asarray(seq)


@dataclass(frozen=True, eq=False)
class Task:
    """One few-shot learning problem.

    Attributes:
        inputs: ``[n]`` array of strings (e.g. SMILES), ``[n, d]`` float feature matrix, or a
            :class:`RowView` of a shared feature matrix.
        labels: ``[n]`` float array; in {0, 1} for classification (a tensor, on any device
            and with or without gradients, is copied to the host as the inputs are).
        kind: ``"classification"`` or ``"regression"``.
        name: task identifier (e.g. an assay name).
        metadata: free-form information (source file, units, threshold, ...).
    """

    inputs: np.ndarray | RowView
    labels: np.ndarray
    kind: str
    name: str
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_choice(self.kind, "kind", KINDS)
        if not isinstance(self.name, str) or not self.name:
            raise ValueError(f"name must be a non-empty string, got {self.name!r}")
        inputs = _as_inputs(self.inputs)
        try:  # tensors on any device, with or without gradients, as the inputs are taken
            labels = host_array(self.labels)
        except (TypeError, ValueError) as exc:
            raise TypeError(f"labels of task {self.name!r} must be numeric") from exc
        if sum(d != 1 for d in labels.shape) > 1:  # [n, 1] or [1, n]: one label per row
            # a [3, 2] matrix was flattened into 6 labels, paired with 6 rows in C order
            raise ValueError(
                f"labels of task {self.name!r} must have shape [n] (one label per row), got "
                f"{labels.shape}"
            )
        labels = labels.reshape(-1)
        if len(inputs) != len(labels):
            raise ValueError(
                f"mismatched lengths in task {self.name!r}: inputs has {len(inputs)}, "
                f"labels has {len(labels)}"
            )
        if len(labels) == 0:
            raise ValueError(f"task {self.name!r} is empty (no labelled inputs)")
        if not np.isfinite(labels).all():
            raise ValueError(
                f"labels of task {self.name!r} contain {int((~np.isfinite(labels)).sum())} "
                "NaN/inf value(s); drop unlabelled rows before building a Task"
            )
        if self.kind == "classification" and not np.isin(labels, (0.0, 1.0)).all():
            raise ValueError(f"classification labels of task {self.name!r} must be 0 or 1")
        if isinstance(inputs, np.ndarray) and inputs.dtype != object and inputs.ndim == 2:
            if inputs.dtype.kind not in "biuf":  # e.g. strings: not a feature matrix
                raise TypeError(
                    f"inputs of task {self.name!r} must be a numeric [n, d] feature matrix or "
                    f"a 1-D sequence of items (e.g. SMILES), got a {inputs.dtype} matrix"
                )
            if not np.isfinite(inputs).all():
                raise ValueError(f"inputs of task {self.name!r} contain NaN/inf features")
        elif isinstance(inputs, np.ndarray) and inputs.dtype.kind in "fc":
            if not np.isfinite(inputs).all():  # 1-D numeric items (ids, scores): NaN is no item
                raise ValueError(f"inputs of task {self.name!r} contain NaN/inf items")
        object.__setattr__(self, "inputs", inputs)
        object.__setattr__(self, "labels", labels)

    def __len__(self) -> int:
        return len(self.labels)

    def __repr__(self) -> str:
        extra = (
            f", positive_fraction={self.positive_fraction:.3f}" if self.is_classification else ""
        )
        return f"Task(name={self.name!r}, kind={self.kind!r}, n={len(self)}{extra})"

    @property
    def is_classification(self) -> bool:
        return self.kind == "classification"

    @property
    def is_featurized(self) -> bool:
        """True when ``inputs`` is a numeric ``[n, d]`` matrix."""
        return self.inputs.dtype != object and self.inputs.ndim == 2

    @property
    def positive_fraction(self) -> float:
        """Fraction of positives (classification only)."""
        if not self.is_classification:
            raise ValueError(f"task {self.name!r} is a regression task; it has no positives")
        return float(self.labels.mean())

    def subset(self, index: Sequence[int] | np.ndarray) -> Task:
        """Returns the task restricted to rows ``index`` (same name, kind and metadata)."""
        idx = row_index(index, len(self), "index")
        x = self.inputs.take(idx) if isinstance(self.inputs, RowView) else self.inputs[idx]
        return Task(x, self.labels[idx], self.kind, self.name, dict(self.metadata))

    def with_inputs(self, inputs: Any) -> Task:
        """Returns a copy with ``inputs`` replaced (e.g. by features); lengths must agree."""
        return Task(inputs, self.labels, self.kind, self.name, dict(self.metadata))


@dataclass(frozen=True, eq=False)
class Episode:
    """A support/query split of a task.

    Attributes:
        task: the task split.
        support_index: ``[n_s]`` row indices of the support set.
        query_index: ``[n_q]`` row indices of the query set (disjoint from the support set).
        seed: the seed the split was drawn with (``None`` if given explicitly).
    """

    task: Task
    support_index: np.ndarray
    query_index: np.ndarray
    seed: int | None = None

    def __post_init__(self) -> None:
        n = len(self.task)
        s = row_index(self.support_index, n, "support_index", unique=True)
        q = row_index(self.query_index, n, "query_index", unique=True)
        if len(s) == 0:
            raise ValueError(f"support set of task {self.task.name!r} is empty")
        if np.intersect1d(s, q).size:
            raise ValueError("support_index and query_index overlap")
        if self.task.is_classification:
            check_two_classes(self.task.labels[s], f"support set of task {self.task.name!r}")
        object.__setattr__(self, "support_index", s)
        object.__setattr__(self, "query_index", q)

    @property
    def support_x(self) -> np.ndarray:
        return self.task.inputs[self.support_index]

    @property
    def support_y(self) -> np.ndarray:
        return self.task.labels[self.support_index]

    @property
    def query_x(self) -> np.ndarray:
        return self.task.inputs[self.query_index]

    @property
    def query_y(self) -> np.ndarray:
        return self.task.labels[self.query_index]


def check_two_classes(labels: np.ndarray, what: str) -> None:
    """Raises ``ValueError`` unless ``labels`` holds at least one 0 and one 1."""
    labels = np.asarray(labels)
    if labels.size == 0:
        raise ValueError(f"{what} is empty")
    n_pos = int((labels == 1).sum())
    if n_pos == 0 or n_pos == labels.size:
        cls = "positive" if n_pos == labels.size else "negative"
        raise ValueError(
            f"{what} is single-class (only {cls} labels, n={labels.size}); it needs at least "
            "one positive and one negative"
        )


def stratified_counts(n_pos: int, n_neg: int, size: int, name: str = "task") -> tuple[int, int]:
    """Number of positives and negatives in a stratified sample of ``size`` rows.

    The class ratio of the task is kept (rounded), with at least one of each class, as in
    FS-Mol's ``StratifiedTaskSampler``.

    Raises:
        ValueError: the task cannot provide ``size`` rows with both classes present.
    """
    if n_pos < 1 or n_neg < 1:
        raise ValueError(
            f"{name} has {n_pos} positive(s) and {n_neg} negative(s); a stratified support set "
            "needs at least one of each"
        )
    if size < 2:
        raise ValueError(f"support_size must be >= 2 for classification, got {size}")
    if size > n_pos + n_neg:
        raise ValueError(f"support_size {size} exceeds the {n_pos + n_neg} rows of {name}")
    k_pos = int(round(size * n_pos / (n_pos + n_neg)))
    k_pos = min(max(k_pos, 1), size - 1, n_pos)
    k_neg = size - k_pos
    if k_neg > n_neg:  # not enough negatives: move the excess to positives
        k_pos, k_neg = size - n_neg, n_neg
    return k_pos, k_neg


def sample_episode(
    task: Task,
    support_size: int,
    query_size: int | None = None,
    seed: int = 0,
    *,
    stratified: bool = True,
) -> Episode:
    """Draws a support/query split of ``task``.

    Classification tasks are split stratified by default (class ratio kept, at least one
    positive and one negative in the support set); the query set is the rest of the task, or a
    stratified draw of ``query_size`` from the rest.

    Args:
        task: the task to split.
        support_size: number of support rows.
        query_size: number of query rows; ``None`` means every row not in the support set.
        seed: seed of the draw (same seed, same split).
        stratified: keep the class ratio (classification only).

    Returns:
        The episode.

    Raises:
        ValueError: the task is too small or (classification) lacks a class.
    """
    check_positive_int(support_size, "support_size")
    rng = np.random.default_rng(check_seed(seed))
    n = len(task)
    if support_size >= n:
        raise ValueError(
            f"support_size {support_size} leaves no query rows in task {task.name!r} (n={n})"
        )
    if task.is_classification and stratified:
        pos = np.flatnonzero(task.labels == 1)
        neg = np.flatnonzero(task.labels == 0)
        k_pos, k_neg = stratified_counts(len(pos), len(neg), support_size, f"task {task.name!r}")
        pos, neg = rng.permutation(pos), rng.permutation(neg)
        support = np.concatenate([pos[:k_pos], neg[:k_neg]])
        rest_pos, rest_neg = pos[k_pos:], neg[k_neg:]
        if query_size is None:
            query = np.concatenate([rest_pos, rest_neg])
        else:
            check_positive_int(query_size, "query_size")
            if query_size > len(rest_pos) + len(rest_neg):
                raise ValueError(
                    f"query_size {query_size} exceeds the {len(rest_pos) + len(rest_neg)} rows "
                    f"left in task {task.name!r}"
                )
            q_pos = int(round(query_size * len(rest_pos) / (len(rest_pos) + len(rest_neg))))
            q_pos = min(q_pos, len(rest_pos))
            q_neg = min(query_size - q_pos, len(rest_neg))
            q_pos = query_size - q_neg
            query = np.concatenate([rest_pos[:q_pos], rest_neg[:q_neg]])
    else:
        perm = rng.permutation(n)
        support = perm[:support_size]
        rest = perm[support_size:]
        if query_size is not None:
            check_positive_int(query_size, "query_size")
            if query_size > len(rest):
                raise ValueError(
                    f"query_size {query_size} exceeds the {len(rest)} rows left in {task.name!r}"
                )
            rest = rest[:query_size]
        query = rest
    return Episode(task, np.sort(support), np.sort(query), seed)


class TaskSet(list):
    """A list of tasks with lookup by name and a record of what the loader left out.

    Attributes:
        skipped: inputs the loader could not use (e.g. invalid SMILES), in file order.
        excluded: tasks the loader left out, name -> reason (e.g. too few labels).
        source: where the tasks came from (path or description).
    """

    def __init__(
        self,
        tasks: Iterable[Task] = (),
        *,
        skipped: Sequence[str] = (),
        excluded: Mapping[str, str] | None = None,
        source: str = "",
    ):
        super().__init__(tasks)
        self.skipped = list(skipped)
        self.excluded = dict(excluded or {})
        self.source = source

    @property
    def names(self) -> list[str]:
        return [t.name for t in self]

    def get(self, name: str) -> Task:  # type: ignore[override]
        """Returns the task called ``name``; unknown names raise ``ValueError``."""
        for t in self:
            if t.name == name:
                return t
        raise ValueError(f"unknown task name {name!r} in {self.source or 'this task set'}")

    def select(self, names: Iterable[str]) -> TaskSet:
        """Returns the tasks called ``names`` in that order; unknown names raise ``ValueError``,
        a single name string ``TypeError`` (it was read as one name per character)."""
        if isinstance(names, str):
            raise TypeError(f"names must be a sequence of task names, got the string {names!r}")
        return TaskSet(
            [self.get(n) for n in names],
            skipped=self.skipped,
            excluded=self.excluded,
            source=self.source,
        )


def split_tasks(
    tasks: Sequence[Task],
    sizes: Sequence[float] | Sequence[int] = (0.8, 0.1, 0.1),
    seed: SeedLike = 0,
) -> tuple[TaskSet, TaskSet, TaskSet]:
    """Splits tasks into train / valid / test sets by task, with a seeded permutation.

    Args:
        tasks: the tasks to split.
        sizes: three fractions summing to 1, or three task counts summing to ``len(tasks)``
            (a count of ``-1`` takes the remainder).
        seed: seed of the permutation.

    Returns:
        ``(train, valid, test)``.
    """
    n = len(tasks)
    if n == 0:
        raise ValueError("tasks is empty")
    if len(sizes) != 3:
        raise ValueError(f"sizes must have 3 entries (train, valid, test), got {len(sizes)}")
    if all(isinstance(s, (int, np.integer)) for s in sizes):
        counts = [int(s) for s in sizes]
        if counts.count(-1) > 1:
            raise ValueError("sizes may contain at most one -1")
        if -1 in counts:
            counts[counts.index(-1)] = n - sum(c for c in counts if c != -1)
        if any(c < 0 for c in counts) or sum(counts) != n:
            raise ValueError(f"sizes {list(sizes)} must be non-negative and sum to {n} tasks")
    else:
        fr = np.asarray(sizes, dtype=float)
        if not (fr >= 0).all() or not abs(fr.sum() - 1) <= 1e-6:  # NaN fails both
            raise ValueError(f"sizes {list(sizes)} must be non-negative fractions summing to 1")
        c_valid, c_test = int(round(fr[1] * n)), int(round(fr[2] * n))
        # both rounded up can exceed n (3 tasks at (0, .5, .5): 2 + 2); a negative train count
        # made the slices overlap, putting one task in train and test
        c_test = min(c_test, n - c_valid)
        counts = [n - c_valid - c_test, c_valid, c_test]
    perm = numpy_rng(seed).permutation(n)
    parts, start = [], 0
    for c in counts:
        parts.append(TaskSet([tasks[i] for i in perm[start : start + c]]))
        start += c
    return parts[0], parts[1], parts[2]
