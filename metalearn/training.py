"""The episodic meta-training loop shared by ADKF-IFT, ADKF, DKT and ProtoNet.

Adam on the learner's meta-parameters, gradient-norm clipping, validation-based model
selection, checkpoints with resume, a progress bar, and data parallelism across processes
with ``torch.distributed`` (the tasks of a meta-batch are split over ranks and gradients are
all-reduced; gloo on CPU, nccl on GPU). The meta-batch of step ``k`` is drawn from a generator
seeded with ``(seed, k)``, so a resumed run and a distributed run see the same episodes as an
uninterrupted single-process run; torch's global streams (dropout masks) are seeded with
``(seed, k, rank)`` during the step, so a resumed run repeats an uninterrupted one exactly. A
checkpoint resumes only a run of the same learner and options (``n_steps`` may grow).
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
import torch.distributed as dist

from metalearn.episodes import MetaBatch, eligible_tasks, sample_meta_batch
from metalearn.metrics import delta_auprc, r2_os
from probrec.checks import check_positive_int, check_real
from probrec.data.tasks import Task, sample_episode
from probrec.progress import track
from probrec.seeding import seeded_rng


@dataclass
class TrainConfig:
    """Meta-training settings (reference values of ADKF-IFT in brackets).

    Attributes:
        n_steps: meta-steps [10,000].
        batch_size: tasks per meta-step [16].
        support_size: support rows per training episode [64].
        query_size: query rows per training episode [256].
        lr: Adam learning rate [1e-4].
        weight_decay: Adam weight decay.
        clip_norm: gradient-norm clip [1.0]; 0 turns clipping off.
        eval_every: validate every this many steps.
        valid_support_size: support size of validation episodes.
        valid_seeds: validation episodes per task.
    """

    n_steps: int = 2000
    batch_size: int = 16
    support_size: int = 64
    query_size: int = 256
    lr: float = 1e-4
    weight_decay: float = 0.0
    clip_norm: float = 1.0
    eval_every: int = 100
    valid_support_size: int = 64
    valid_seeds: int = 2

    def __post_init__(self) -> None:
        for name in (
            "n_steps",
            "batch_size",
            "support_size",
            "query_size",
            "eval_every",
            "valid_support_size",
            "valid_seeds",
        ):
            setattr(self, name, check_positive_int(getattr(self, name), name))
        self.lr = check_real(self.lr, "lr", strict=True)
        self.weight_decay = check_real(self.weight_decay, "weight_decay")
        self.clip_norm = check_real(self.clip_norm, "clip_norm")


# Encoder widths and episodic training sizes of the ToxCast examples: "reference" is the
# ADKF-IFT paper's setting (GPU), "cpu" a scaled-down one that meta-trains in ~2 minutes on one
# CPU core (Chen, Tripp & Hernandez-Lobato, ICLR 2023, Appendix C).
PRESETS: dict[str, dict[str, Any]] = {
    "cpu": {
        "hidden": (512,),
        "out_dim": 256,
        "n_steps": 400,
        "batch_size": 8,
        "support_size": 32,
        "query_size": 128,
        "lr": 3e-4,
        "eval_every": 50,
        "valid_support_size": 32,
        "valid_seeds": 1,
    },
    "reference": {
        "hidden": (2048,),
        "out_dim": 2048,
        "n_steps": 10_000,
        "batch_size": 16,
        "support_size": 64,
        "query_size": 256,
        "lr": 1e-4,
        "eval_every": 500,
        "valid_support_size": 64,
        "valid_seeds": 2,
    },
}


def preset(name: str, n_steps: int | None = None) -> dict[str, Any]:
    """A copy of ``PRESETS[name]`` (encoder and meta-training options), ``n_steps`` overridden
    if given; pass it as ``ADKFIFT(**preset("cpu"))`` (or to DKT, ADKF, ProtoNet)."""
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose from {sorted(PRESETS)}")
    out = dict(PRESETS[name])
    if n_steps:
        out["n_steps"] = int(n_steps)
    return out


class EpisodicLearner(Protocol):
    """What :func:`meta_train` needs of a learner."""

    kind: str
    seed: int
    device: torch.device
    history: dict[str, list]

    def build(self, in_dim: int) -> None: ...
    def trainable_modules(self) -> dict[str, torch.nn.Module]: ...
    def episode_loss(self, batch: MetaBatch) -> torch.Tensor: ...
    def adapt(self, support_x: Any, support_y: Any) -> Any: ...
    def state(self) -> dict[str, Any]: ...


def _dist_info() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def validation_score(
    learner: EpisodicLearner, tasks: list[Task], support_size: int, n_seeds: int
) -> float:
    """Mean delta-AUPRC (classification) or R^2_os (regression) over fixed episodes."""
    scores = []
    for t in tasks:
        for s in range(n_seeds):
            ep = sample_episode(t, support_size, seed=10_000 + s)
            pred = learner.adapt(ep.support_x, ep.support_y)
            if learner.kind == "classification":
                if ep.query_y.min() == ep.query_y.max():
                    continue
                p = pred.predict_proba(ep.query_x).detach().cpu().numpy()
                scores.append(delta_auprc(ep.query_y, p))
            else:
                m = pred.predict(ep.query_x)[0].detach().cpu().numpy()
                scores.append(r2_os(ep.query_y, m, float(ep.support_y.mean())))
    return float(np.mean(scores)) if scores else float("nan")


def _all_reduce_grads(params: list[torch.nn.Parameter]) -> None:
    for p in params:
        if p.grad is None:
            p.grad = torch.zeros_like(p)
        dist.all_reduce(p.grad, op=dist.ReduceOp.SUM)


def meta_gradient(
    learner: EpisodicLearner, batch: MetaBatch, batch_size: int, params: list[torch.nn.Parameter]
) -> float:
    """Backpropagates the meta-loss of ``batch`` into ``params`` (``.grad`` accumulates).

    Under ``torch.distributed`` each rank takes the episodes ``rank, rank + world, ...`` of the
    batch, and the gradients and the loss are summed across ranks, so every rank ends with the
    gradient of the mean loss over the whole meta-batch -- the same as one process.

    Returns:
        The meta-loss (mean over the ``batch_size`` tasks).
    """
    rank, world = _dist_info()
    if world > 1:
        batch = batch.select(range(rank, len(batch), world))
    loss = learner.episode_loss(batch.to(learner.device)) / batch_size
    loss.backward()
    value = loss.detach().clone()
    if world > 1:
        _all_reduce_grads(params)
        dist.all_reduce(value)
    return float(value)


def unconverged_inner_fits(learner: EpisodicLearner) -> int | None:
    """Tasks of the last meta-batch (all ranks) whose inner fit stopped before its tolerance.

    A learner with a per-task inner problem (ADKF-IFT, ADKF) keeps the batch's fit as
    ``last_fit`` (a :class:`~probrec.gp.fit.FitResult`); at an unconverged ``theta`` the
    implicit hypergradient is inexact. ``None`` for learners without one (DKT, ProtoNet).
    """
    fit = getattr(learner, "last_fit", None)
    if fit is None:
        return None
    count = (~fit.converged).sum().to(torch.int64)
    if _dist_info()[1] > 1:
        count = count.to(learner.device)
        dist.all_reduce(count)
    return int(count)


def _step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of torch's global streams during meta-step ``step`` on ``rank``."""
    return int(np.random.SeedSequence([seed, step, rank, 1]).generate_state(1, np.uint64)[0] >> 1)


