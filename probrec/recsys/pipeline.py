"""The chronological LoopFM experiment: FM on an early period, VM variants on a later one.

Protocol (Jiang et al., "LoopFM", 2026; Liang et al., "ExFM", 2025), on one time-ordered log:

1. Periods by time: FM period (first ``fractions[0]`` of the events), VM period, test period.
   The last ``valid_fraction`` of each training period (by time) is its validation set for
   early stopping.
2. The FM is trained on its period only; its event embedding (last hidden layer of the top
   MLP) of every logged event is written to an
   :class:`~probrec.backbone.store.EmbeddingStore` keyed by ``(user, item, time)``, saved and
   memory-mapped back. FM logits of the VM-period events are the KD soft labels.
3. VM variants, each trained on the VM period with the same seed: ``VM``; ``VM+KD`` (FM
   predictions as soft labels); ``VM+LoopFM`` (histories of stored FM embeddings, strictly
   earlier events only); ``VM+LoopFM+KD``; ``VM+AuxHead`` (ExFM's auxiliary head); and,
   as an ablation, ``VM+LoopFM(untrained FM)`` (the same inputs from an untrained FM's store).
4. Every model is scored on the test period: AUC, log loss; transfer ratios against the FM.
"""

from __future__ import annotations

import argparse
import time
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probrec.argtypes import existing_path
from probrec.checks import check_choice, check_real
from probrec.data.movielens import InteractionLog
from probrec.recsys.features import EventTable, chronological_split
from probrec.recsys.loopfm import StoredHistory, fm_embeddings, write_fm_store
from probrec.recsys.models import FoundationModel, VerticalModel
from probrec.recsys.transfer import (
    TrainSpec,
    check_loss_settings,
    ctr_metrics,
    predict_logits,
    train_ctr,
    transfer_ratio,
)
from probrec.reporting import format_mean_se, mean_se_summary

__all__ = ["UNTRAINED", "VARIANTS", "LoopFMConfig", "load_log", "LoopFMRun", "run_loopfm"]

VARIANTS = ("VM", "VM+KD", "VM+LoopFM", "VM+LoopFM+KD", "VM+AuxHead")
#: ablation: LoopFM inputs read from a store written by an *untrained* FM (same architecture and
#: seed): separates what the history structure gives from what the FM's knowledge gives
UNTRAINED = "VM+LoopFM(untrained FM)"


@dataclass
class LoopFMConfig:
    """Sizes and settings of :func:`run_loopfm` (defaults: MovieLens-100k on one CPU thread).

    Attributes:
        fractions: FM period, VM period, test period (time quantiles).
        valid_fraction: last part (by time) of each training period used for early stopping.
        user_history: ``L``, user-history length (FM sequence, VM history, LoopFM history).
        item_history: ``K``, item-history length of the LoopFM item-side input.
        fm_emb, fm_hidden: FM embedding width and top-MLP widths (last = stored width ``d``).
        fm_dropout: dropout of the FM's top MLP.
        vm_emb, vm_hidden: VM embedding width and top-MLP widths.
        user_buckets, item_buckets, field_buckets: VM hashing-table sizes.
        fm_train, vm_train: training settings (the VM's KD / aux weights are set per variant).
        kd_weight, temperature: KD mixing weight and temperature.
        aux_weight: ExFM auxiliary-head weight.
        variants: which VM variants to train.
    """

    fractions: Sequence[float] = (0.7, 0.15, 0.15)
    valid_fraction: float = 0.1
    user_history: int = 50
    item_history: int = 20
    fm_emb: int = 16
    fm_hidden: Sequence[int] = (256, 128, 64)
    fm_dropout: float = 0.3
    vm_emb: int = 16
    vm_hidden: Sequence[int] = (64, 32)
    user_buckets: int = 1024
    item_buckets: int = 2048
    field_buckets: int = 64
    fm_train: TrainSpec = field(
        default_factory=lambda: TrainSpec(epochs=6, batch_size=512, lr=1e-3, patience=2)
    )
    vm_train: TrainSpec = field(
        default_factory=lambda: TrainSpec(epochs=15, batch_size=256, lr=2e-3, patience=3)
    )
    kd_weight: float = 0.5
    temperature: float = 1.0
    aux_weight: float = 1.0
    variants: Sequence[str] = VARIANTS

    def __post_init__(self) -> None:
        if len(self.fractions) != 3:  # "not enough values to unpack" deep in run_loopfm
            raise ValueError(
                f"fractions must give the FM, VM and test periods (3 values), got {self.fractions}"
            )
        if not 0.0 < check_real(self.valid_fraction, "valid_fraction") < 1.0:
            raise ValueError(f"valid_fraction must be in (0, 1), got {self.valid_fraction}")
        # these failed only after the FM and the first VM had trained
        check_loss_settings(self.kd_weight, self.temperature, self.aux_weight)


