"""Gradient evaluations per second of our batched MALA against blackjax MALA under jax.jit.

Target: MoG-40 (Chen et al., 2024), 10,000 chains, the same fixed MALA step size on both sides,
the same device (``--device cpu``, the default, or ``cuda``: torch on the GPU and JAX on its CUDA
backend), the same process. Each side runs ``--steps`` MALA transitions of all chains; the
rate is ``chains * steps / seconds``.

- ours: ``samplers.MALA(step_size=h, n_chains=10000, burn_in=steps - 1, adapt=False,
  compile=True).run(MoG40(), 10000, seed)`` -- the compiled step, which ``compile="auto"`` uses
  for long runs (on a CPU, for MoG-40 from 100M rows of evaluations; on a GPU from 2M) -- and,
  as ``ours_eager``, the same with ``compile=False`` (what ``"auto"`` runs on a CPU at this
  size: 3M rows, where the compilation would cost more than it saves). The analytic MoG-40
  gradient is used automatically;
- blackjax: ``blackjax.mala(logdensity, h)`` vmapped over chains, stepped by a jitted function
  (the usual user loop) and, as a second variant, by ``jax.lax.fori_loop`` inside one jit; the
  log-density is written three times (a ``logsumexp`` over component log-pdfs, the
  matrix-product form, and the form with the products over the two coordinates written out,
  which our target uses under ``torch.compile``), and the fastest JAX variant is the baseline.

Repeats alternate between the two sides (so machine load hits both), after one warm-up run of
each that includes compilation (reported separately). The ratio is of medians.

Threads: both sides get the same number (``--threads``, default 1: torch.set_num_threads and
XLA's ``intra_op_parallelism_threads``, set before JAX is imported). One thread is the default
because on a shared, busy machine OpenMP's barriers stall whenever a sibling thread is
descheduled, which would measure the neighbours rather than the code; pass ``--threads 2`` to
compare with two threads each. JAX and blackjax are benchmark-only dependencies
(``pip install jax jaxlib blackjax``).

Usage: ``python benchmarks/mala_vs_blackjax.py [--chains 10000] [--steps 300] [--repeats 5]
[--threads 1] [--device cpu|cuda]``
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

import samplers
from probrec.argtypes import number, whole
from probrec.reporting import json_safe
from probrec.runrecord import code_version
from samplers.targets import MoG40


def _ours(
    target: MoG40, chains: int, steps: int, h: float, seed: int, compile: bool = True
) -> tuple[float, dict]:
    sampler = samplers.MALA(
        step_size=h,
        n_chains=chains,
        burn_in=steps - 1,
        thin=1,
        adapt=False,
        compile=compile,
        progress=False,
    )
    sync = torch.cuda.synchronize if target.means.is_cuda else (lambda: None)
    sync()
    t = time.perf_counter()
    res = sampler.run(target, chains, seed=seed)
    sync()
    dt = time.perf_counter() - t
    assert res.n_grad_evals == chains * (steps + 1)
    return dt, {
        "acceptance": res.diagnostics["acceptance_rate"],
        "compiled": res.diagnostics["compiled"],
    }


def _jax_variants(target: MoG40, chains: int, steps: int, h: float):
    import blackjax
    import jax
    import jax.numpy as jnp

    mu = jnp.asarray(target.means.cpu().numpy())
    s = float(target.scales[0, 0])
    prec_mu = mu / s**2
    const = -0.5 * jnp.sum(mu**2, -1) / s**2

    def logdensity_lse(x):
        return jax.scipy.special.logsumexp(-0.5 * jnp.sum((x - mu) ** 2, -1) / s**2)

    def logdensity_mm(x):
        return jax.scipy.special.logsumexp(prec_mu @ x + const) - 0.5 * jnp.dot(x, x) / s**2

    def logdensity_unrolled(x):  # the products over the 2 coordinates written out, as ours
        logits = const + prec_mu[:, 0] * x[0] + prec_mu[:, 1] * x[1]
        return jax.scipy.special.logsumexp(logits) - 0.5 * (x[0] ** 2 + x[1] ** 2) / s**2

    variants = {}
    for lname, logdensity in (
        ("logsumexp", logdensity_lse),
        ("matmul", logdensity_mm),
        ("unrolled", logdensity_unrolled),
    ):
        mala = blackjax.mala(logdensity, h)
        init = jax.jit(jax.vmap(mala.init))

        @jax.jit
        def one_step(states, key, mala=mala):
            keys = jax.random.split(key, chains)
            new, info = jax.vmap(mala.step)(keys, states)
            return new, info.acceptance_rate.mean()

        @jax.jit
        def many_steps(states, key, mala=mala):
            def body(i, carry):
                st, k, acc = carry
                k, sub = jax.random.split(k)
                keys = jax.random.split(sub, chains)
                st, info = jax.vmap(mala.step)(keys, st)
                return st, k, acc + info.acceptance_rate.mean()

            return jax.lax.fori_loop(0, steps, body, (states, key, 0.0))

        def run_loop(seed, init=init, one_step=one_step):
            key = jax.random.PRNGKey(seed)
            t = time.perf_counter()
            st = init(jnp.zeros((chains, 2)))
            acc = 0.0
            for _ in range(steps):
                key, sub = jax.random.split(key)
                st, a = one_step(st, sub)
                acc = acc + a
            jax.block_until_ready(st)
            return time.perf_counter() - t, {"acceptance": float(acc) / steps}

        def run_scan(seed, init=init, many_steps=many_steps):
            key = jax.random.PRNGKey(seed)
            t = time.perf_counter()
            st = init(jnp.zeros((chains, 2)))
            st, _, acc = many_steps(st, key)
            jax.block_until_ready(st)
            return time.perf_counter() - t, {"acceptance": float(acc) / steps}

        variants[f"blackjax_jit_loop_{lname}"] = run_loop
        variants[f"blackjax_fori_loop_{lname}"] = run_scan
    return variants, jax.__version__, blackjax.__version__


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    p.add_argument("--chains", type=whole(1), default=10_000, help="MALA chains of each side")
    p.add_argument(
        "--steps", type=whole(1), default=300, help="MALA transitions of every chain per run"
    )
    p.add_argument(
        "--step-size", type=number(0.0), default=0.5, help="fixed MALA step size of both sides"
    )
    p.add_argument(
        "--repeats", type=whole(1), default=5, help="timed runs per side (median reported)"
    )
    p.add_argument("--threads", type=whole(1), default=1, help="threads of each side")
    p.add_argument(
        "--device",
        choices=("cpu", "cuda"),
        default="cpu",
        help="both sides on the CPU or on the GPU (JAX's CUDA backend)",
    )
    p.add_argument(
        "--out",
        type=Path,
        default=Path("bench-results") / "mala_vs_blackjax.json",
        help="JSON output file",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.device == "cuda" and not torch.cuda.is_available():
        print("--device cuda: torch sees no CUDA device", file=sys.stderr)
        return 2
    os.environ["JAX_PLATFORMS"] = args.device  # set before JAX is imported
    # JAX would otherwise take 75% of the GPU's memory up front, torch sharing the same GPU
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    torch.set_num_threads(args.threads)
    flags = os.environ.get("XLA_FLAGS", "")
    if args.threads == 1:
        flags += " --xla_cpu_multi_thread_eigen=false"
    os.environ["XLA_FLAGS"] = f"{flags} intra_op_parallelism_threads={args.threads}".strip()
    target = MoG40().to(args.device)
    try:
        variants, jax_v, bjx_v = _jax_variants(target, args.chains, args.steps, args.step_size)
    except ImportError as exc:
        print(f"needs jax and blackjax (pip install jax jaxlib blackjax): {exc}", file=sys.stderr)
        return 2
    import jax

    jax_device = str(jax.devices()[0])
    evals = args.chains * args.steps
    # warm-up (compilation) runs, timed
    ours = {
        "ours": lambda seed: _ours(target, args.chains, args.steps, args.step_size, seed),
        "ours_eager": lambda seed: _ours(
            target, args.chains, args.steps, args.step_size, seed, compile=False
        ),
    }
    variants = {**ours, **variants}
    warm = {}
    for name, fn in variants.items():
        warm[name] = fn(0)[0]
    times: dict[str, list[float]] = {k: [] for k in variants}
    info: dict[str, dict] = {}
    for r in range(args.repeats):
        for name, fn in variants.items():
            dt, inf = fn(r + 1)
            times[name].append(dt)
            info[name] = inf
        print(
            f"repeat {r + 1}/{args.repeats}: "
            + ", ".join(f"{k} {v[-1]:.2f}s" for k, v in times.items()),
            flush=True,
        )
    med = {k: statistics.median(v) for k, v in times.items()}
    rate = {k: evals / v for k, v in med.items()}
    best_jax = max((k for k in rate if k not in ours), key=lambda k: rate[k])
    ratio = rate["ours"] / rate[best_jax]
    ratio_eager = rate["ours_eager"] / rate[best_jax]
    result = {
        "benchmark": "mala_vs_blackjax",
        "target": "MoG-40",
        "chains": args.chains,
        "steps": args.steps,
        "step_size": args.step_size,
        "repeats": args.repeats,
        "threads": args.threads,
        "device": args.device,
        "torch_device": torch.cuda.get_device_name() if args.device == "cuda" else "cpu",
        "jax_device": jax_device,
        "xla_flags": os.environ.get("XLA_FLAGS"),
        "cpu_count": os.cpu_count(),
        **code_version(),  # probrec version and git commit
        "torch": torch.__version__,
        "jax": jax_v,
        "blackjax": bjx_v,
        "python": platform.python_version(),
        "seconds": times,
        "median_seconds": med,
        "grad_evals_per_second": rate,
        "first_run_seconds_including_compilation": warm,
        "acceptance": {k: v.get("acceptance") for k, v in info.items()},
        "ours_compiled": info["ours"].get("compiled"),
        "baseline": best_jax,
        "ratio_ours_over_blackjax": ratio,
        "ratio_ours_eager_over_blackjax": ratio_eager,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(json_safe(result), indent=2, allow_nan=False))
    for k in rate:
        speed = f"{rate[k] / 1e6:8.3f} M grad evals/s"
        print(f"{k:34s} {speed} (median {med[k]:.3f} s, first run {warm[k]:.1f} s)")
    print(f"ratio ours / {best_jax}: {ratio:.2f}x (eager step: {ratio_eager:.2f}x)   -> {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