# options that may differ between a checkpointed run and the run resuming it: a longer run
_RESUMABLE_CHANGES = frozenset({"n_steps"})


def _check_resumable(
    saved: dict[str, Any], learner: EpisodicLearner, config: TrainConfig, ckpt: Path
) -> None:
    """Refuses a checkpoint whose run the resumed one would not continue: another learner,
    kind, seed or option (the optimizer state would restore the old learning rate, say), or
    a run already past ``n_steps``."""
    s = saved["learner"]
    who = (s.get("class"), s.get("kind"))
    if who != (learner.name, learner.kind):
        raise ValueError(
            f"{ckpt} holds a {who[1]} {who[0]} run, not a {learner.kind} {learner.name}: "
            "resume=False or another checkpoint_dir"
        )
    mine = {**getattr(learner, "config", {}), "seed": learner.seed}
    # an option added after the checkpoint was written ran as its default there
    theirs = {**getattr(learner, "defaults", {}), **s.get("config", {}), "seed": s.get("seed")}
    changed = sorted(
        k
        for k in set(mine) | set(theirs)
        if k not in _RESUMABLE_CHANGES and mine.get(k) != theirs.get(k)
    )
    if changed:
        diff = ", ".join(f"{k}: {theirs.get(k)!r} -> {mine.get(k)!r}" for k in changed)
        raise ValueError(
            f"{ckpt} was written by a run with other options ({diff}); resuming would mix "
            "the two: resume=False or another checkpoint_dir"
        )
    if int(saved["step"]) > config.n_steps:
        raise ValueError(
            f"{ckpt} is at step {int(saved['step'])}, past n_steps={config.n_steps}: "
            "resume=False or another checkpoint_dir"
        )