@dataclass
class LoopFMRun:
    """Results of one seed: test metrics per model, transfer ratios, timings, the store path."""

    seed: int
    metrics: dict[str, dict[str, float]]
    ratios: dict[str, float]
    seconds: dict[str, float]
    sizes: dict[str, int]
    store_path: str
    history: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def load_log(
    data: str | Path, fmt: str = "movielens", *, download: str | Path | None = None
) -> InteractionLog:
    """The log of the example scripts: a MovieLens folder (``fmt="movielens"``), a TaobaoAd CSV
    (``fmt="taobao"``), or MovieLens-100k downloaded into ``download`` first."""
    from probrec.data.movielens import download_movielens, load_movielens
    from probrec.data.taobao import load_taobao_ad

    check_choice(fmt, "fmt", ("movielens", "taobao"))
    if download:
        return load_movielens(download_movielens(download))
    return load_taobao_ad(data) if fmt == "taobao" else load_movielens(data)


def log_source_error(fmt: str, data: str | Path | None, download: str | Path | None) -> str | None:
    """Why the example scripts' ``--format`` / ``--data`` / ``--download`` cannot name a log
    (``None`` when they can; ``data=None`` then means the default MovieLens folder).

    A TaobaoAd CSV has no default (the MovieLens folder was read as a CSV), and ``--download``
    fetches MovieLens only.
    """
    if download and fmt != "movielens":
        return "--download fetches MovieLens-100k: it does not go with --format taobao"
    if data is None and fmt == "taobao" and not download:
        return "--format taobao needs --data, the TaobaoAd CSV"
    return None


def add_log_source_arguments(parser: argparse.ArgumentParser, default_data: Path) -> None:
    """Adds the example scripts' ``--data`` / ``--format`` / ``--download`` options."""
    parser.add_argument(
        "--data",
        type=existing_path("any"),
        default=None,
        help=f"MovieLens folder (default {default_data}) or TaobaoAd CSV (needed with --format "
        "taobao)",
    )
    parser.add_argument("--format", choices=("movielens", "taobao"), default="movielens")
    parser.add_argument(
        "--download", default=None, help="download MovieLens-100k into this folder and use it"
    )


def resolve_log_source(
    parser: argparse.ArgumentParser, args: argparse.Namespace, default_data: Path
) -> None:
    """Stops with a usage error naming the options when they cannot name a log
    (:func:`log_source_error`); else sets ``args.data`` (the default MovieLens folder when
    none was given)."""
    problem = log_source_error(args.format, args.data, args.download)
    if problem:
        parser.error(problem)
    args.data = str(default_data if args.data is None else args.data)


def _train_valid(index: np.ndarray, log: InteractionLog, frac: float) -> tuple[np.ndarray, ...]:
    """The period's events before / from its last ``frac`` (by time); a period with a single
    timestamp cannot be split and validates on its training events (tiny logs only)."""
    if len(np.unique(log.time[index])) < 2:
        warnings.warn(
            "a training period has one timestamp: validating on its training events",
            stacklevel=3,
        )
        return index, index
    tr, va = chronological_split(log.time[index], (1.0 - frac, frac))
    return index[tr], index[va]


def build_fm(table: EventTable, cfg: LoopFMConfig, seed: int) -> FoundationModel:
    """The :class:`FoundationModel` of the experiment, sized to the FM period's ids."""
    return FoundationModel(
        int(table.fm_user.max()) + 1,
        int(table.fm_item.max()) + 1,
        table.field_cardinalities,
        table.n_multi_hot,
        emb_dim=cfg.fm_emb,
        hidden=cfg.fm_hidden,
        max_history=cfg.user_history,
        dropout=cfg.fm_dropout,
        seed=seed,
    )


def build_vm(table: EventTable, cfg: LoopFMConfig, variant: str, fm_dim: int, seed: int):
    """The :class:`VerticalModel` of a variant."""
    return VerticalModel(
        table.field_cardinalities,
        table.n_multi_hot,
        emb_dim=cfg.vm_emb,
        hidden=cfg.vm_hidden,
        user_buckets=cfg.user_buckets,
        item_buckets=cfg.item_buckets,
        field_buckets=cfg.field_buckets,
        fm_dim=fm_dim if "LoopFM" in variant else None,
        max_history=cfg.user_history,
        aux_head=variant == "VM+AuxHead",
        seed=seed,
    )


