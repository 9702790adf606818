"""Benchmark: one ADKF-IFT meta-step vs differentiating through an unrolled inner optimiser.

Both variants compute the same meta-gradient on the same meta-batch (``B`` tasks, ``n_s``
support and ``n_q`` query points each) with the same encoder (an MLP over molecule features,
``metalearn.ADKFIFT``'s default): encode support and query sets, fit every task's GP
hyperparameters ``theta`` (log lengthscale, log outputscale, log noise) on the support set,
score the query set by the joint predictive NLL under the GP posterior at the fitted
``theta`` and back-propagate into the encoder (Chen, Tripp & Hernandez-Lobato, ICLR 2023).

* **ift**: ``ADKFIFT.episode_loss(batch).backward()``: the batched Newton inner fit on
  detached features, then the implicit-function-theorem correction
  ``-(d2 L_in / dphi dtheta) H^-1 dL_out/dtheta`` (exact ``3 x 3`` block solves).
* **unrolled**: ``--unroll-steps`` (default 50) steps of gradient descent (or Adam) on
  ``theta`` from the same starting point, taken with ``create_graph=True`` on features that
  keep their graph, so the outer gradient flows back through every step (Maclaurin et al.,
  ICML 2015; Franceschi et al., ICML 2018).
* **shared**: the work both variants share, to show where the time goes: the encoder and the
  outer loss at the inner loop's starting point, forward and backward, without an inner loop;
  **encoder**: the encoder's forward and backward pass alone.

Reported: median time per meta-step over ``--repeats`` interleaved repeats; peak memory of one
step (CUDA: ``max_memory_allocated``; CPU: tensor allocations from torch's profiler, and with
``--rss`` also the peak resident-set growth measured in a fresh process per variant); and, as a
sanity check, the cosine similarity between the two meta-gradients, for the timed unrolled
loop and for one run long enough (``--check-steps``) for the inner loop to converge, next to
the similarity between ADKF-IFT and ADKF (the IFT correction dropped) for scale.

Run from the repository root::

    python benchmarks/adkf_ift_step.py              # B=16, 64 + 256 points, 2048-d inputs
    python benchmarks/adkf_ift_step.py --data none --repeats 3
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from _common import (
    TaskBatch,
    add_common_arguments,
    environment,
    fmt_spread,
    format_table,
    peak_memory_bytes,
    ratio_summary,
    resolve_data,
    rss_peak_of_subprocess,
    rss_probe,
    setup,
    summarize,
    task_batch,
    time_interleaved,
    write_json,
)

from metalearn import ADKF, ADKFIFT
from metalearn.episodes import MetaBatch
from probrec.argtypes import number, whole
from probrec.gp import (
    geometry,
    inner_objective,
    prior_centres,
)
from probrec.gp.exact import initial_theta

NAME = "adkf_ift_step"
VARIANTS = ("ift", "unrolled", "shared", "encoder")


# ---------------------------------------------------------------------------- the variants
def unroll(
    objective: Callable[[torch.Tensor], torch.Tensor],
    theta0: torch.Tensor,
    steps: int,
    optimizer: str = "gd",
    lr: float = 1.0,
) -> torch.Tensor:
    """``steps`` differentiable optimiser steps on ``objective`` from ``theta0``.

    Every step keeps its graph (``create_graph=True``), so the result is a differentiable
    function of whatever ``objective`` depends on.

    Args:
        objective: ``theta [T, p] -> scalar``.
        theta0: ``[T, p]`` start (no graph needed).
        steps: number of steps.
        optimizer: ``"gd"`` (gradient descent) or ``"adam"`` (Kingma & Ba, 2015; beta
            0.9 / 0.999, eps 1e-8).
        lr: step size.
    """
    theta = theta0.detach().requires_grad_(True)
    m = torch.zeros_like(theta)
    v = torch.zeros_like(theta)
    for k in range(steps):
        (g,) = torch.autograd.grad(objective(theta), theta, create_graph=True)
        if optimizer == "gd":
            theta = theta - lr * g
        else:
            m = 0.9 * m + 0.1 * g
            v = 0.999 * v + 0.001 * g * g
            m_hat = m / (1.0 - 0.9 ** (k + 1))
            v_hat = v / (1.0 - 0.999 ** (k + 1))
            theta = theta - lr * m_hat / (v_hat.sqrt() + 1e-8)
    return theta


def unrolled_episode_loss(
    learner: ADKFIFT,
    batch: MetaBatch,
    steps: int,
    optimizer: str,
    lr: float,
    *,
    report: bool = False,
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The meta-loss of ``learner`` on ``batch`` with ``theta`` from an unrolled inner loop.

    Features, targets and the outer loss come from the learner itself (the methods
    ``ADKFIFT.episode_loss`` uses), as do the prior centres and the starting point, so only the
    inner solution and its derivative differ. With ``steps=0`` the outer loss is taken at the
    starting point: the work every variant shares.

    Returns:
        ``(loss, inner gradient norm per task at the last iterate [B] if report else None)``.
    """
    c = learner.gp_config
    z_s, z_q = learner._features(batch)
    t_s, t_q = learner._targets(batch)
    centres = prior_centres(c, z_s)  # detached, as in ADKF-IFT
    geom = geometry(c, z_s, z_s)  # keeps the graph to the encoder

    def objective(th: torch.Tensor) -> torch.Tensor:
        return inner_objective(th, c, geom, t_s, None, centres).sum()

    theta0 = initial_theta(c, t_s, None, centres)
    theta = unroll(objective, theta0, steps, optimizer, lr) if steps > 0 else theta0
    gnorm = None
    if report:
        th = theta.detach().requires_grad_(True)
        (g,) = torch.autograd.grad(
            inner_objective(th, c, geom.detach(), t_s, None, centres).sum(), th
        )
        gnorm = g.norm(dim=-1)
    return learner._outer_loss(theta, z_s, z_q, t_s, t_q, batch.query_mask), gnorm