def check_resumable(
    learner: EpisodicLearner, config: TrainConfig, checkpoint_dir: str | Path
) -> None:
    """Raises, before any work, the error :func:`meta_train` (same arguments) would raise on
    resuming ``checkpoint_dir/last.pt`` (another learner, kind, seed or option, or a run past
    ``n_steps``); does nothing when there is no checkpoint.

    Only the checkpoint's small record (learner, options, step) is read: its tensors (weights,
    optimizer moments, best weights) are memory-mapped and never touched, so the checkpoint is
    loaded once, by :func:`meta_train`, not here as well.

    Raises:
        ValueError: the checkpoint's run is not the one ``learner`` would continue.
    """
    ckpt = Path(checkpoint_dir) / "last.pt"
    if ckpt.exists():
        saved = torch.load(ckpt, map_location="cpu", weights_only=False, mmap=True)
        try:
            _check_resumable(saved, learner, config, ckpt)
        finally:
            del saved  # unmaps the file before meta_train replaces it


def as_task_list(tasks: Any, name: str) -> list[Task]:
    """``tasks`` (any iterable of :class:`~probrec.data.tasks.Task`) as a list.

    Args:
        tasks: the tasks.
        name: the argument they came in (``"train_tasks"``, ``"tasks"``, ...).

    Raises:
        TypeError: ``tasks`` is a single task, not iterable, or holds something that is not a
            task; the message names ``name``.
    """
    if isinstance(tasks, (Task, str, bytes)) or not hasattr(tasks, "__iter__"):
        hint = " (wrap a single task in a list)" if isinstance(tasks, Task) else ""
        raise TypeError(f"{name} must be a list of Task objects, got {type(tasks).__name__}{hint}")
    out = list(tasks)
    wrong = [i for i, t in enumerate(out) if not isinstance(t, Task)]
    if wrong:
        raise TypeError(
            f"{name} must hold Task objects, but {name}[{wrong[0]}] is a "
            f"{type(out[wrong[0]]).__name__}"
        )
    return out


