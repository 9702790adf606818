"""``probrec bench samplers``: samplers on multimodal targets at equal budget.

For every target, sampler, budget (target evaluations per sample) and seed the runner draws
``--n-samples`` samples, scores them against exact or reference samples and writes one row:

- ``mog40``: MMD^2 (biased V-statistic, RBF bandwidths 1, 2, 5, 10, 20) against as many exact
  samples, its noise floor (MMD^2 between two further independent exact draws of the same size,
  same seed), mode coverage, mode-weight TV and the relative error of ``E ||x||^2``;
- ``mw32`` (Many-Well-32): W1 / W2 between energy histograms against exact samples, with the same
  floor; also against the long-MCMC reference file when ``--data`` holds it;
- ``dw4``, ``lj13``: W1 / W2 of energy histograms and W1 of interatomic-distance histograms
  against the reference samples in ``--data`` (floor: a reference subset of the samples' size
  against the rest of the reference);
- ``lj55``: the mean energy (no reference samples are known to the runner);
- ``bnn``: test NLL (the DiGS paper's expected NLL and the predictive NLL) on the posterior of
  the teacher data of seed 0 (the seeds vary the samplers); ``map`` adds the MAP baseline.

Regimes: ``--chains 0`` (default) runs one independent chain per sample (the sample is the
chain's last state); ``--chains 10`` runs 10 long chains that keep ``n_samples / 10`` states
each after burn-in (the DiGS paper's MoG-40 setting). Sampler settings per target are in
:data:`SAMPLER_SETTINGS` and can be overridden with ``--settings '{"digs": {"n_mala": 2}}'``.
``pt`` is parallel tempering tuned per target (MALA inside on MoG-40, which beat HMC inside at
equal budget in our tuning runs); ``pt_hmc`` is the DiGS paper's baseline (HMC inside).

Outputs in ``--out``: ``results.json`` (configuration, environment, rows), ``results.csv``,
and PNG figures: samples over the 40 modes (MoG-40), energy and distance histograms
(Many-Well, DW-4, LJ), and metric against budget.
"""

from __future__ import annotations

import argparse
import copy
import csv
import inspect
import json
import platform
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from probrec.argtypes import (
    choice_list,
    existing_path,
    float_list,
    json_objects_by_name,
    seed_list,
    whole,
)
from probrec.cli import UsageError
from probrec.progress import track
from probrec.reporting import json_safe, mean_and_se
from probrec.runrecord import code_version

from . import metrics
from .base import Sampler, SamplerResult
from .diffusion import NeuralSampler
from .digs import DiGS
from .dikl import PRESETS as DIKL_PRESETS
from .dikl import DiKL
from .mcmc import HMC, MALA, RandomWalkMetropolis
from .ptsd import PRESETS as PTSD_PRESETS
from .ptsd import PTSD
from .targets import BNNPosterior, DoubleWell4, LennardJones, ManyWell, MoG40, Target
from .tempering import ParallelTempering

__all__ = [
    "add_arguments",
    "run",
    "SAMPLER_SETTINGS",
    "make_sampler",
    "make_target",
    "evaluate",
    "sampler_settings",
]

REFERENCE_FILES = {
    "dw4": "samplers/dw4_reference_10000.npy",
    "lj13": "samplers/lj13_reference_10000.npy",
    "mw32": "samplers/mw32_reference_1888.npy",
}

# sampler settings per target (tuned on seeds other than the benchmark's where noted in the docs)


def _pt(kernel: str, max_t: float, step: float | None, n_leapfrog: int = 5) -> dict[str, Any]:
    """Parallel-tempering settings: 5 geometric temperatures from 1 to ``max_t``."""
    out: dict[str, Any] = {"kernel": kernel, "n_temperatures": 5, "max_temperature": max_t}
    if kernel == "hmc":
        out["n_leapfrog"] = n_leapfrog
    if step is not None:
        out["step_size"] = step
    return out