def to_meta_batch(batch: TaskBatch, device: torch.device) -> MetaBatch:
    """Tensors of a :class:`TaskBatch` on ``device`` (no query padding)."""
    qx = torch.as_tensor(batch.query_x, device=device)
    return MetaBatch(
        torch.as_tensor(batch.support_x, device=device),
        torch.as_tensor(batch.support_y, dtype=torch.float32, device=device),
        qx,
        torch.as_tensor(batch.query_y, dtype=torch.float32, device=device),
        torch.ones(qx.shape[:2], dtype=torch.bool, device=device),
        list(batch.names),
    )


def make_learner(cls: type, in_dim: int, args: argparse.Namespace, device: torch.device) -> ADKFIFT:
    """A freshly built learner (encoder initialised with ``--seed``) in training mode."""
    learner = cls(
        kind="classification",
        seed=args.seed,
        device=device,
        hidden=tuple(args.hidden),
        gp_dtype=args.gp_dtype,
    )
    learner.build(in_dim)
    learner.encoder.train()
    return learner


def step_fn(
    variant: str, learner: ADKFIFT, batch: MetaBatch, args: argparse.Namespace
) -> Callable[[], Any]:
    """One meta-step of ``variant``: zero the gradients, forward, backward."""
    params = list(learner.encoder.parameters())

    def zero() -> None:
        for p in params:
            p.grad = None

    if variant == "ift":

        def fn() -> None:
            zero()
            (learner.episode_loss(batch) / len(batch)).backward()
    elif variant == "unrolled":

        def fn() -> None:
            zero()
            loss, _ = unrolled_episode_loss(
                learner, batch, args.unroll_steps, args.unroll_optimizer, args.unroll_lr
            )
            (loss / len(batch)).backward()
    elif variant == "shared":

        def fn() -> None:
            zero()
            loss, _ = unrolled_episode_loss(
                learner, batch, 0, args.unroll_optimizer, args.unroll_lr
            )
            (loss / len(batch)).backward()
    elif variant == "encoder":

        def fn() -> None:
            zero()
            z_s, z_q = learner._features(batch)
            (z_s.pow(2).mean() + z_q.pow(2).mean()).backward()

    else:
        raise ValueError(f"unknown variant {variant!r}; expected one of {list(VARIANTS)}")
    return fn