def run_loopfm(
    log: InteractionLog,
    out_dir: str | Path,
    *,
    seed: int = 0,
    config: LoopFMConfig | None = None,
    progress: bool | None = False,
    verbose: bool = True,
    device: torch.device | str = "cpu",
) -> tuple[LoopFMRun, dict[str, Any]]:
    """Runs the protocol of the module docstring for one seed.

    Args:
        log: time-ordered events.
        out_dir: where the FM store (``fm_store_seed<k>``) is written.
        seed: seed of every model and of the shuffling.
        config: sizes and settings.
        progress: progress bars.
        verbose: print one line per trained model.
        device: where the models train and the stored vectors are read (models are initialised
            on the CPU, so a seed gives the same initial weights on every device).

    Returns:
        ``(run, objects)`` -- the results, and the trained models, event table, store and
        split indices (for the cold-start study and the benchmark).
    """
    cfg = config or LoopFMConfig()
    unknown = [v for v in cfg.variants if v not in (*VARIANTS, UNTRAINED)]
    if unknown:
        raise ValueError(f"unknown variants {unknown}; choose from {[*VARIANTS, UNTRAINED]}")
    out_dir = Path(out_dir)
    fm_idx, vm_idx, test_idx = chronological_split(log.time, cfg.fractions)
    fm_tr, fm_va = _train_valid(fm_idx, log, cfg.valid_fraction)
    vm_tr, vm_va = _train_valid(vm_idx, log, cfg.valid_fraction)
    table = EventTable.build(
        log, fm_idx, user_history=cfg.user_history, item_history=cfg.item_history
    )
    seconds: dict[str, float] = {}
    metrics: dict[str, dict[str, float]] = {}
    history: dict[str, Any] = {}
    test_y = log.label[test_idx]

    t0 = time.perf_counter()

    fm = build_fm(table, cfg, seed).to(device)
    history["FM"] = train_ctr(fm, table, fm_tr, fm_va, cfg.fm_train, seed=seed, progress=progress)
    seconds["FM"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    store = write_fm_store(fm, table, out_dir / f"fm_store_seed{seed}", overwrite=True)
    _, fm_logit_all = fm_embeddings(fm, table, np.arange(len(log)))
    seconds["store"] = time.perf_counter() - t0
    metrics["FM"] = ctr_metrics(test_y, fm_logit_all[test_idx])
    if verbose:
        print(f"  seed {seed} FM: {metrics['FM']} ({seconds['FM']:.0f} s)", flush=True)
    stored = StoredHistory(store, table, device)
    untrained = None
    if UNTRAINED in cfg.variants:
        path = out_dir / f"fm_store_untrained_seed{seed}"
        fm0 = build_fm(table, cfg, seed).to(device)
        untrained = StoredHistory(write_fm_store(fm0, table, path, overwrite=True), table, device)

    models: dict[str, VerticalModel] = {}
    for variant in cfg.variants:
        t0 = time.perf_counter()
        vm = build_vm(table, cfg, variant, store.dim, seed).to(device)
        spec = TrainSpec(**{**asdict(cfg.vm_train)})
        if "KD" in variant:
            spec.kd_weight, spec.temperature = cfg.kd_weight, cfg.temperature
        if variant == "VM+AuxHead":
            spec.aux_weight, spec.temperature = cfg.aux_weight, cfg.temperature
        inputs = (untrained if variant == UNTRAINED else stored) if "LoopFM" in variant else None
        if inputs is not None:  # standardise with the stored vectors of the VM's training events
            vm.set_fm_scaling(inputs.event_vectors(vm_tr))
        history[variant] = train_ctr(
            vm,
            table,
            vm_tr,
            vm_va,
            spec,
            inputs=inputs,
            teacher_logit=fm_logit_all,
            seed=seed,
            progress=progress,
        )
        logit = predict_logits(vm, table, test_idx, inputs=inputs)
        metrics[variant] = ctr_metrics(test_y, logit)
        seconds[variant] = time.perf_counter() - t0
        models[variant] = vm
        if verbose:
            print(f"  seed {seed} {variant}: {metrics[variant]} ({seconds[variant]:.0f} s)")
    ratios = {}
    if "VM" in metrics:
        for v in cfg.variants:
            if v != "VM":
                ratios[v] = transfer_ratio(
                    metrics[v]["auc"], metrics["VM"]["auc"], metrics["FM"]["auc"]
                )
    run = LoopFMRun(
        seed,
        metrics,
        ratios,
        seconds,
        {
            "fm_train": len(fm_tr),
            "fm_valid": len(fm_va),
            "vm_train": len(vm_tr),
            "vm_valid": len(vm_va),
            "test": len(test_idx),
            "fm_params": sum(p.numel() for p in fm.parameters()),
            "vm_params": sum(p.numel() for p in models["VM"].parameters()) if "VM" in models else 0,
        },
        str(out_dir / f"fm_store_seed{seed}"),
        history,
    )
    objects = {
        "fm": fm,
        "vms": models,
        "table": table,
        "store": store,
        "stored": stored,
        "fm_logit": fm_logit_all,
        "split": {"fm": fm_idx, "vm": vm_idx, "test": test_idx, "vm_train": vm_tr},
    }
    return run, objects


def summarize_runs(runs: Sequence[LoopFMRun]) -> dict[str, Any]:
    """Mean and standard error across seeds of every metric, transfer ratio and AUC gain.

    The gain decomposition uses paired per-seed differences (same seed, same data):
    ``KD``, ``LoopFM``, ``LoopFM+KD`` and ``AuxHead`` against ``VM``; ``LoopFM`` split into the
    history structure (untrained-FM store against ``VM``) and the FM's knowledge (trained
    against untrained store), when the ablation ran; and the interaction
    ``(LoopFM+KD - VM) - (LoopFM - VM) - (KD - VM)`` (positive: complementary).

    Returns:
        ``{"metrics": model -> metric -> {mean, se, n}, "ratios": ..., "gains": ...}``.
    """
    if not runs:
        raise ValueError("runs is empty")
    models = list(runs[0].metrics)
    for r in runs[1:]:  # other models were dropped (or a bare KeyError)
        if set(r.metrics) != set(models):
            raise ValueError(
                f"runs must have trained the same models: seed {runs[0].seed} has "
                f"{sorted(models)}, seed {r.seed} has {sorted(r.metrics)}"
            )
    out: dict[str, Any] = {
        "metrics": {
            m: {k: mean_se_summary([r.metrics[m][k] for r in runs]) for k in ("auc", "logloss")}
            for m in models
        },
        "ratios": {v: mean_se_summary([r.ratios[v] for r in runs]) for v in runs[0].ratios},
    }
    auc = {m: np.array([r.metrics[m]["auc"] for r in runs]) for m in models}
    gains: dict[str, np.ndarray] = {}
    pairs = [
        ("FM over VM (the gap to close)", "FM", "VM"),
        ("KD", "VM+KD", "VM"),
        ("ExFM auxiliary head", "VM+AuxHead", "VM"),
        ("LoopFM", "VM+LoopFM", "VM"),
        ("  history structure (untrained-FM store)", UNTRAINED, "VM"),
        ("  FM knowledge (trained - untrained store)", "VM+LoopFM", UNTRAINED),
        ("KD on top of LoopFM", "VM+LoopFM+KD", "VM+LoopFM"),
        ("LoopFM+KD", "VM+LoopFM+KD", "VM"),
    ]
    for name, a, b in pairs:
        if a in auc and b in auc:
            gains[name] = auc[a] - auc[b]
    if all(k in auc for k in ("VM", "VM+KD", "VM+LoopFM", "VM+LoopFM+KD")):
        gains["interaction (LoopFM+KD) - LoopFM - KD"] = (
            auc["VM+LoopFM+KD"] - auc["VM+LoopFM"] - auc["VM+KD"] + auc["VM"]
        )
    out["gains"] = {k: mean_se_summary(v) for k, v in gains.items()}
    return out


def summary_markdown(summary: dict[str, Any]) -> str:
    """The three tables of :func:`summarize_runs` as markdown."""

    def cell(d: dict[str, float], fmt: str = ".4f") -> str:
        return format_mean_se(d, fmt.lstrip("+"), signed=fmt.startswith("+"))

    lines = ["| model | test AUC | test log loss | transfer ratio |", "|---|---|---|---|"]
    for m, d in summary["metrics"].items():
        r = summary["ratios"].get(m)
        lines.append(
            f"| {m} | {cell(d['auc'])} | {cell(d['logloss'])} | {cell(r, '.2f') if r else '-'} |"
        )
    lines += ["", "| AUC gain (paired over seeds) | mean +- s.e. |", "|---|---|"]
    lines += [f"| {k} | {cell(v, '+.4f')} |" for k, v in summary["gains"].items()]
    n = next(iter(summary["metrics"].values()))["auc"]["n"]
    return f"mean +- standard error over {n} seed(s)\n\n" + "\n".join(lines)