def _settings(
    digs: dict[str, Any],
    pt: dict[str, Any],
    pt_hmc: dict[str, Any] | None,
    mala: float,
    hmc: tuple[int, float],
    rwm: float,
) -> dict[str, dict[str, Any]]:
    """One target's settings: DiGS, the two PT variants, MALA / RWM step sizes, HMC (L, step)."""
    out = {
        "digs": digs,
        "pt": pt,
        "mala": {"step_size": mala},
        "hmc": {"n_leapfrog": hmc[0], "step_size": hmc[1]},
        "rwm": {"step_size": rwm},
    }
    if pt_hmc is not None:
        out["pt_hmc"] = pt_hmc
    return out


def _particles(digs_step: float, step: float, mala: float, rwm: float) -> dict[str, dict]:
    """LJ settings: DiGS at one noise level, PT with HMC inside (both PT variants)."""
    return _settings(
        {"alphas": [0.8], "n_mala": 9, "step_size": digs_step},
        _pt("hmc", 10.0, step),
        _pt("hmc", 10.0, step),
        mala,
        (5, step),
        rwm,
    )


SAMPLER_SETTINGS: dict[str, dict[str, dict[str, Any]]] = {
    "mog40": _settings(
        {"alphas": [0.05], "n_mala": 1, "step_size": 1.0},
        _pt("mala", 1000.0, 0.5),
        _pt("hmc", 1000.0, 0.5, n_leapfrog=10),
        0.5,
        (10, 0.5),
        1.0,
    ),
    "mw32": _settings(
        {"alphas": [0.5, 0.9], "n_mala": 3, "step_size": 0.05},
        _pt("mala", 10.0, 0.05),
        _pt("hmc", 10.0, 0.1),
        0.05,
        (5, 0.1),
        0.2,
    ),
    "dw4": _settings(
        {"alphas": [0.7], "n_mala": 4, "step_size": 0.05},
        _pt("hmc", 10.0, 0.1),
        _pt("hmc", 10.0, 0.1),
        0.05,
        (5, 0.1),
        0.2,
    ),
    "lj13": _particles(0.001, 0.01, 0.001, 0.02),
    "lj55": _particles(0.001, 0.005, 0.001, 0.01),
    "bnn": _settings(
        {"alphas": [0.9], "n_mala": 5, "step_size": 1e-4},
        _pt("hmc", 10.0, None, n_leapfrog=10),
        None,
        1e-4,
        (10, 1e-3),
        1e-3,
    ),
}
# neural samplers (PTSD, DiKL): their CPU presets; with a budget, PTSD derives its MCMC steps
# and DiKL its training iterations from it (independent draws only: --chains 0)
SAMPLER_SETTINGS["mog40"]["ptsd"] = dict(PTSD_PRESETS["mog40"])
SAMPLER_SETTINGS["mw32"]["ptsd"] = dict(PTSD_PRESETS["mw32"])
SAMPLER_SETTINGS["mog40"]["dikl"] = dict(DIKL_PRESETS["mog40"])
SAMPLERS: dict[str, Callable[..., Sampler | PTSD | DiKL]] = {
    "digs": DiGS,
    "pt": ParallelTempering,
    "pt_hmc": ParallelTempering,
    "mala": MALA,
    "hmc": HMC,
    "rwm": RandomWalkMetropolis,
    "ptsd": PTSD,
    "dikl": DiKL,
}
TARGETS = ("mog40", "mw32", "dw4", "lj13", "lj55", "bnn")
PRIMARY_METRIC = {
    "mog40": ("mmd2", "mmd2_floor"),
    "mw32": ("energy_w1", "energy_w1_floor"),
    "dw4": ("energy_w1", "energy_w1_floor"),
    "lj13": ("energy_w1", "energy_w1_floor"),
    "lj55": ("energy_mean", None),  # no reference file: the table and figure were empty
    "bnn": ("test_nll", None),
}