def auto_step_size(learner: ADKFIFT, batch: MetaBatch) -> float:
    """``1 / lambda_max`` of the inner Hessian blocks at the fitted optimum, over all tasks."""
    with torch.no_grad():
        learner.episode_loss(batch)
    return float(1.0 / torch.linalg.eigvalsh(learner.last_fit.hessian).max())


def flat_grad(learner: ADKFIFT) -> torch.Tensor:
    return torch.cat([p.grad.reshape(-1).double() for p in learner.encoder.parameters()])


def cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.nn.functional.cosine_similarity(a, b, dim=0))


def hypergradient_check(
    learner: ADKFIFT, batch: MetaBatch, args: argparse.Namespace, device
) -> dict:
    """Cosine similarities of meta-gradients: IFT vs unrolled (timed and long), IFT vs ADKF."""
    step_fn("ift", learner, batch, args)()
    g_ift = flat_grad(learner).clone()
    fit = learner.last_fit
    out: dict[str, Any] = {
        "inner_fit": fit.summary(),
        "inner_grad_norm_max": float(fit.grad_norm.max()),
    }
    for key, steps in (("timed", args.unroll_steps), ("long", args.check_steps)):
        if steps <= 0:
            continue
        for p in learner.encoder.parameters():
            p.grad = None
        loss, gn = unrolled_episode_loss(
            learner, batch, steps, args.unroll_optimizer, args.unroll_lr, report=True
        )
        (loss / len(batch)).backward()
        g = flat_grad(learner)
        out[key] = {
            "steps": steps,
            "cosine": cosine(g_ift, g),
            "relative_diff": float((g - g_ift).norm() / g_ift.norm()),
            "inner_grad_norm_max": float(gn.max()),
        }
    adkf = ADKF(
        kind="classification",
        seed=args.seed,
        device=device,
        hidden=tuple(args.hidden),
        gp_dtype=args.gp_dtype,
    )
    adkf.build(batch.support_x.shape[-1])
    adkf.encoder.load_state_dict(learner.encoder.state_dict())
    adkf.encoder.train()
    (adkf.episode_loss(batch) / len(batch)).backward()
    out["adkf_no_ift"] = {"cosine": cosine(g_ift, flat_grad(adkf))}
    return out


# ---------------------------------------------------------------------------- command line
def step_size(text: str) -> str | float:
    """argparse type of ``--unroll-lr``: ``auto`` or a finite number > 0."""
    return "auto" if text == "auto" else number(0.0)(text)