def check_tasks(tasks: list[Task], name: str, kind: str | None = None) -> None:
    """Checks that every task of ``tasks`` is featurised and (if given) of kind ``kind``.

    Args:
        tasks: the tasks.
        name: the argument they came in (``"train_tasks"``, ``"valid_tasks"``, ``"tasks"``).
        kind: the learner's kind, or ``None`` not to check the tasks' kinds.

    Raises:
        ValueError: a task's inputs are not a numeric ``[n, d]`` matrix (SMILES, say: see
            :func:`probrec.data.featurize_tasks`), or a task's kind is not ``kind``. The
            message names ``name`` and the first tasks at fault.
    """
    raw = [t.name for t in tasks if not t.is_featurized]
    if raw:
        raise ValueError(
            f"{name} {raw[:5]}{' ...' if len(raw) > 5 else ''} ({len(raw)} of {len(tasks)}) are "
            "not featurised: their inputs must be a numeric [n, d] matrix, not SMILES; "
            "featurise them first with probrec.data.featurize_tasks"
        )
    if kind is None:
        return
    wrong = [t for t in tasks if t.kind != kind]
    if wrong:
        names = [t.name for t in wrong[:5]]
        kinds = sorted({t.kind for t in wrong})
        raise ValueError(
            f"{name} {names}{' ...' if len(wrong) > 5 else ''} ({len(wrong)} of {len(tasks)}) "
            f"are {' / '.join(kinds)} tasks, but the learner's kind is {kind!r}: make the "
            f"learner with kind={kinds[0]!r}, or pass {kind} tasks"
        )


