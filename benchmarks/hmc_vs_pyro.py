"""Gradient evaluations per second of our batched HMC against Pyro's HMC on the BNN posterior.

Target: :class:`samplers.targets.BNNPosterior` (the DiGS paper's 550-weight regression network,
500 training points). Both sides run the same algorithm -- identity mass matrix, ``L`` leapfrog
steps of one fixed step size ``h``, a Metropolis test -- from the same starting states, so their
acceptance rates and posterior summaries must agree and the rates measure the machinery alone:

1. warm-up (untimed, ours): ``--chains`` chains of ``samplers.HMC`` with dual-averaging step-size
   adaptation for ``--warmup-transitions`` transitions from prior draws; the last states are the
   starting states of every variant below and the adapted step size is their ``h``;
2. every variant then runs ``--transitions`` transitions of every chain at that fixed ``h``:

   - ``ours``: ``samplers.HMC(step_size=h, adapt=False, n_chains=C, init=x0)`` -- all chains in
     one batch, the target's closed-form gradient (the library's default use);
   - ``ours_autograd``: the same on ``from_log_prob(target.log_prob, dim)`` (gradient by autograd);
   - ``ours_one_chain``: the chains one after another (``n_chains=1``), closed-form gradient,
     which separates batching from per-step overhead;
   - ``pyro``: ``pyro.infer.mcmc.HMC(potential_fn=-log p, step_size=h, num_steps=L,
     adapt_step_size=False, adapt_mass_matrix=False)`` in ``pyro.infer.MCMC``, one chain after
     another in this process (what ``num_chains=1`` runs; its multi-chain mode forks one process
     per chain, which a same-thread-count comparison cannot use), gradient by autograd;
   - ``pyro_analytic``: the same with the closed-form gradient behind a ``torch.autograd.Function``
     (the same gradient code as ``ours``), so ``ours / pyro_analytic`` compares samplers alone.

The rate is gradient evaluations per second (each side's own count: ``SamplerResult.n_grad_evals``,
and ``L`` per transition plus one at the start for Pyro). Repeats rotate the variants' order so that
machine load hits them alike (``_common.time_interleaved``). Agreement: acceptance rate (chains x
transitions that moved, counted from the draws alike for every variant) and the expected test NLL
of the draws (``BNNPosterior.test_nll``), mean +- s.e. over the chains. ``ours_one_chain`` and
``pyro`` run chain ``c`` with the same seed and both draw momentum then uniform from torch's
Mersenne Twister, so their paths coincide up to round-off until, in float32, a rounding
difference flips one Metropolis decision (the transitions each pair stayed within 1e-3 are
printed; ``tests/samplers/test_hmc_vs_pyro.py`` checks the coincidence in float64); ``ours``
draws all chains' momenta at once, a different stream, so its agreement with ``pyro`` is a
statistical one.

With ``--nuts W`` Pyro's NUTS (its defaults, identity mass) also runs once per chain from the
same start states, ``W`` adaptation transitions then ``--transitions`` draws, and the log-density
ESS (summed over chains) per second and per gradient of its sampling phase is set beside our
fixed-length HMC's: what a Pyro user would run instead of a hand-set trajectory length.

Usage: ``python benchmarks/hmc_vs_pyro.py [--chains 10] [--transitions 200] [--n-leapfrog 10]
[--repeats 3] [--threads 1] [--nuts 200]``. Pyro (``pyro-ppl``) is installed with BoTorch.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
import time
from typing import Any

import torch
from _common import (
    add_common_arguments,
    environment,
    format_table,
    ratio_summary,
    setup,
    summarize,
    time_interleaved,
    write_json,
)

import samplers
from probrec.argtypes import whole
from samplers.targets import BNNPosterior, from_log_prob

VARIANTS = ("ours", "ours_autograd", "ours_one_chain", "pyro", "pyro_analytic")


def analytic_potential(target: BNNPosterior):
    """``-log p(w)`` for one weight vector ``[dim]`` whose backward pass returns the target's
    closed-form gradient (for Pyro, which differentiates its potential with autograd)."""

    class _NegLogProb(torch.autograd.Function):
        @staticmethod
        def forward(ctx: Any, w: torch.Tensor) -> torch.Tensor:
            lp, grad = target.log_prob_and_grad(w.detach()[None])
            ctx.save_for_backward(grad[0])
            return -lp[0]

        @staticmethod
        def backward(ctx: Any, g_out: torch.Tensor) -> torch.Tensor:
            (grad,) = ctx.saved_tensors
            return -g_out * grad

    return lambda params: _NegLogProb.apply(params["w"])


def autograd_potential(target: BNNPosterior):
    """``-log p(w)`` for one weight vector, differentiated by autograd."""
    return lambda params: -target.log_prob(params["w"][None])[0]


def run_ours(
    target, x0: torch.Tensor, h: float, n_leapfrog: int, transitions: int, seed: int
) -> dict[str, Any]:
    """``transitions`` HMC transitions of every row of ``x0`` in one batch."""
    sampler = samplers.HMC(
        step_size=h,
        n_leapfrog=n_leapfrog,
        n_chains=x0.shape[0],
        burn_in=0,
        thin=1,
        adapt=False,
        init=x0,
        compile=False,
        progress=False,
    )
    res = sampler.run(target, x0.shape[0] * transitions, seed=seed)
    return {"chains": res.chains, "grad_evals": res.n_grad_evals}


def run_ours_one_chain(
    target, x0: torch.Tensor, h: float, n_leapfrog: int, transitions: int, seed: int
) -> dict[str, Any]:
    """The chains of :func:`run_ours` one after another (``n_chains=1``, seed ``seed + c``)."""
    runs = [
        run_ours(target, x0[c : c + 1], h, n_leapfrog, transitions, seed + c)
        for c in range(x0.shape[0])
    ]
    return {
        "chains": torch.cat([r["chains"] for r in runs]),
        "grad_evals": sum(r["grad_evals"] for r in runs),
    }


def run_pyro(
    potential, x0: torch.Tensor, h: float, n_leapfrog: int, transitions: int, seed: int
) -> dict[str, Any]:
    """Pyro's HMC, one chain after another from the rows of ``x0`` at fixed ``h`` (chain ``c``
    seeded with ``seed + c``: Pyro draws from torch's global generator)."""
    import pyro
    from pyro.infer.mcmc import HMC, MCMC

    chains = []
    for c in range(x0.shape[0]):
        pyro.set_rng_seed(seed + c)
        kernel = HMC(
            potential_fn=potential,
            step_size=h,
            num_steps=n_leapfrog,
            adapt_step_size=False,
            adapt_mass_matrix=False,
        )
        mcmc = MCMC(
            kernel,
            num_samples=transitions,
            warmup_steps=0,
            initial_params={"w": x0[c].clone()},
            disable_progbar=True,
        )
        mcmc.run()
        chains.append(mcmc.get_samples()["w"].detach())
    return {
        "chains": torch.stack(chains),
        "grad_evals": x0.shape[0] * (transitions * n_leapfrog + 1),
    }