step_size.__name__ = "step size"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(p, NAME)
    p.add_argument(
        "--tasks", type=whole(1), default=16, help="tasks per meta-batch (default %(default)s)"
    )
    p.add_argument(
        "--support",
        type=whole(2),
        default=64,
        help="support points per task, >= 2 (default %(default)s)",
    )
    p.add_argument(
        "--query", type=whole(1), default=256, help="query points per task (default %(default)s)"
    )
    p.add_argument(
        "--dim", type=whole(1), default=2048, help="width of synthetic inputs (default %(default)s)"
    )
    p.add_argument(
        "--descriptors",
        action="store_true",
        help="real data: Morgan counts + RDKit descriptors (2265 columns)",
    )
    p.add_argument(
        "--hidden",
        type=whole(1),
        nargs="+",
        default=[512, 256],
        help="encoder widths (default: ADKFIFT's, %(default)s)",
    )
    p.add_argument(
        "--gp-dtype",
        choices=("float64", "float32"),
        default="float64",
        help="dtype of the GP computations (ADKFIFT's gp_dtype; default %(default)s)",
    )
    p.add_argument(
        "--unroll-steps",
        type=whole(1),
        default=50,
        help="unrolled inner steps, >= 1 (default %(default)s)",
    )
    p.add_argument(
        "--unroll-optimizer",
        choices=("gd", "adam"),
        default="gd",
        help="unrolled inner optimiser (default %(default)s)",
    )
    p.add_argument(
        "--unroll-lr",
        type=step_size,
        default="auto",
        help="its step size, or 'auto' (default): for gd 1 / the largest eigenvalue of the "
        "inner Hessian blocks at the optimum (gd is stable below 2 / that), for adam 0.05",
    )
    p.add_argument(
        "--check-steps",
        type=whole(0),
        default=150,
        help="unrolled steps of the converged hypergradient check (0: skip; default %(default)s)",
    )
    p.add_argument(
        "--rss",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="CPU: also measure peak RSS growth in a fresh process per variant (default on)",
    )
    p.add_argument("--probe-rss", choices=VARIANTS, help=argparse.SUPPRESS)
    return p


