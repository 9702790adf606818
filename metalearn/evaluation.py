"""The FS-Mol evaluation protocol for few-shot learners (Stanley et al., NeurIPS 2021).

For every test task and support size (16, 32, 64, 128 by default), support sets are drawn
stratified with several seeds and the query set is the rest of the task. Classification is
scored by delta-AUPRC, regression by out-of-sample R^2 (training mean as zero). Per task the
seeds are averaged; the summary is the mean and standard error across tasks. Tasks too small
for a support size, whose query set would miss a class, or whose labels are all equal (R^2_os
undefined), are skipped and counted.
"""

from __future__ import annotations

import json
import multiprocessing
import os
import time
import warnings
from collections import defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from metalearn.base import MetaLearner
from metalearn.metrics import delta_auprc, mean_and_se, r2_os
from metalearn.training import as_task_list, check_tasks
from probrec.checks import check_positive_int, host_array
from probrec.data.tasks import Episode, RowView, Task, sample_episode
from probrec.progress import track


@dataclass
class EvalResult:
    """Scores of several learners on several tasks.

    Attributes:
        metric: ``"delta_auprc"`` or ``"r2_os"``.
        rows: one dict per (learner, task, support size, seed) with its score.
        skipped: per support size, the tasks that could not be evaluated.
        seconds: wall time per learner.
    """

    metric: str
    rows: list[dict[str, Any]] = field(default_factory=list)
    skipped: dict[int, list[str]] = field(default_factory=dict)
    seconds: dict[str, float] = field(default_factory=dict)

    def per_task(self) -> dict[tuple[str, int], dict[str, float]]:
        """``(learner, size) -> {task: score averaged over seeds}``."""
        acc: dict[tuple[str, int], dict[str, list[float]]] = defaultdict(lambda: defaultdict(list))
        for r in self.rows:
            acc[(r["learner"], r["size"])][r["task"]].append(r["score"])
        return {k: {t: float(np.mean(v)) for t, v in d.items()} for k, d in acc.items()}

    def summary(self) -> dict[str, dict[int, dict[str, float]]]:
        """``learner -> size -> {"mean", "se", "n_tasks"}`` across tasks."""
        out: dict[str, dict[int, dict[str, float]]] = defaultdict(dict)
        for (learner, size), scores in self.per_task().items():
            m, se = mean_and_se(list(scores.values()))
            out[learner][size] = {"mean": m, "se": se, "n_tasks": len(scores)}
        return dict(out)

    def paired(self, a: str, b: str) -> dict[int, dict[str, float]]:
        """Per support size, mean and s.e. across tasks of ``score(a) - score(b)``.

        Both learners saw the same episodes, so the paired difference removes the
        task-to-task spread that dominates the unpaired standard errors.
        """
        pt = self.per_task()
        out = {}
        for size in sorted({s for _, s in pt}):
            sa, sb = pt.get((a, size)), pt.get((b, size))
            if sa is None or sb is None:
                continue
            common = sorted(set(sa) & set(sb))
            m, se = mean_and_se([sa[t] - sb[t] for t in common])
            out[size] = {"mean": m, "se": se, "n_tasks": len(common)}
        return out

    def to_markdown(self) -> str:
        """A table: learners as rows, support sizes as columns, ``mean +- se``."""
        summ = self.summary()
        title = f"metric: {self.metric} (mean +- s.e. across tasks, number of tasks)\n\n"
        if not summ:  # a header without rows or columns read as a broken table
            skipped = ", ".join(f"{len(v)} at size {k}" for k, v in sorted(self.skipped.items()))
            return title + "no results" + (f" (tasks skipped: {skipped})" if skipped else "")
        sizes = sorted({s for d in summ.values() for s in d})
        head = "| learner | " + " | ".join(str(s) for s in sizes) + " |"
        lines = [head, "|---" * (len(sizes) + 1) + "|"]
        order = sorted(summ, key=lambda k: -np.nanmean([summ[k][s]["mean"] for s in summ[k]]))
        for name in order:
            cells = []
            for s in sizes:
                c = summ[name].get(s)
                cells.append(
                    "-" if c is None else f"{c['mean']:.3f} +- {c['se']:.3f} ({c['n_tasks']})"
                )
            lines.append(f"| {name} | " + " | ".join(cells) + " |")
        return title + "\n".join(lines)

    def to_json(self, path: str | Path | None = None) -> dict[str, Any]:
        data = {
            "metric": self.metric,
            "summary": {k: {str(s): v for s, v in d.items()} for k, d in self.summary().items()},
            "skipped": {str(k): v for k, v in self.skipped.items()},
            "seconds": self.seconds,
            "rows": self.rows,
        }
        if path is not None:
            Path(path).write_text(json.dumps(data, indent=1))
        return data

    def plot(self, path: str | Path, title: str = "") -> None:
        """Metric against support size with standard-error bars, one line per learner."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        summ = self.summary()
        fig, ax = plt.subplots(figsize=(6, 4))
        for name, d in sorted(summ.items()):
            sizes = sorted(d)
            ax.errorbar(
                sizes,
                [d[s]["mean"] for s in sizes],
                yerr=[d[s]["se"] for s in sizes],
                marker="o",
                capsize=3,
                label=name,
            )
        ax.set_xscale("log", base=2)
        ax.set(xlabel="support set size", ylabel=self.metric.replace("_", " "), title=title)
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=120)
        plt.close(fig)


def _encoded_tasks(learner: MetaLearner, tasks: Sequence[Task]) -> dict[str, Task] | None:
    """Tasks with inputs replaced by the learner's frozen features, if it has an encoder.

    Tasks sharing one feature matrix (:class:`RowView`) share one encoded matrix.
    """
    encode = getattr(learner, "encode", None)
    if encode is None:
        return None
    cache: dict[int, np.ndarray] = {}
    out = {}
    for t in tasks:
        if isinstance(t.inputs, RowView):
            key = id(t.inputs.matrix)
            if key not in cache:
                cache[key] = encode(t.inputs.matrix).cpu().numpy()
            out[t.name] = t.with_inputs(RowView(cache[key], t.inputs.index))
        else:
            out[t.name] = t.with_inputs(encode(np.asarray(t.inputs)).cpu().numpy())
    return out


def _usable(task: Task, size: int) -> bool:
    if len(task) <= size:
        return False
    if task.is_classification:
        n_pos = int(task.labels.sum())
        n_neg = len(task) - n_pos
        if n_pos < 1 or n_neg < 1:
            return False
    elif float(np.ptp(task.labels)) == 0.0:  # R^2_os undefined: the run stopped on it
        return False
    return True


def evaluate(
    learners: Mapping[str, MetaLearner] | Sequence[MetaLearner],
    tasks: Sequence[Task],
    support_sizes: Sequence[int] = (16, 32, 64, 128),
    n_seeds: int = 5,
    *,
    progress: bool | None = None,
    n_jobs: int = 1,
) -> EvalResult:
    """Scores already meta-trained ``learners`` on ``tasks`` by the FS-Mol protocol.

    Args:
        learners: learners by display name (or a list, named by ``learner.name``).
        tasks: featurised test tasks, all classification or all regression.
        support_sizes: support set sizes.
        n_seeds: support sets drawn per task and size (seeds ``0 .. n_seeds - 1``; the same
            episodes for every learner).
        progress: show a progress bar.
        n_jobs: worker processes over episodes (forked, one torch thread each; ``-1``: one
            per CPU core). Learners on a CUDA device, and platforms without ``fork``, run in
            this process. Scores do not depend on ``n_jobs``.

    Returns:
        An :class:`EvalResult` (``to_markdown``, ``to_json``, ``plot``); a ``UserWarning``
        when every task is skipped at every support size (the result has no scores).

    Raises:
        ValueError: ``tasks`` is empty, holds tasks that are not featurised, of two kinds,
            or of another kind than a learner's, or repeats a task name.
    """
    if not isinstance(n_jobs, int) or isinstance(n_jobs, bool) or n_jobs == 0 or n_jobs < -1:
        raise ValueError(f"n_jobs must be a positive int or -1, got {n_jobs!r}")
    n_jobs = (os.cpu_count() or 1) if n_jobs == -1 else n_jobs
    n_seeds = check_positive_int(n_seeds, "n_seeds")
    if isinstance(support_sizes, (str, bytes)) or not hasattr(support_sizes, "__iter__"):
        raise TypeError(
            f"support_sizes must be a sequence of ints such as (16, 64), got "
            f"{type(support_sizes).__name__}"
        )
    support_sizes = [check_positive_int(s, "support_sizes") for s in support_sizes]
    if not support_sizes:
        raise ValueError("support_sizes is empty")
    if isinstance(learners, MetaLearner):
        raise TypeError(
            "learners must be a mapping {name: learner} or a list of learners, got a single "
            f"{type(learners).__name__}: pass [learner]"
        )
    if not learners:  # the result had no rows, without a word
        raise ValueError("learners is empty: evaluate needs at least one learner")
    if not isinstance(learners, Mapping):
        names = [m.name for m in learners]
        repeated = sorted({n for n in names if names.count(n) > 1})
        if repeated:  # a dict by name would keep the last of them only
            raise ValueError(
                f"learners share the name(s) {repeated}; pass a mapping from display name to "
                "learner to score several of one kind"
            )
        learners = dict(zip(names, learners))
    tasks = as_task_list(tasks, "tasks")
    if not tasks:
        raise ValueError("tasks is empty: evaluate needs at least one (featurised) test task")
    check_tasks(tasks, "tasks")
    task_names = [t.name for t in tasks]
    repeated = sorted({n for n in task_names if task_names.count(n) > 1})
    if repeated:  # results and encoded inputs are keyed by name: tasks were mixed up
        raise ValueError(f"tasks must have distinct names; repeated: {repeated}")
    kinds = {t.kind for t in tasks}
    if len(kinds) != 1:
        raise ValueError(f"tasks must all have one kind, got {sorted(kinds)}")
    kind = kinds.pop()
    if kind == "classification" and min(support_sizes) < 2:  # every task was skipped
        raise ValueError(
            f"support_sizes {support_sizes} holds {min(support_sizes)}: a stratified "
            "classification support set needs at least 2 rows (one of each class)"
        )
    for name, learner in learners.items():  # before any episode: it failed after an adapt
        learner_kind = getattr(learner, "kind", None)
        if learner_kind is not None and learner_kind != kind:
            raise ValueError(
                f"tasks are {kind} tasks, but learner {name!r} has kind {learner_kind!r}: "
                f"evaluate it on {learner_kind} tasks, or make it with kind={kind!r}"
            )
    res = EvalResult("delta_auprc" if kind == "classification" else "r2_os")
    episodes = []
    for size in support_sizes:
        res.skipped[size] = []
        for t in tasks:
            if not _usable(t, size):
                res.skipped[size].append(t.name)
                continue
            eps = []
            for seed in range(n_seeds):
                try:
                    ep = sample_episode(t, size, seed=seed)
                except ValueError:
                    break
                if kind == "classification" and ep.query_y.min() == ep.query_y.max():
                    break
                eps.append(ep)
            if len(eps) < n_seeds:
                res.skipped[size].append(t.name)
                continue
            episodes += [(size, ep) for ep in eps]
    if not episodes:  # the table would be empty with no word of why
        warnings.warn(
            f"evaluate: every task was skipped at every support size {list(support_sizes)} "
            f"({len(tasks)} task(s) skipped at each: too few rows for the support set, a query "
            "set without both classes, or tied labels); the result has no scores",
            UserWarning,
            stacklevel=2,
        )
    for name, learner in learners.items():
        t0 = time.perf_counter()
        encoded = _encoded_tasks(learner, tasks)
        job = (learner, encoded, kind, [ep for _, ep in episodes])
        scores = _map_episodes(job, len(episodes), n_jobs, progress, f"evaluate {name}")
        for (size, ep), score in zip(episodes, scores, strict=True):
            res.rows.append(
                {
                    "learner": name,
                    "task": ep.task.name,
                    "size": size,
                    "seed": ep.seed,
                    "score": score,
                }
            )
        res.seconds[name] = time.perf_counter() - t0
    return res


# the job of the forked workers: (learner, encoded tasks or None, kind, episodes), inherited
# from the parent at fork time instead of pickled
_JOB: tuple[Any, Any, str, list[Episode]] | None = None


def _score_episode(i: int) -> float:
    """Adapts the job's learner to episode ``i`` and scores its query predictions."""
    learner, encoded, kind, episodes = _JOB
    ep = episodes[i]
    if encoded is not None:  # frozen encoder: every molecule encoded once per learner
        ep = Episode(encoded[ep.task.name], ep.support_index, ep.query_index, ep.seed)
        pred = learner.adapt(ep.support_x, ep.support_y, encoded=True)
    else:
        pred = learner.adapt(ep.support_x, ep.support_y)
    if kind == "classification":
        return delta_auprc(ep.query_y, host_array(pred.predict_proba(ep.query_x)))
    return r2_os(ep.query_y, host_array(pred.predict(ep.query_x)[0]), float(ep.support_y.mean()))


def _worker_init() -> None:
    import torch

    torch.set_num_threads(1)


def _map_episodes(
    job: tuple[Any, Any, str, list[Episode]],
    n: int,
    n_jobs: int,
    progress: bool | None,
    desc: str,
) -> list[float]:
    """Scores of episodes ``0 .. n - 1``, in order, in this process or in forked workers."""
    global _JOB
    device = getattr(job[0], "device", None)
    on_gpu = device is not None and getattr(device, "type", str(device)) != "cpu"
    forkable = "fork" in multiprocessing.get_all_start_methods()
    if n_jobs > 1 and not forkable:
        warnings.warn("evaluate: no fork start method here; running n_jobs=1", stacklevel=3)
    _JOB = job
    try:
        if n_jobs == 1 or n < 2 or on_gpu or not forkable:
            return [_score_episode(i) for i in track(range(n), progress=progress, desc=desc)]
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(min(n_jobs, n), initializer=_worker_init) as pool:
            it = pool.imap(_score_episode, range(n), chunksize=max(1, n // (16 * n_jobs)))
            return list(track(it, progress=progress, desc=desc, total=n))
    finally:
        _JOB = None