def chain_summary(target: BNNPosterior, chains: torch.Tensor, x0: torch.Tensor) -> dict[str, Any]:
    """Accepted fraction (transitions that moved the state, counted alike for every variant) and
    expected test NLL of a variant's draws ``[C, T, dim]``, each mean +- s.e. over the chains."""
    prev = torch.cat([x0[:, None], chains[:, :-1]], dim=1)
    moved = (chains != prev).any(-1).double().mean(1).tolist()
    nll = [target.test_nll(ch) for ch in chains]
    c = len(nll)
    return {
        "accepted": statistics.fmean(moved),
        "accepted_se": statistics.stdev(moved) / math.sqrt(c) if c > 1 else None,
        "test_nll": statistics.fmean(nll),
        "test_nll_se": statistics.stdev(nll) / math.sqrt(c) if c > 1 else None,
    }


def run_pyro_nuts(
    target: BNNPosterior, x0: torch.Tensor, warmup: int, transitions: int, seed: int
) -> dict[str, Any]:
    """Pyro's NUTS (its defaults: step size adapted to 0.8 acceptance, trees up to depth 10;
    identity mass matrix, as ours) from the rows of ``x0``, one chain after another.

    Returns the draws ``[C, T, dim]`` and, for the sampling phase alone (after ``warmup``
    adaptation transitions), the seconds and gradient evaluations it took, counted by a
    wrapper around the potential (Pyro evaluates it once per gradient).
    """
    import pyro
    from pyro.infer.mcmc import MCMC, NUTS

    base = autograd_potential(target)
    chains, seconds, grads = [], 0.0, 0
    for c in range(x0.shape[0]):
        pyro.set_rng_seed(seed + c)
        calls = [0]
        mark: dict[str, float] = {}

        def potential(params: dict, calls: list = calls) -> torch.Tensor:
            calls[0] += 1
            return base(params)

        def hook(kernel, samples, stage, i, mark=mark, calls=calls) -> None:
            if stage == "Warmup" and i == warmup - 1:  # the sampling phase starts
                mark["t"], mark["calls"] = time.perf_counter(), calls[0]

        kernel = NUTS(potential_fn=potential, adapt_step_size=True, adapt_mass_matrix=False)
        mcmc = MCMC(
            kernel,
            num_samples=transitions,
            warmup_steps=warmup,
            initial_params={"w": x0[c].clone()},
            disable_progbar=True,
            hook_fn=hook,
        )
        mcmc.run()
        seconds += time.perf_counter() - mark["t"]
        grads += calls[0] - mark["calls"]
        chains.append(mcmc.get_samples()["w"].detach())
    return {"chains": torch.stack(chains), "seconds": seconds, "grad_evals": grads}