def make_target(name: str, data: Path | None, seed: int = 0) -> Target:
    """The benchmark target ``name`` (reference files looked up under ``data``; ``seed`` is the
    BNN's teacher seed)."""
    if name == "mog40":
        return MoG40()
    if name == "mw32":
        return ManyWell(32)
    if name == "dw4":
        return DoubleWell4(reference_path=_ref_path(data, "dw4"))
    if name == "lj13":
        return LennardJones(13, reference_path=_ref_path(data, "lj13"))
    if name == "lj55":
        return LennardJones(55, reference_path=_ref_path(data, "lj55"))
    if name == "bnn":
        return BNNPosterior(seed=seed)
    raise ValueError(f"unknown target {name!r}; expected one of {list(TARGETS)}")


def _ref_path(data: Path | None, name: str) -> Path | None:
    if data is None or name not in REFERENCE_FILES:
        return None
    p = data / REFERENCE_FILES[name]
    return p if p.is_file() else None


def make_sampler(
    name: str,
    target_name: str,
    *,
    n_chains: int | None,
    budget: float,
    compile: bool | str = "auto",
    progress: bool | None = False,
    overrides: dict[str, Any] | None = None,
) -> Sampler | PTSD | DiKL:
    """A sampler configured for ``target_name`` with ``budget`` evaluations per sample."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)} or 'map'")
    settings = dict(SAMPLER_SETTINGS.get(target_name, {}).get(name, {}))
    settings.update((overrides or {}).get(name, {}))
    return SAMPLERS[name](
        n_chains=n_chains, budget=budget, compile=compile, progress=progress, **settings
    )


def _exact(target: Target, n: int, seed: int) -> torch.Tensor:
    return target.sample(n, seed=seed)


def evaluate(
    target_name: str,
    target: Target,
    samples: torch.Tensor,
    seed: int,
    cache: dict[str, Any],
) -> dict[str, Any]:
    """Metrics of ``samples`` (``n x d``) for the benchmark ``target_name``.

    ``cache`` keeps reference draws and noise floors across calls with the same seed and size.
    """
    n = samples.shape[0]
    out: dict[str, Any] = {}
    if target_name == "mog40":
        key = f"mog40/{n}/{seed}"
        if key not in cache:
            ref = _exact(target, n, 10_000 + seed)
            other = _exact(target, n, 20_000 + seed)
            cache[key] = (ref, metrics.mmd(ref, other))
        ref, floor = cache[key]
        out["mmd2"] = metrics.mmd(samples, ref)
        out["mmd2_floor"] = floor
        out["mmd2_over_floor"] = out["mmd2"] / floor
        out.update(metrics.mode_statistics(samples, target))
        out["sq_norm_rel_error"] = metrics.relative_error(
            metrics.expected_squared_norm(samples), target.expected_squared_norm()
        )
    elif target_name == "mw32":
        key = f"mw32/{n}/{seed}"
        if key not in cache:
            ref = _exact(target, n, 10_000 + seed)
            other = _exact(target, n, 20_000 + seed)
            cache[key] = (ref, metrics.energy_distance(other, ref, target))
        ref, floor = cache[key]
        out["energy_w1"] = metrics.energy_distance(samples, ref, target, "w1")
        out["energy_w2"] = metrics.energy_distance(samples, ref, target, "w2")
        out["energy_w1_floor"] = floor
        out["right_well_fraction"] = float((samples[:, 0::2] > 0).double().mean())
        file_ref = cache.get("mw32/file")
        if file_ref is not None:
            out["energy_w1_vs_reference_file"] = metrics.energy_distance(samples, file_ref, target)
    elif target_name in ("dw4", "lj13", "lj55"):
        ref = cache.get(f"{target_name}/reference")
        if ref is None:
            out["energy_mean"] = float(target.energy(samples).mean())
            return out
        # floor: a reference subset of the samples' size against the rest of the reference
        cut = n if n < ref.shape[0] else ref.shape[0] // 2
        key = f"{target_name}/floor/{cut}"
        if key not in cache:
            cache[key] = metrics.energy_distance(ref[:cut], ref[cut:], target)
        out["energy_w1"] = metrics.energy_distance(samples, ref, target, "w1")
        out["energy_w2"] = metrics.energy_distance(samples, ref, target, "w2")
        out["energy_w1_floor"] = cache[key]
        out["distance_w1"] = metrics.interatomic_distance_distance(samples, ref, target, "w1")
        out["energy_mean"] = float(target.energy(samples).mean())
        out["energy_mean_reference"] = float(target.energy(ref).mean())
    elif target_name == "bnn":
        out["test_nll"] = target.test_nll(samples, "expected")
        out["test_nll_predictive"] = target.test_nll(samples, "predictive")
    return out


# ---------------------------------------------------------------------------------- CLI
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of ``probrec bench samplers`` (bad values are usage errors naming the option)."""
    parser.add_argument(
        "--targets",
        default=[TARGETS[0]],
        type=choice_list(TARGETS),
        help=f"comma-separated subset of {','.join(TARGETS)} (default: mog40)",
    )
    parser.add_argument(
        "--samplers",
        default=["digs", "pt", "mala", "hmc"],
        type=choice_list([*SAMPLERS, "map"]),
        help="comma-separated subset of digs,pt,pt_hmc,mala,hmc,rwm,ptsd,dikl,map "
        "(default: digs,pt,mala,hmc)",
    )
    parser.add_argument(
        "--budgets",
        default=[100.0, 300.0, 1000.0],
        type=float_list(0.0),
        help="target evaluations per sample, comma-separated (default: 100,300,1000)",
    )
    parser.add_argument(
        "--seeds", default=[0, 1, 2], type=seed_list, help="distinct seeds (default: 0,1,2)"
    )
    parser.add_argument(
        "--n-samples",
        type=whole(1),
        default=10_000,
        help="samples per run (default: %(default)s)",
    )
    parser.add_argument(
        "--chains",
        type=whole(0),
        default=0,
        help="chains per run, at most --n-samples; 0: one independent chain per sample",
    )
    parser.add_argument(
        "--data",
        default=None,
        type=existing_path("dir"),
        help="data root holding samplers/*.npy (../shared/data)",
    )
    parser.add_argument("--out", default="samplers-bench", help="output folder (created)")
    parser.add_argument("--compile", default="auto", choices=["auto", "on", "off"])
    parser.add_argument(
        "--settings",
        default=None,
        type=sampler_settings,
        help='JSON overrides of sampler settings per sampler, e.g. \'{"digs": {"n_mala": 2}}\'',
    )
    parser.add_argument("--threads", type=whole(1), default=None, help="torch.set_num_threads")
    parser.add_argument(
        "--device",
        default="cpu",
        type=device_option,
        help="torch device the samplers run on (default: %(default)s); the metrics are computed "
        "on the CPU against the same CPU reference draws whatever the device",
    )
    parser.add_argument("--no-plots", action="store_true", help="skip the PNG figures")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")
    # the checks across options (--chains against --n-samples, --targets dw4 against --data)
    # come after parsing: the probrec CLI reports them as usage errors of this parser
    parser.set_defaults(_usage_parser=parser)