def _child_argv(args: argparse.Namespace, variant: str) -> list[str]:
    argv = [str(Path(__file__).resolve()), "--probe-rss", variant]
    for key in (
        "device",
        "threads",
        "seed",
        "data",
        "tasks",
        "support",
        "query",
        "dim",
        "gp_dtype",
        "unroll_steps",
        "unroll_optimizer",
        "unroll_lr",
    ):
        argv += [f"--{key.replace('_', '-')}", str(getattr(args, key))]
    argv += ["--hidden", *map(str, args.hidden)] + (["--descriptors"] if args.descriptors else [])
    return argv


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the table and the ratios, writes the JSON; returns the payload."""
    args = build_parser().parse_args(argv)
    device = setup(args)
    data = resolve_data(args.data)
    tb = task_batch(
        data,
        args.tasks,
        args.support,
        args.query,
        args.seed,
        dim=args.dim,
        descriptors=args.descriptors,
    )
    batch = to_meta_batch(tb, device)
    learner = make_learner(ADKFIFT, tb.support_x.shape[-1], args, device)
    if args.unroll_lr == "auto":
        args.unroll_lr = auto_step_size(learner, batch) if args.unroll_optimizer == "gd" else 0.05
    fns = {v: step_fn(v, learner, batch, args) for v in VARIANTS}

    if args.probe_rss:  # child process of --rss: one JSON line
        print(json.dumps({"variant": args.probe_rss, **rss_probe(fns[args.probe_rss])}))
        return {}

    check = hypergradient_check(learner, batch, args, device)
    times = time_interleaved(fns, args.repeats, args.warmup, device, args.clock)
    stats = {v: summarize(times[v]) for v in VARIANTS}
    speed = ratio_summary(times["unrolled"], times["ift"])
    memory = {v: peak_memory_bytes(fns[v], device) for v in VARIANTS}
    rss = None
    if args.rss and device.type == "cpu" and sys.platform.startswith("linux"):
        rss = {v: rss_peak_of_subprocess(_child_argv(args, v)) for v in ("ift", "unrolled")}
    mem_ratio = memory["unrolled"] / max(memory["ift"], 1)
    # what the two ways of getting the hypergradient add to the work they share
    extra = {
        "time_s": {v: stats[v]["median"] - stats["shared"]["median"] for v in ("ift", "unrolled")},
        "memory_bytes": {v: memory[v] - memory["shared"] for v in ("ift", "unrolled")},
    }
    extra["time_ratio"] = extra["time_s"]["unrolled"] / max(extra["time_s"]["ift"], 1e-9)
    extra["memory_ratio"] = extra["memory_bytes"]["unrolled"] / max(extra["memory_bytes"]["ift"], 1)

    mib = 1.0 / 2**20
    labels = {
        "ift": "ADKF-IFT step (Newton + IFT)",
        "unrolled": f"unrolled {args.unroll_steps} {args.unroll_optimizer} steps",
        "shared": "shared part: encoder + outer loss, no inner loop",
        "encoder": "encoder fwd+bwd only",
    }
    rows = [
        [
            labels[v],
            fmt_spread(stats[v], 1e3, " ms"),
            f"{memory[v] * mib:.1f}",
            f"{rss[v]['peak_growth_bytes'] * mib:.1f}" if rss and v in rss else "-",
        ]
        for v in VARIANTS
    ]
    print(
        f"meta-step: {args.tasks} tasks x ({args.support} support + {args.query} query), "
        f"{tb.support_x.shape[-1]}-d inputs ({tb.source}), encoder {args.hidden}, {device}, "
        f"{torch.get_num_threads()} threads, {args.clock} clock, {args.repeats} repeats "
        "(median [min, max])"
    )
    print(format_table(rows, ["variant", "time", "peak tensor MiB", "peak RSS growth MiB"]))
    print(f"inner fit: {check['inner_fit']}")
    for key in ("timed", "long"):
        if key in check:
            c = check[key]
            print(
                f"hypergradient: IFT vs unrolled {c['steps']} steps: cosine {c['cosine']:.6f}, "
                f"relative difference {c['relative_diff']:.2e} "
                f"(unrolled inner |grad| max {c['inner_grad_norm_max']:.1e})"
            )
    print(
        "hypergradient: IFT vs ADKF (no IFT correction): "
        f"cosine {check['adkf_no_ift']['cosine']:.6f}"
    )
    print(
        f"beyond the shared part: IFT adds {extra['time_s']['ift'] * 1e3:.0f} ms and "
        f"{extra['memory_bytes']['ift'] * mib:.0f} MiB, unrolling adds "
        f"{extra['time_s']['unrolled'] * 1e3:.0f} ms and "
        f"{extra['memory_bytes']['unrolled'] * mib:.0f} MiB "
        f"({extra['time_ratio']:.1f}x time, {extra['memory_ratio']:.1f}x memory)"
    )
    rss_text = ""
    if rss:
        rss_ratio = rss["unrolled"]["peak_growth_bytes"] / max(rss["ift"]["peak_growth_bytes"], 1)
        rss_text = f", peak RSS {rss_ratio:.1f}x"
    print(
        f"SUMMARY adkf_ift_step: IFT step {stats['ift']['median'] * 1e3:.0f} ms vs unrolled "
        f"{stats['unrolled']['median'] * 1e3:.0f} ms -> {speed['ratio_of_medians']:.2f}x faster "
        f"(per-repeat {speed['per_repeat_min']:.2f}-{speed['per_repeat_max']:.2f}x); peak memory "
        f"{memory['ift'] * mib:.0f} vs {memory['unrolled'] * mib:.0f} MiB -> "
        f"{mem_ratio:.1f}x lighter{rss_text} (targets 3x, 3x)"
    )

    payload = {
        "benchmark": NAME,
        "config": {
            k: (v if isinstance(v, (int, float, bool, list, type(None))) else str(v))
            for k, v in vars(args).items()
        },
        "data": {"source": tb.source, "tasks": tb.names, "dim": int(tb.support_x.shape[-1])},
        "environment": environment(device),
        "times_s": times,
        "summary_s": stats,
        "speedup": speed,
        "peak_memory_bytes": memory,
        "peak_memory_method": "torch.cuda.max_memory_allocated"
        if device.type == "cuda"
        else "torch.profiler allocation events (profile_memory=True)",
        "memory_ratio": mem_ratio,
        "beyond_shared_part": extra,
        "peak_rss": rss,
        "hypergradient_check": check,
        "targets": {"speedup": 3.0, "memory_ratio": 3.0},
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