def meta_train(
    learner: EpisodicLearner,
    train_tasks: list[Task],
    valid_tasks: list[Task] | None,
    config: TrainConfig,
    *,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    progress: bool | None = None,
) -> dict[str, list]:
    """Meta-trains ``learner`` episodically and restores its best validation state.

    Args:
        learner: an episodic learner (builds its modules from the input width).
        train_tasks: featurised training tasks.
        valid_tasks: featurised validation tasks (``None``: keep the last state).
        config: training settings.
        checkpoint_dir: folder for ``last.pt`` (written at every validation); ``None``: none.
        resume: continue from ``checkpoint_dir/last.pt`` if it exists.
        progress: show a progress bar.

    Returns:
        The training history (losses, validation scores, best step; for learners with a
        per-task inner fit, ``inner_unconverged``: ``[step, tasks]`` for every meta-step
        whose batch had inner fits that did not reach the tolerance, with a warning at the
        end), also in ``learner.history``.

    Raises:
        ValueError: ``train_tasks`` or ``valid_tasks`` holds a task that is not featurised,
            of another kind than the learner, or of another input width; no training task is
            large enough for ``config.support_size``.
    """
    rank, world = _dist_info()
    if config.batch_size < world:  # a rank without tasks would fail alone; the others would hang
        raise ValueError(
            f"batch_size={config.batch_size} is smaller than the torch.distributed world size "
            f"{world}: every rank needs at least one task of each meta-batch"
        )
    # before the tasks are read: SMILES tasks failed with an IndexError, tasks of the other
    # kind with a label error, and validation tasks only eval_every steps into training
    check_tasks(train_tasks, "train_tasks", learner.kind)
    check_tasks(valid_tasks or [], "valid_tasks", learner.kind)
    train = eligible_tasks(train_tasks, config.support_size)
    if not train:
        raise ValueError(
            f"no training task has enough rows (and both classes) for support_size="
            f"{config.support_size}"
        )
    valid = eligible_tasks(valid_tasks or [], config.valid_support_size)
    in_dim = int(train[0].inputs.shape[1])
    # every task's width before anything is built or stepped (a validation task of another
    # width failed only at the first validation, after the weights had moved)
    built = getattr(learner, "in_dim", None) if learner.trainable_modules() else None
    want = in_dim if built is None else int(built)
    for role, tasks in (("train_tasks", train), ("valid_tasks", valid)):
        wrong = [t.name for t in tasks if int(t.inputs.shape[1]) != want]
        if wrong:
            raise ValueError(
                f"{role} {wrong[:5]} do not have {want} input features"
                + ("" if built is None else " (the learner's input width)")
            )
    if not learner.trainable_modules():
        learner.build(in_dim)
    modules = learner.trainable_modules()
    params = [p for m in modules.values() for p in m.parameters() if p.requires_grad]
    opt = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    hist: dict[str, Any] = {
        "step": [],
        "loss": [],
        "valid_step": [],
        "valid_score": [],
        "best_step": -1,
        "best_score": float("-inf"),
        "seconds": 0.0,
        "config": asdict(config),
    }
    best_state = None
    start = 0
    ckpt = Path(checkpoint_dir) / "last.pt" if checkpoint_dir is not None else None
    if ckpt is not None and resume and ckpt.exists():
        saved = torch.load(ckpt, map_location=learner.device, weights_only=False)
        _check_resumable(saved, learner, config, ckpt)
        for k, m in modules.items():
            m.load_state_dict(saved["learner"]["modules"][k])
        opt.load_state_dict(saved["optimizer"])
        hist = saved["history"]
        hist["config"] = asdict(config)  # a longer run: its own n_steps, not the checkpoint's
        best_state = saved["best_modules"]
        start = int(saved["step"])
    t0 = time.perf_counter() - float(hist.get("seconds", 0.0))
    bar = track(
        range(start, config.n_steps),
        progress=progress if rank == 0 else False,
        desc=f"meta-train {type(learner).__name__}",
        initial=start,
        total=config.n_steps,
    )
    for step in bar:
        for m in modules.values():
            m.train()
        rng = np.random.default_rng([learner.seed, step])
        batch = sample_meta_batch(
            train, config.batch_size, config.support_size, config.query_size, rng
        )
        opt.zero_grad(set_to_none=True)
        # dropout masks (torch's global streams) seeded by (seed, step, rank) too: a resumed
        # run repeats the uninterrupted one, and ``seed`` makes training reproducible
        with seeded_rng(_step_seed(learner.seed, step, rank), learner.device):
            loss = meta_gradient(learner, batch, config.batch_size, params)
        if not math.isfinite(loss):
            raise FloatingPointError(
                f"meta-loss is not finite at step {step} (tasks {batch.names})"
            )
        n_bad = unconverged_inner_fits(learner)
        if n_bad:
            hist.setdefault("inner_unconverged", []).append([step, n_bad])
        if config.clip_norm:
            torch.nn.utils.clip_grad_norm_(params, config.clip_norm)
        opt.step()
        hist["step"].append(step)
        hist["loss"].append(loss)
        if hasattr(bar, "set_postfix"):
            bar.set_postfix(loss=f"{loss:.4f}", best=f"{hist['best_score']:.4f}")
        last = step + 1 == config.n_steps
        if (step + 1) % config.eval_every == 0 or last:
            for m in modules.values():
                m.eval()
            if valid:
                score = validation_score(
                    learner, valid, config.valid_support_size, config.valid_seeds
                )
                hist["valid_step"].append(step + 1)
                hist["valid_score"].append(score)
                if np.isfinite(score) and score > hist["best_score"]:
                    hist["best_score"], hist["best_step"] = score, step + 1
                    best_state = {k: copy.deepcopy(m.state_dict()) for k, m in modules.items()}
            hist["seconds"] = time.perf_counter() - t0
            if ckpt is not None and rank == 0:
                ckpt.parent.mkdir(parents=True, exist_ok=True)
                tmp = ckpt.with_suffix(".tmp")
                torch.save(
                    {
                        "learner": learner.state(),
                        "optimizer": opt.state_dict(),
                        "history": hist,
                        "best_modules": best_state,
                        "step": step + 1,
                    },
                    tmp,
                )
                tmp.replace(ckpt)
    if best_state is not None:
        for k, m in modules.items():
            m.load_state_dict(best_state[k])
    for m in modules.values():
        m.eval()
    hist["seconds"] = time.perf_counter() - t0
    bad = hist.get("inner_unconverged", [])
    if bad and rank == 0:
        warnings.warn(
            f"{learner.name}: the inner fit of {sum(n for _, n in bad)} task(s) on {len(bad)} "
            f"meta-step(s) stopped before inner_tol (inner_max_iter reached), so their "
            "hypergradients were inexact; history['inner_unconverged'] lists [step, tasks]",
            RuntimeWarning,
            stacklevel=2,
        )
    learner.history = hist
    return hist
