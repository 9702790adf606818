"""Shared pieces of the benchmark scripts: options, timing, peak memory, data, JSON output.

Every benchmark script takes the options of :func:`add_common_arguments`, times its variants
with :func:`time_interleaved` (warm-up calls, then repeats that alternate between the
variants so that a change of machine load hits all of them alike), summarises each variant by
the median and the spread of its repeats (:func:`summarize`) and writes one JSON file
(:func:`write_json`) holding the configuration, the environment, every raw timing and the
ratio measured in the same run.

Peak memory (:func:`peak_memory_bytes`) is the high-water mark of tensor memory allocated
during one call above what was allocated before it: ``torch.cuda.max_memory_allocated`` on
CUDA, and on CPU the running sum of the allocation and free events that torch's profiler
records (``profile_memory=True``), which counts the same thing for the CPU allocator.
:func:`rss_peak_of_subprocess` measures the process's peak resident set size instead, in a
fresh interpreter, as an independent cross-check.

These scripts are run from the repository root as ``python benchmarks/<name>.py``; they import
this module as ``_common`` (the script's folder is on ``sys.path``).
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from probrec.argtypes import path_or_word, single_seed, whole
from probrec.reporting import json_safe
from probrec.runrecord import code_version

REPO = Path(__file__).resolve().parents[1]
DEFAULT_TOXCAST = (
    REPO.parent / "shared" / "data" / "molecules" / "moleculenet" / "toxcast_500.csv.gz"
)


CLOCKS = ("wall", "cpu")


# ---------------------------------------------------------------------------- options


def add_common_arguments(
    parser: argparse.ArgumentParser, name: str, *, repeats: int = 5, data: bool = True
) -> None:
    """Adds ``--device --threads --repeats --warmup --clock --seed --out`` to ``parser``, and
    ``--data`` (a ToxCast CSV, ``auto`` or ``none``) unless ``data`` is false.

    Counts, seeds and the ``--data`` path are checked by their argparse types: a bad value is a
    usage error naming the option (exit status 2) before any data is loaded.
    """
    default_device = "cuda" if torch.cuda.is_available() else "cpu"
    parser.add_argument(
        "--device",
        default=default_device,
        help=f"torch device to run on (default: {default_device})",
    )
    parser.add_argument(
        "--threads",
        type=whole(1),
        default=os.cpu_count() or 1,
        help="torch.set_num_threads (default: all cores, %(default)s here)",
    )
    parser.add_argument(
        "--repeats",
        type=whole(1),
        default=repeats,
        help="timed repeats per variant; the median is reported (default %(default)s)",
    )
    parser.add_argument(
        "--warmup",
        type=whole(0),
        default=1,
        help="untimed warm-up calls per variant (default %(default)s)",
    )
    parser.add_argument(
        "--clock",
        choices=CLOCKS,
        default="wall",
        help="'wall' (default): elapsed time; 'cpu': CPU time of this process (all threads), "
        "which leaves out time spent waiting for a core on a shared machine (CPU only)",
    )
    parser.add_argument(
        "--seed",
        type=single_seed,
        default=0,
        help="seed of the data and models (default %(default)s)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / f"{name}.json",
        help="JSON output file (default: %(default)s)",
    )
    if data:
        parser.add_argument(
            "--data",
            type=path_or_word("file"),
            default="auto",
            help="ToxCast CSV (MoleculeNet format) to draw real tasks from; 'auto' (default) "
            f"uses {DEFAULT_TOXCAST.relative_to(REPO.parent)} beside the repository when it "
            "exists, 'none' uses synthetic ECFP-like count features",
        )


def setup(args: argparse.Namespace) -> torch.device:
    """Applies ``--threads`` and ``--seed`` and returns the ``--device``.

    Raises:
        ValueError: a non-positive count, or a CUDA device asked for where there is none.
    """
    for key in ("threads", "repeats"):
        if getattr(args, key) < 1:
            raise ValueError(f"--{key} must be >= 1, got {getattr(args, key)}")
    if args.warmup < 0:
        raise ValueError(f"--warmup must be >= 0, got {args.warmup}")
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for but torch sees no CUDA device")
    if getattr(args, "clock", "wall") == "cpu" and device.type != "cpu":
        raise ValueError("--clock cpu measures host CPU time; use --clock wall on a GPU")
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    np.random.seed(args.seed % 2**32)
    return device


def resolve_data(value: str | os.PathLike | None) -> Path | None:
    """``--data`` to a path (real ToxCast tasks) or ``None`` (synthetic tasks).

    Raises:
        FileNotFoundError: an explicit path that does not exist.
    """
    if value is None or str(value).lower() == "none":
        return None
    if str(value).lower() == "auto":
        return DEFAULT_TOXCAST if DEFAULT_TOXCAST.is_file() else None
    path = Path(value)
    if not path.is_file():
        raise FileNotFoundError(f"--data {path} does not exist")
    return path


# ---------------------------------------------------------------------------- timing
def synchronize(device: torch.device) -> None:
    """Waits for queued kernels on ``device`` (no-op on CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], Any], device: torch.device, clock: str = "wall") -> float:
    """Time of one call of ``fn`` in seconds (device work included).

    ``clock="wall"``: elapsed time; ``"cpu"``: CPU time of the process (``time.process_time``,
    all threads), which excludes waiting for a core when other jobs share the machine.
    Python's garbage collector is paused during the call, as ``timeit`` does.
    """
    now = time.perf_counter if clock == "wall" else time.process_time
    enabled = gc.isenabled()
    gc.disable()
    try:
        synchronize(device)
        t0 = now()
        fn()
        synchronize(device)
        return now() - t0
    finally:
        if enabled:
            gc.enable()