def log_density_ess(target: BNNPosterior, chains: torch.Tensor) -> float:
    """Bulk ESS of the log-density trace, summed over chains (each chain on its own: the
    posterior's weight-permutation modes make chains disagree in every weight, while the
    log-density is the same function in every mode)."""
    from samplers.diagnostics import ess

    lp = torch.stack([target.log_prob(ch) for ch in chains])  # [C, T]
    return float(sum(float(ess(row[None].double())[0]) for row in lp))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.splitlines()[0],
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    add_common_arguments(p, "hmc_vs_pyro", repeats=3, data=False)
    p.set_defaults(threads=1)
    p.add_argument("--chains", type=whole(1), default=10, help="chains of every variant")
    p.add_argument(
        "--transitions", type=whole(1), default=200, help="timed HMC transitions per chain"
    )
    p.add_argument("--n-leapfrog", type=whole(1), default=10, help="leapfrog steps L")
    p.add_argument(
        "--nuts",
        type=whole(0),
        default=0,
        help="also run Pyro's NUTS once: this many adaptation transitions per chain from the "
        "same start states, then --transitions draws, and compare the log-density ESS per "
        "second and per gradient of its sampling phase with our fixed-step HMC's (0: skip)",
    )
    p.add_argument(
        "--nuts-chains",
        type=whole(1),
        default=4,
        help="chains of the NUTS run (the first of the start states; NUTS builds trees of up "
        "to 1,023 gradients per transition on this target, so it is slow)",
    )
    p.add_argument(
        "--warmup-transitions",
        type=whole(1),
        default=300,
        help="adaptation transitions (ours, untimed) that give the start states and h",
    )
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    device = setup(args)
    if device.type != "cpu":
        print("hmc_vs_pyro runs on the CPU (Pyro's loop is host-bound)", file=sys.stderr)
        return 2
    try:
        import pyro
    except ImportError as exc:
        print(f"needs pyro-ppl (pip install pyro-ppl): {exc}", file=sys.stderr)
        return 2
    target = BNNPosterior(seed=args.seed)
    warm = samplers.HMC(
        n_leapfrog=args.n_leapfrog,
        n_chains=args.chains,
        burn_in=args.warmup_transitions,
        thin=1,
        compile=False,
        progress=False,
    ).run(target, args.chains, seed=args.seed)
    x0 = warm.chains[:, -1].clone()
    h = float(warm.diagnostics["step_size"])
    print(
        f"warm-up: {args.chains} chains x {args.warmup_transitions} transitions, h = {h:.5f} "
        f"(acceptance {warm.diagnostics['acceptance_rate']:.3f})",
        flush=True,
    )
    autograd_target = from_log_prob(target.log_prob, target.dim, name="bnn_autograd")
    L, T = args.n_leapfrog, args.transitions
    runs = {
        "ours": lambda s: run_ours(target, x0, h, L, T, s),
        "ours_autograd": lambda s: run_ours(autograd_target, x0, h, L, T, s),
        "ours_one_chain": lambda s: run_ours_one_chain(target, x0, h, L, T, s),
        "pyro": lambda s: run_pyro(autograd_potential(target), x0, h, L, T, s),
        "pyro_analytic": lambda s: run_pyro(analytic_potential(target), x0, h, L, T, s),
    }
    last: dict[str, dict[str, Any]] = {}
    calls = {name: 0 for name in runs}

    def call(name: str) -> None:
        calls[name] += 1
        last[name] = runs[name](args.seed + 1000 * calls[name])

    seconds = time_interleaved(
        {name: (lambda n=name: call(n)) for name in VARIANTS},
        args.repeats,
        args.warmup,
        device,
        args.clock,
    )
    evals = {name: last[name]["grad_evals"] for name in VARIANTS}
    rate = {name: [evals[name] / s for s in seconds[name]] for name in VARIANTS}
    agree = {name: chain_summary(target, last[name]["chains"], x0) for name in VARIANTS}
    # ours_one_chain and pyro ran with the same seeds: the same momenta and uniforms, in the
    # same order, from torch's Mersenne Twister, so their paths must coincide up to round-off
    # up to round-off: in float32 one Metropolis decision eventually flips, after which the two
    # chains are independent draws; count the transitions each chain pair stayed together
    gap = (last["ours_one_chain"]["chains"] - last["pyro"]["chains"]).abs().amax(-1)  # [C, T]
    apart = gap > 1e-3
    together = torch.where(apart.any(1), apart.to(torch.int64).argmax(1), T).tolist()
    ratios = {
        "ours_over_pyro": ratio_summary(seconds["pyro"], seconds["ours"]),
        "ours_over_pyro_analytic": ratio_summary(seconds["pyro_analytic"], seconds["ours"]),
        "ours_one_chain_over_pyro_analytic": ratio_summary(
            seconds["pyro_analytic"], seconds["ours_one_chain"]
        ),
        "ours_autograd_over_pyro": ratio_summary(seconds["pyro"], seconds["ours_autograd"]),
    }
    nuts_row = None
    if args.nuts:
        print(
            f"Pyro NUTS: {min(args.nuts_chains, args.chains)} chains, {args.nuts} adaptation + "
            f"{T} transitions each ...",
            flush=True,
        )
        nuts = run_pyro_nuts(target, x0[: args.nuts_chains], args.nuts, T, args.seed + 99)
        hmc_s = statistics.median(seconds["ours"])
        pyro_s = statistics.median(seconds["pyro"])
        ess_of = {
            "ours": log_density_ess(target, last["ours"]["chains"]),
            "pyro": log_density_ess(target, last["pyro"]["chains"]),
            "pyro_nuts": log_density_ess(target, nuts["chains"]),
        }
        secs = {"ours": hmc_s, "pyro": pyro_s, "pyro_nuts": nuts["seconds"]}
        grads = {"ours": evals["ours"], "pyro": evals["pyro"], "pyro_nuts": nuts["grad_evals"]}
        nuts_row = {
            k: {
                "log_density_ess": ess_of[k],
                "seconds": secs[k],
                "grad_evals": grads[k],
                "ess_per_second": ess_of[k] / secs[k],
                "ess_per_1000_grads": 1000 * ess_of[k] / grads[k],
            }
            for k in ess_of
        }
        nuts_row["pyro_nuts"].update(
            chains=int(nuts["chains"].shape[0]),
            test_nll=chain_summary(target, nuts["chains"], x0[: nuts["chains"].shape[0]])[
                "test_nll"
            ],
        )
        for k, r in nuts_row.items():
            print(
                f"{k:10s} log-density ESS {r['log_density_ess']:7.1f} in {r['seconds']:6.2f} s "
                f"and {r['grad_evals']:,} gradients: {r['ess_per_second']:6.2f} ESS / s, "
                f"{r['ess_per_1000_grads']:.2f} ESS / 1000 gradients"
            )
    rows = [
        [
            name,
            f"{statistics.median(rate[name]):,.0f}",
            f"{statistics.median(seconds[name]):.2f}",
            f"{agree[name]['accepted']:.3f} +- {agree[name]['accepted_se']:.3f}",
            f"{agree[name]['test_nll']:.4f} +- {agree[name]['test_nll_se']:.4f}",
        ]
        for name in VARIANTS
    ]
    print(
        format_table(
            rows, ["variant", "grad evals / s", "median s", "accepted", "expected test NLL"]
        )
    )
    print(
        "transitions ours_one_chain and pyro stayed within 1e-3 of each other (same random "
        f"stream), per chain: {together} of {T}"
    )
    for key, r in ratios.items():
        print(
            f"{key}: {r['ratio_of_medians']:.2f}x "
            f"(per repeat {r['per_repeat_min']:.2f}-{r['per_repeat_max']:.2f}x)"
        )
    path = write_json(
        args.out,
        {
            "benchmark": "hmc_vs_pyro",
            "config": {
                "target": "BNNPosterior",
                "target_seed": args.seed,
                "dim": target.dim,
                "chains": args.chains,
                "transitions": T,
                "n_leapfrog": L,
                "step_size": h,
                "warmup_transitions": args.warmup_transitions,
                "repeats": args.repeats,
                "warmup_calls": args.warmup,
                "clock": args.clock,
            },
            "environment": {**environment(device), "pyro": pyro.__version__},
            "grad_evals": evals,
            "seconds": seconds,
            "summary_seconds": {k: summarize(v) for k, v in seconds.items()},
            "grad_evals_per_second": {k: summarize(v) for k, v in rate.items()},
            "agreement": agree,
            "transitions_together_ours_one_chain_vs_pyro": together,
            "max_abs_gap_before_apart": float(torch.where(apart.cumsum(1) > 0, 0.0, gap).max()),
            "ratios": ratios,
            "nuts": nuts_row,
        },
    )
    print(f"-> {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