def _device(value: str | torch.device) -> torch.device:
    """``value`` as a torch device that this machine has.

    Raises:
        ValueError: not a device name, or a device torch cannot use here.
    """
    try:
        device = torch.device(value)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"not a torch device: {exc}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"{str(device)!r} was asked for but torch sees no CUDA device")
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ValueError(
            f"{str(device)!r} was asked for but torch sees {torch.cuda.device_count()} CUDA "
            "device(s)"
        )
    if device.type not in ("cpu", "cuda"):
        try:  # mps, xpu, ...: whether this build and machine have one
            torch.empty(0, device=device)
        except (RuntimeError, AssertionError) as exc:
            raise ValueError(f"{str(device)!r} is not available here: {exc}") from None
    return device


def device_option(text: str) -> torch.device:
    """argparse type of ``--device``: a torch device this machine has (a name torch does not
    know, or ``cuda`` without a GPU, was a traceback from :func:`run`)."""
    try:
        return _device(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


device_option.__name__ = "device"


def _listed(value: Any, parse: Callable[[str], Any], name: str) -> Any:
    """An option's parsed value (a string, as from code calling :func:`run` directly, is
    parsed here; errors name the option)."""
    if not isinstance(value, str):
        return value
    try:
        return parse(value)
    except argparse.ArgumentTypeError as exc:
        raise UsageError(f"--{name}: {exc}") from None


def add_run_options(parser: argparse.ArgumentParser, out: Path, out_help: str) -> None:
    """``--threads``, ``--settings``, ``--out`` (default ``out``) and ``--no-progress``, as the
    benchmark scripts built on :func:`run` take them."""
    parser.add_argument("--threads", type=whole(1), default=1, help="torch threads")
    parser.add_argument(
        "--settings",
        type=sampler_settings,
        default=None,
        help='JSON sampler-setting overrides, e.g. \'{"digs": {"n_mala": 2}}\'',
    )
    parser.add_argument("--out", type=Path, default=out, help=out_help)
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def sampler_settings(text: str) -> dict[str, dict[str, Any]]:
    """argparse type of ``--settings``: a JSON object of option objects per known sampler,
    each option one the sampler takes (an unknown keyword was a TypeError from a constructor,
    after the earlier runs)."""
    value = json_objects_by_name(text, SAMPLERS, "sampler")
    for s, opts in value.items():
        unknown = sorted(set(opts) - _accepted_options(SAMPLERS[s]))
        if unknown:
            raise argparse.ArgumentTypeError(f"unknown option(s) {unknown} of {s}")
    return value


sampler_settings.__name__ = "JSON object"


def _accepted_options(cls: type) -> set[str]:
    """Keyword arguments ``cls(...)`` accepts, following ``**kwargs`` up the class hierarchy."""
    names: set[str] = set()
    for klass in cls.__mro__:
        if "__init__" not in vars(klass):
            continue
        params = inspect.signature(vars(klass)["__init__"]).parameters
        names |= {n for n, p in params.items() if p.kind is not p.VAR_KEYWORD and n != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params.values()):
            break
    return names


def run(args: argparse.Namespace) -> int:
    """Runs the benchmark described by ``args`` (see :func:`add_arguments`).

    Raises:
        UsageError: (a ``ValueError``) options that cannot go together or name what this
            machine lacks (``--chains`` above ``--n-samples``, an unavailable ``--device``,
            ``--targets dw4`` / ``lj13`` without their reference samples under ``--data``);
            the ``probrec`` command line reports it as a usage error (exit status 2).
    """
    targets = _listed(args.targets, choice_list(TARGETS), "targets")
    names = _listed(args.samplers, choice_list([*SAMPLERS, "map"]), "samplers")
    budgets = _listed(args.budgets, float_list(0.0), "budgets")
    seeds = _listed(args.seeds, seed_list, "seeds")
    if args.n_samples < 1 or args.chains < 0:
        raise UsageError("--n-samples must be >= 1 and --chains >= 0")
    if args.chains > args.n_samples:  # the extra chains' samples were dropped, their cost kept
        raise UsageError(f"--chains ({args.chains}) must not exceed --n-samples ({args.n_samples})")
    overrides = _listed(args.settings, sampler_settings, "settings") or {}
    try:
        device = _device(args.device)
    except ValueError as exc:
        raise UsageError(f"--device: {exc}") from None
    data = Path(args.data) if args.data else None
    if data is not None and not data.is_dir():
        raise UsageError(f"--data folder {str(data)!r} does not exist")
    needs_reference = [t for t in targets if t in ("dw4", "lj13")]
    missing = [t for t in needs_reference if _ref_path(data, t) is None]
    if missing:  # their rows held no W1 metric and the summary table was empty
        raise UsageError(
            f"--targets {','.join(missing)} are scored against reference samples: pass --data "
            f"with {', '.join(REFERENCE_FILES[t] for t in missing)} under it"
        )
    compile_opt: bool | str = {"auto": "auto", "on": True, "off": False}[args.compile]
    chains = args.chains or None
    _check_samplers(targets, names, chains, budgets[0], compile_opt, overrides)
    if args.threads:
        torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    progress = not args.no_progress
    regime = "independent" if chains is None else f"{chains}_chains"
    rows: list[dict[str, Any]] = []
    kept: dict[tuple[str, str, float, int], torch.Tensor] = {}
    cache: dict[str, Any] = {}
    jobs = [(t, s, b, seed) for t in targets for s in names for b in budgets for seed in seeds]
    jobs = [j for j in jobs if not (j[1] == "map" and j[2] != budgets[0])]
    header = {
        "benchmark": "samplers",
        "targets": targets,
        "samplers": names,
        "budgets": budgets,
        "seeds": seeds,
        "n_samples": args.n_samples,
        "chains": args.chains,
        "regime": regime,
        "settings": {
            t: {
                s: {**SAMPLER_SETTINGS.get(t, {}).get(s, {}), **overrides.get(s, {})}
                for s in names
                if s != "map"
            }
            for t in targets
        },
        "compile": args.compile,
        **code_version(),  # probrec version, git commit (results.json named no code version)
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": platform.machine(),
        "threads": torch.get_num_threads(),
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else str(device),
    }
    target_objs: dict[str, Target] = {}
    on_device: dict[str, Target] = {}
    for tname, sname, budget, seed in track(jobs, progress=progress, desc="samplers bench"):
        if tname not in target_objs:
            target_objs[tname] = make_target(tname, data)
            tgt = target_objs[tname]
            if tname in ("dw4", "lj13", "lj55") and getattr(tgt, "reference_path", None):
                cache[f"{tname}/reference"] = tgt.reference_samples()
            if tname == "mw32" and _ref_path(data, "mw32") is not None:
                from .targets import load_reference_samples

                cache["mw32/file"] = load_reference_samples(_ref_path(data, "mw32"), 32)
            on_device[tname] = copy.deepcopy(tgt).to(device) if device.type != "cpu" else tgt
        target = on_device[tname]
        t0 = time.perf_counter()
        if sname == "map":
            from .optimize import map_estimate

            theta, lp = map_estimate(target, n_starts=8, steps=3000, lr=1e-2, seed=seed)
            # scored as the point mass it stands for, against the --n-samples reference draws
            # of every sampler (a single row was scored against one exact draw, with a floor of
            # one draw against another: MMD^2 at 0.98x "the floor" on MoG-40); the BNN's test
            # NLL is the same for any number of copies
            samples = theta[None] if tname == "bnn" else theta[None].expand(args.n_samples, -1)
            row: dict[str, Any] = {
                "target": tname,
                "sampler": "map",
                "regime": regime,
                "budget": None,
                "seed": seed,
                "n_samples": 1,
                "log_prob": lp,
                "wall_time": round(time.perf_counter() - t0, 3),
            }
        else:
            sampler = make_sampler(
                sname,
                tname,
                n_chains=chains,
                budget=budget,
                compile=compile_opt,
                progress=progress,
                overrides=overrides,
            )
            try:
                if isinstance(sampler, PTSD):
                    sampler.plan_steps(args.n_samples)
                elif isinstance(sampler, DiKL):
                    sampler.iterations(args.n_samples)
                else:
                    sampler.plan(target, args.n_samples)
            except ValueError as exc:  # budget below one transition: report, do not abort
                rows.append(
                    {
                        "target": tname,
                        "sampler": sname,
                        "regime": regime,
                        "budget": budget,
                        "seed": seed,
                        "skipped": str(exc),
                    }
                )
                continue
            res: SamplerResult = sampler.run(target, args.n_samples, seed=seed)
            samples = res.samples
            d = res.diagnostics
            row = {
                "target": tname,
                "sampler": sname,
                "regime": regime,
                "budget": budget,
                "seed": seed,
                "n_samples": int(samples.shape[0]),
                "n_chains": int(res.chains.shape[0]),
                "evals_per_sample": round(res.evals_per_sample, 3),
                "n_grad_evals": res.n_grad_evals,
                "n_log_prob_evals": res.n_log_prob_evals,
                "wall_time": round(res.wall_time, 3),
                "compiled": d.get("compiled"),
                "acceptance_rate": d.get("acceptance_rate"),
                "swap_rate": d.get("swap_rate"),
                "ess_bulk_min": d.get("ess_bulk_min"),
                "ess_tail_min": d.get("ess_tail_min"),
                "rhat_split_max": d.get("rhat_split_max"),
                "rhat_max": d.get("rhat_max"),
            }
            if sname == "digs":
                row["init_acceptance"] = d.get("init_acceptance_per_level")
        samples = samples.detach().cpu()
        row.update(evaluate(tname, target_objs[tname], samples, seed, cache))
        rows.append(row)
        if seed == seeds[0]:
            kept[(tname, sname, budget, seed)] = samples
        _write(out, header, rows)
    if not args.no_plots:
        figs = _plots(out, rows, kept, targets, names, budgets, seeds, regime, target_objs, cache)
        header["figures"] = [str(f.name) for f in figs]
    _write(out, header, rows)
    _print_table(rows)
    print(f"results: {out / 'results.json'}, {out / 'results.csv'}")
    return 0


def _check_samplers(
    targets: list[str],
    names: list[str],
    chains: int | None,
    budget: float,
    compile_opt: bool | str,
    overrides: dict[str, dict[str, Any]],
) -> None:
    """Builds every sampler of the run once, before the first run.

    A sampler refuses settings when it is built (``--chains`` for PTSD / DiKL, which draw
    independent samples; a value out of range in ``--settings``): built in the loop, that was a
    traceback after every earlier run had finished.

    Raises:
        UsageError: naming the sampler, the target and the option.
    """
    for t in targets:
        for s in names:
            if s == "map":
                continue
            if chains is not None and issubclass(SAMPLERS[s], NeuralSampler):
                raise UsageError(
                    f"--samplers {s} draws independent samples: it runs with --chains 0 only, "
                    f"not --chains {chains}"
                )
            try:
                make_sampler(
                    s, t, n_chains=chains, budget=budget, compile=compile_opt, overrides=overrides
                )
            except (TypeError, ValueError) as exc:
                raise UsageError(f"--samplers {s} on --targets {t} (--settings): {exc}") from None


def _write(out: Path, header: dict[str, Any], rows: list[dict[str, Any]]) -> None:

    (out / "results.json").write_text(json.dumps(json_safe({**header, "rows": rows}), indent=2))
    keys: list[str] = []
    for r in rows:
        keys += [k for k in r if k not in keys]
    with open(out / "results.csv", "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=keys)
        w.writeheader()
        for r in rows:
            w.writerow(
                {k: json.dumps(v) if isinstance(v, (list, dict)) else v for k, v in r.items()}
            )


def _summary(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    groups: dict[tuple, list[dict[str, Any]]] = {}
    for r in rows:
        groups.setdefault((r["target"], r["sampler"], r["budget"]), []).append(r)
    out = []
    for (t, s, b), rs in groups.items():
        metric = PRIMARY_METRIC[t][0]
        vals = [r[metric] for r in rs if r.get(metric) is not None]
        if not vals:
            continue
        m, se = mean_and_se(vals)
        spent = [r["evals_per_sample"] for r in rs if r.get("evals_per_sample") is not None]
        out.append(
            {
                "target": t,
                "sampler": s,
                "budget": b,
                "evals_per_sample": sum(spent) / len(spent) if spent else None,
                "metric": metric,
                "mean": m,
                "se": se,
                "n": len(vals),
            }
        )
    return out


def _print_table(rows: list[dict[str, Any]]) -> None:
    """Prints the mean +- s.e. over seeds of each target / sampler / budget's primary metric,
    with the evaluations per sample spent (a sampler whose transition does not divide the
    budget spends less), then the runs skipped (budget below one transition) with the reason."""
    head = ("target", "sampler", "budget", "evals/smp", "metric", "mean", "se", "seeds")
    print("{:7s} {:6s} {:>7s} {:>9s} {:>10s} {:>11s} {:>10s} {}".format(*head))
    for r in _summary(rows):
        b = "-" if r["budget"] is None else f"{r['budget']:g}"
        e = "-" if r["evals_per_sample"] is None else f"{r['evals_per_sample']:.1f}"
        cells = (r["target"], r["sampler"], b, e, r["metric"], r["mean"], r["se"], r["n"])
        print("{:7s} {:6s} {:>7s} {:>9s} {:>10s} {:11.5g} {:10.3g} {}".format(*cells))
    skipped: dict[tuple, str] = {}
    for r in rows:  # (they were left out of the table without a word)
        if "skipped" in r:
            skipped.setdefault((r["target"], r["sampler"], r["budget"]), r["skipped"])
    for (t, s, b), why in skipped.items():
        print(f"skipped: {t} {s} at budget {b:g}: {why}")


def _plots(
    out, rows, kept, targets, names, budgets, seeds, regime, target_objs, cache
) -> list[Path]:
    from .plots import plot_histograms, plot_metric_vs_budget, plot_mog_samples

    figs: list[Path] = []
    top = max(budgets)
    for t in targets:
        trows = [r for r in rows if r["target"] == t and r["sampler"] != "map"]
        metric, floor = PRIMARY_METRIC[t]
        if len(budgets) > 1 and trows:
            figs.append(
                plot_metric_vs_budget(
                    trows,
                    metric,
                    out / f"{t}_{regime}_{metric}_vs_budget.png",
                    title=f"{t}, {regime}",
                    floor_metric=floor,
                    log_y=metric not in ("test_nll", "energy_mean"),  # (energies are < 0)
                )
            )
        samples = {s: kept[(t, s, top, seeds[0])] for s in names if (t, s, top, seeds[0]) in kept}
        target = target_objs.get(t)
        if not samples or target is None:
            continue
        if t == "mog40":
            exact = target.sample(samples[next(iter(samples))].shape[0], seed=10_000 + seeds[0])
            figs.append(
                plot_mog_samples(
                    {"exact": exact, **samples},
                    target.means,
                    out / f"mog40_{regime}_samples.png",
                    title=f"MoG-40, {regime}, {top:g} evaluations per sample, seed {seeds[0]}",
                )
            )
        elif t in ("mw32", "dw4", "lj13", "lj55"):
            ref = cache.get(f"{t}/reference")
            if t == "mw32":
                ref = target.sample(10_000, seed=10_000 + seeds[0])
            if ref is None:
                continue
            with torch.no_grad():
                energies = {s: target.energy(x) for s, x in samples.items()}
                figs.append(
                    plot_histograms(
                        energies,
                        target.energy(ref),
                        out / f"{t}_{regime}_energy_hist.png",
                        "energy",
                        f"{t}: energies at {top:g} evaluations per sample",
                    )
                )
                if t != "mw32":
                    dists = {s: target.interatomic_distances(x) for s, x in samples.items()}
                    figs.append(
                        plot_histograms(
                            dists,
                            target.interatomic_distances(ref),
                            out / f"{t}_{regime}_distance_hist.png",
                            "interatomic distance",
                            f"{t}: distances at {top:g} evaluations per sample",
                        )
                    )
    return figs