def time_interleaved(
    fns: dict[str, Callable[[], Any]],
    repeats: int,
    warmup: int,
    device: torch.device,
    clock: str = "wall",
) -> dict[str, list[float]]:
    """Times every function ``repeats`` times after ``warmup`` untimed calls each.

    Repeat ``r`` calls the functions in an order rotated by ``r``, so that slow phases of a
    shared machine fall on every variant alike and per-repeat ratios are meaningful.

    Returns:
        Seconds per call, ``{name: [repeats]}``.
    """
    names = list(fns)
    for name in names:
        for _ in range(warmup):
            fns[name]()
    out: dict[str, list[float]] = {name: [] for name in names}
    gc.collect()
    for r in range(repeats):
        k = r % len(names)
        for name in names[k:] + names[:k]:
            out[name].append(timed(fns[name], device, clock))
    return out


def summarize(values: Sequence[float]) -> dict[str, float]:
    """Median, quartiles, extremes, mean and standard error of the mean of ``values``."""
    v = sorted(float(x) for x in values)
    n = len(v)
    if n == 0:
        raise ValueError("values is empty")
    q1, q3 = (float(np.quantile(v, 0.25)), float(np.quantile(v, 0.75))) if n > 1 else (v[0], v[0])
    sem = statistics.stdev(v) / math.sqrt(n) if n > 1 else float("nan")
    return {
        "median": statistics.median(v),
        "q1": q1,
        "q3": q3,
        "min": v[0],
        "max": v[-1],
        "mean": statistics.fmean(v),
        "sem": sem,
        "n": n,
    }


def ratio_summary(numerator: Sequence[float], denominator: Sequence[float]) -> dict[str, float]:
    """``median(numerator) / median(denominator)`` and the spread of per-repeat ratios."""
    per = [a / b for a, b in zip(numerator, denominator)]
    s = summarize(per)
    return {
        "ratio_of_medians": statistics.median(numerator) / statistics.median(denominator),
        "per_repeat": per,
        "per_repeat_median": s["median"],
        "per_repeat_min": s["min"],
        "per_repeat_max": s["max"],
    }


# ---------------------------------------------------------------------------- memory
def _cpu_peak_from_profiler(fn: Callable[[], Any]) -> int:
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        fn()
    events = sorted(
        (e.start_ns(), e.nbytes())
        for e in prof.profiler.kineto_results.events()
        if e.name() == "[memory]" and e.device_type() == torch.autograd.DeviceType.CPU
    )
    current = peak = 0
    for _, nbytes in events:
        current += nbytes
        peak = max(peak, current)
    return peak


def peak_memory_bytes(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak tensor memory allocated by one call of ``fn`` above the memory held before it.

    CUDA: ``torch.cuda.max_memory_allocated`` after a reset. CPU: the high-water mark of the
    running sum of the allocator events recorded by ``torch.profiler`` (``profile_memory``).
    """
    gc.collect()
    if device.type == "cuda":
        synchronize(device)
        torch.cuda.empty_cache()
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        fn()
        synchronize(device)
        return int(torch.cuda.max_memory_allocated(device) - base)
    return int(_cpu_peak_from_profiler(fn))


def _status_kib(field: str) -> int:
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not found in /proc/self/status")


def _malloc_trim() -> None:
    """Returns glibc's free heap pages to the system, so that reusing them shows as growth."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def rss_probe(fn: Callable[[], Any]) -> dict[str, int]:
    """Inside a fresh process: peak RSS growth of one call of ``fn`` after one warm-up call.

    The warm-up pays one-time costs (thread pools, lazy initialisation); free heap pages are
    handed back (``malloc_trim``) and the kernel's high-water mark is reset through
    ``/proc/self/clear_refs``, so that ``VmHWM`` minus the ``VmRSS`` before the call is the
    call's own peak (tensors and any other memory the call touches). Run with
    ``MALLOC_MMAP_THRESHOLD_`` set (see :func:`rss_peak_of_subprocess`) so that freed tensors go
    back to the system.
    """
    fn()
    gc.collect()
    _malloc_trim()
    with open("/proc/self/clear_refs", "w") as fh:
        fh.write("5")
    base = _status_kib("VmRSS")
    fn()
    peak = _status_kib("VmHWM")
    return {"rss_before_kib": base, "peak_rss_kib": peak, "peak_growth_bytes": (peak - base) * 1024}


def rss_peak_of_subprocess(argv: Sequence[str], timeout: float = 1800.0) -> dict[str, Any]:
    """Runs ``python argv...`` in a fresh process that prints one JSON line from :func:`rss_probe`.

    ``MALLOC_MMAP_THRESHOLD_=65536`` makes glibc serve and return blocks of 64 KiB and more
    with ``mmap``, so that the resident set follows the live tensors.

    Raises:
        RuntimeError: the probe failed (its stderr is quoted).
    """
    env = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536"}
    proc = subprocess.run(
        [sys.executable, *argv],
        capture_output=True,
        text=True,
        env=env,
        timeout=timeout,
        check=False,
    )
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        raise RuntimeError(
            f"memory probe {argv} failed ({proc.returncode}):\n{proc.stderr[-2000:]}"
        )
    return json.loads(lines[-1])


# ---------------------------------------------------------------------------- data
@dataclass
class TaskBatch:
    """Support and query sets of several classification tasks, as float32 arrays.

    Attributes:
        support_x: ``[T, n_s, d]``; support_y: ``[T, n_s]`` (0/1).
        query_x: ``[T, n_q, d]``; query_y: ``[T, n_q]``.
        names: task names; source: where the tasks came from.
    """

    support_x: np.ndarray
    support_y: np.ndarray
    query_x: np.ndarray
    query_y: np.ndarray
    names: list[str]
    source: str


def ecfp_like_tasks(n_tasks: int, n_rows: int, dim: int = 2048, seed: int = 0) -> list:
    """Synthetic classification tasks on ECFP-like count fingerprints.

    Each molecule sets about 45 bits (Poisson) drawn from a skewed bit-frequency profile
    shared by all tasks (a few bits common, most rare), with counts ``1 + Poisson(0.5)``.
    Task ``t`` labels a molecule active when ``x . w_t`` is above the task's quantile
    (positive fraction 20-50 %), with ``w_t`` a task-specific perturbation of a shared sparse
    weight vector, so the tasks share structure as real assays do.

    Returns:
        ``n_tasks`` featurised :class:`probrec.data.Task` s with ``[n_rows, dim]`` inputs.
    """
    from probrec.data import Task

    rng = np.random.default_rng(seed)
    freq = rng.pareto(1.2, size=dim) + 1e-3
    freq /= freq.sum()
    w_shared = rng.standard_normal(dim) * (rng.random(dim) < 0.05)
    tasks = []
    for t in range(n_tasks):
        x = np.zeros((n_rows, dim), dtype=np.float32)
        n_bits = np.clip(rng.poisson(45, size=n_rows), 5, dim)
        for i, k in enumerate(n_bits):
            bits = rng.choice(dim, size=k, replace=False, p=freq)
            x[i, bits] = 1.0 + rng.poisson(0.5, size=k)
        w = w_shared + 0.5 * rng.standard_normal(dim) * (rng.random(dim) < 0.05)
        score = x @ w + 0.1 * rng.standard_normal(n_rows)
        y = (score > np.quantile(score, rng.uniform(0.5, 0.8))).astype(np.float64)
        tasks.append(Task(x, y, "classification", f"ecfp-like-{t}"))
    return tasks


def toxcast_tasks(
    path: Path, n_tasks: int, min_rows: int, seed: int = 0, *, descriptors: bool = False
) -> list:
    """``n_tasks`` ToxCast assays with at least ``min_rows`` labelled molecules, featurised.

    Assays are drawn with ``seed`` among those with ``min_rows`` rows and at least 4 molecules
    of each class; inputs are Morgan count fingerprints (radius 2, 2048 bins), plus the 217
    standardised RDKit descriptors (2265 columns) with ``descriptors``.

    Raises:
        ValueError: fewer than ``n_tasks`` assays qualify.
    """
    from probrec.data import MoleculeFeaturizer, featurize_tasks, load_moleculenet

    tasks = load_moleculenet(path)
    ok = [t for t in tasks if len(t) >= min_rows and 4 <= t.labels.sum() <= len(t) - 4]
    if len(ok) < n_tasks:
        raise ValueError(
            f"only {len(ok)} assays in {path} have >= {min_rows} rows; asked for {n_tasks}"
        )
    rng = np.random.default_rng(seed)
    chosen = [ok[int(i)] for i in sorted(rng.choice(len(ok), size=n_tasks, replace=False))]
    feat = MoleculeFeaturizer(descriptors=descriptors, progress=False)
    return featurize_tasks(chosen, feat, fit_on=chosen if descriptors else None)


def load_tasks(
    data: Path | None,
    n_tasks: int,
    n_rows: int,
    seed: int = 0,
    *,
    dim: int = 2048,
    descriptors: bool = False,
) -> tuple[list, str]:
    """``n_tasks`` real (``data``, a ToxCast CSV) or synthetic (``None``) tasks of >= ``n_rows``.

    Returns:
        The featurised tasks and a description of where they came from.
    """
    if data is None:
        return ecfp_like_tasks(
            n_tasks, n_rows, dim, seed
        ), f"synthetic ECFP-like counts (dim {dim}, seed {seed})"
    extra = " + descriptors" if descriptors else ""
    tasks = toxcast_tasks(data, n_tasks, n_rows, seed, descriptors=descriptors)
    return tasks, f"{data.name} (Morgan counts{extra}, seed {seed})"


def episodes_batch(tasks: Sequence, support: int, query: int, seed: int, source: str) -> TaskBatch:
    """One stratified episode (FS-Mol sampler) per task, seeded ``seed + i``, as a TaskBatch."""
    from probrec.data import sample_episode

    eps = [sample_episode(t, support, query, seed=seed + i) for i, t in enumerate(tasks)]
    return TaskBatch(
        np.stack([np.asarray(e.support_x, dtype=np.float32) for e in eps]),
        np.stack([e.support_y for e in eps]),
        np.stack([np.asarray(e.query_x, dtype=np.float32) for e in eps]),
        np.stack([e.query_y for e in eps]),
        [t.name for t in tasks],
        source,
    )


def task_batch(
    data: Path | None,
    n_tasks: int,
    support: int,
    query: int,
    seed: int = 0,
    *,
    dim: int = 2048,
    descriptors: bool = False,
) -> TaskBatch:
    """Episodes of ``n_tasks`` tasks: :func:`load_tasks` then :func:`episodes_batch`.

    Args:
        data: ToxCast CSV (real assays) or ``None`` (:func:`ecfp_like_tasks` of width ``dim``).
        n_tasks: number of tasks.
        support: support rows per task.
        query: query rows per task.
        seed: seed of the task choice and of every episode.
        dim: width of the synthetic features.
        descriptors: add RDKit descriptors to real features.
    """
    tasks, source = load_tasks(
        data, n_tasks, support + query, seed, dim=dim, descriptors=descriptors
    )
    return episodes_batch(tasks, support, query, seed, source)


# ---------------------------------------------------------------------------- output
def environment(device: torch.device) -> dict[str, Any]:
    """Versions (probrec's git commit included), threads, processor and load of the machine
    the numbers come from."""
    info: dict[str, Any] = {
        **code_version(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "platform": platform.platform(),
        "processor": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "load_average": list(os.getloadavg()) if hasattr(os, "getloadavg") else None,
        "time": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    if device.type == "cuda":
        info["cuda_device"] = torch.cuda.get_device_name(device)
    return info


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor()


def write_json(path: Path, payload: dict[str, Any]) -> Path:
    """Writes ``payload`` as indented JSON, creating the folder."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_safe(payload), indent=2, default=_json_default) + "\n")
    return path


def _json_default(obj: Any) -> Any:
    """What :func:`~probrec.reporting.json_safe` leaves for ``json.dumps`` to ask about
    (tensors, arrays and NumPy numbers it has already converted)."""
    if isinstance(obj, np.generic):
        return obj.item()
    if isinstance(obj, Path):
        return str(obj)
    raise TypeError(f"cannot write {type(obj).__name__} to JSON")


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """A plain-text table with right-aligned columns (markdown-compatible)."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["| " + " | ".join(c.rjust(w) for c, w in zip(r, widths)) + " |" for r in cells]
    lines.insert(1, "|" + "|".join("-" * (w + 1) + ":" for w in widths) + "|")
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if isinstance(value, float):
        if value != value:
            return "nan"
        a = abs(value)
        if a != 0 and (a < 1e-3 or a >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4g}" if a < 100 else f"{value:.1f}"
    return str(value)


def fmt_spread(s: dict[str, float], scale: float = 1.0, unit: str = "") -> str:
    """``median [min, max]`` of a :func:`summarize` result, times ``scale``."""
    return f"{s['median'] * scale:.4g}{unit} [{s['min'] * scale:.4g}, {s['max'] * scale:.4g}]"
