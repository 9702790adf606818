"""Benchmark: the batched inner loop vs fitting the same GPs one by one with gpytorch + BoTorch.

Both sides fit the same MAP objective on the same support sets: a zero-mean exact GP with a
Matern-5/2 kernel with an outputscale, Gaussian noise (floor 1e-5), a log-normal prior on the
lengthscale with mode at the median heuristic of the support features and one on the noise
with mode 0.1 (scale 0.25; location ``log(mode) + 0.25^2``), normalised by the number of points
as gpytorch's ``ExactMarginalLogLikelihood`` is (Chen, Tripp & Hernandez-Lobato, ICLR 2023).
Both start from the same hyperparameters (lengthscale at the prior mode, outputscale 1,
noise 0.1).

* **ours**: :class:`probrec.gp.GPHead` on all ``T`` tasks at once: support geometry, prior
  centres and batched damped Newton steps (``probrec.gp.fit_hyperparameters``).
* **reference**: for each task, a gpytorch ``ExactGP`` (made usable by BoTorch through its
  ``GPyTorchModel`` mix-in) with ``ScaleKernel(MaternKernel(2.5))``, ``GaussianLikelihood`` and
  the priors registered on lengthscale and noise, fitted by ``botorch.fit.fit_gpytorch_mll``
  with its defaults (scipy L-BFGS-B).

Equal tolerance, honestly: the reference is run first with its default stopping rule; the
gradient norm of the per-point objective that it reaches is then measured in the log
hyperparameters (the coordinates our Newton steps use) and our tolerance is set to the
smallest of those norms over the tasks (``--tol match``), so every task of ours ends at least
as close to a stationary point as the best task of the reference. The per-task objective at
both optima is reported as a correctness check: it is the same MAP objective, so the values
must agree.

Run from the repository root::

    python benchmarks/inner_loop.py                 # 16 tasks x 64 support points, ToxCast
    python benchmarks/inner_loop.py --data none     # synthetic ECFP-like count features
"""

from __future__ import annotations

import argparse
import math
import warnings
from typing import Any

import gpytorch
import torch
from _common import (
    add_common_arguments,
    environment,
    fmt_spread,
    format_table,
    ratio_summary,
    resolve_data,
    setup,
    summarize,
    task_batch,
    time_interleaved,
    write_json,
)
from botorch.fit import fit_gpytorch_mll
from botorch.models.gpytorch import GPyTorchModel
from gpytorch.priors import LogNormalPrior

from probrec.argtypes import number, whole
from probrec.gp import GPConfig, GPHead, geometry, inner_objective_derivatives, prior_centres
from probrec.gp.head import encode_labels

NAME = "inner_loop"


class ReferenceGP(gpytorch.models.ExactGP, GPyTorchModel):
    """Zero-mean exact GP with ``ScaleKernel(MaternKernel(nu=2.5))`` and the reference priors.

    Args:
        x: ``[n, d]`` support features; y: ``[n]`` targets (+-1).
        lengthscale_mode: mode of the log-normal lengthscale prior (also the initial value).
        config: the GP configuration whose priors are reproduced.
    """

    _num_outputs = 1

    def __init__(self, x: torch.Tensor, y: torch.Tensor, lengthscale_mode: float, config: GPConfig):
        s = config.prior_scale
        lik = gpytorch.likelihoods.GaussianLikelihood(
            noise_prior=LogNormalPrior(math.log(config.noise_prior_mode) + s**2, s),
            noise_constraint=gpytorch.constraints.GreaterThan(config.min_noise),
        )
        super().__init__(x, y, lik)
        self.mean_module = gpytorch.means.ZeroMean()
        base = gpytorch.kernels.MaternKernel(
            nu=2.5, lengthscale_prior=LogNormalPrior(math.log(lengthscale_mode) + s**2, s)
        )
        self.covar_module = gpytorch.kernels.ScaleKernel(base)
        self.to(x)
        base.lengthscale = lengthscale_mode
        self.covar_module.outputscale = 1.0
        lik.noise = config.noise_prior_mode

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))

    def log_theta(self, min_noise: float) -> torch.Tensor:
        """``[log lengthscale, log outputscale, log(noise - min_noise)]`` (``GPConfig`` order)."""
        ls = self.covar_module.base_kernel.lengthscale.reshape(())
        os_ = self.covar_module.outputscale.reshape(())
        noise = self.likelihood.noise.reshape(())
        return torch.stack([ls.log(), os_.log(), (noise - min_noise).log()]).detach()


def fit_reference(
    x: torch.Tensor, targets: torch.Tensor, config: GPConfig, *, record: bool = False
) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """Fits every task one by one with ``fit_gpytorch_mll`` (BoTorch defaults).

    Args:
        x: ``[T, n, d]`` features; targets: ``[T, n]`` (+-1).
        record: also return per-task diagnostics (L-BFGS-B steps, raw-space gradient norm,
            ``-mll`` at the optimum); off when timing.

    Returns:
        ``theta [T, 3]`` in our log coordinates and the per-task diagnostics.
    """
    thetas, info = [], []
    for i in range(x.shape[0]):
        mode = float(prior_centres(config, x[i : i + 1]).lengthscale_mode[0])
        model = ReferenceGP(x[i], targets[i], mode, config)
        mll = gpytorch.mlls.ExactMarginalLogLikelihood(model.likelihood, model)
        steps: list[int] = []

        def callback(params: Any, result: Any, steps: list[int] = steps) -> None:
            steps.append(int(result.step))

        kwargs = {"optimizer_kwargs": {"callback": callback}} if record else {}
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # BoTorch's advice on input scaling / dtype
            fit_gpytorch_mll(mll, **kwargs)
        thetas.append(model.log_theta(config.min_noise))
        if record:
            mll.train()
            loss = -mll(model(x[i]), targets[i])
            params = [p for p in mll.parameters() if p.requires_grad]
            grads = torch.autograd.grad(loss, params)
            info.append(
                {
                    "lbfgs_steps": max(steps) if steps else 0,
                    "raw_grad_norm": float(torch.cat([g.reshape(-1) for g in grads]).norm()),
                    "neg_mll": float(loss.detach()),
                }
            )
            mll.eval()
    return torch.stack(thetas), info


def tolerance(text: str) -> str | float:
    """argparse type of ``--tol``: ``match`` or a finite number > 0."""
    return "match" if text == "match" else number(0.0)(text)


tolerance.__name__ = "tolerance"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(p, NAME)
    p.add_argument("--tasks", type=whole(1), default=16, help="tasks fitted (default %(default)s)")
    p.add_argument(
        "--support",
        type=whole(2),
        default=64,
        help="support points per task, >= 2 (default %(default)s)",
    )
    p.add_argument(
        "--dim",
        type=whole(1),
        default=2048,
        help="width of synthetic features (default %(default)s)",
    )
    p.add_argument(
        "--descriptors",
        action="store_true",
        help="real data: Morgan counts + RDKit descriptors (2265 columns)",
    )
    p.add_argument(
        "--dtype",
        choices=("float64", "float32"),
        default="float64",
        help="dtype of features and of both fits (default %(default)s)",
    )
    p.add_argument(
        "--tol",
        type=tolerance,
        default="match",
        help="our gradient-norm tolerance: a number, or 'match' (default): the smallest "
        "gradient norm the reference reaches on any task",
    )
    p.add_argument(
        "--max-iter", type=whole(1), default=50, help="Newton iteration cap (default %(default)s)"
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the table and the ratio, writes the JSON; returns the payload."""
    args = build_parser().parse_args(argv)
    device = setup(args)
    dtype = getattr(torch, args.dtype)
    data = resolve_data(args.data)
    batch = task_batch(
        data, args.tasks, args.support, 1, args.seed, dim=args.dim, descriptors=args.descriptors
    )
    x = torch.as_tensor(batch.support_x, dtype=dtype, device=device)
    y = torch.as_tensor(batch.support_y, dtype=dtype, device=device)
    config = GPConfig(kernel="matern52", kind="classification")
    targets, _, _ = encode_labels(y, "classification")
    geom = geometry(config, x, x)
    centres = prior_centres(config, x)

    # 1. the reference with its default stopping rule; its gradient norm in our coordinates
    theta_ref, ref_info = fit_reference(x, targets, config, record=True)
    f_ref, g_ref, _ = inner_objective_derivatives(theta_ref, config, geom, targets, None, centres)
    ref_gnorm = g_ref.norm(dim=-1)
    tol = float(ref_gnorm.min().clamp_min(1e-12)) if args.tol == "match" else args.tol

    # 2. ours at that tolerance
    head = GPHead(config, tol=tol, max_iter=args.max_iter)
    fit = head.fit(x, y).fit
    f_ours = fit.objective.to(f_ref.dtype)

    # 3. timing, interleaved
    times = time_interleaved(
        {"ours": lambda: head.fit(x, y), "reference": lambda: fit_reference(x, targets, config)},
        args.repeats,
        args.warmup,
        device,
        args.clock,
    )
    s_ours, s_ref = summarize(times["ours"]), summarize(times["reference"])
    speed = ratio_summary(times["reference"], times["ours"])

    obj_diff = (f_ours - f_ref).abs()
    theta_diff = (fit.theta.to(theta_ref.dtype) - theta_ref).abs()
    neg_mll = torch.tensor([r["neg_mll"] for r in ref_info], dtype=f_ref.dtype, device=f_ref.device)
    rows = [
        [
            "ours (batched Newton, all tasks)",
            fmt_spread(s_ours, 1e3, " ms"),
            f"{s_ours['median'] * 1e3 / args.tasks:.2f}",
            f"{int(fit.converged.sum())}/{args.tasks}",
            f"{float(fit.grad_norm.max()):.2e}",
            f"{int(fit.n_iter.max())} Newton",
        ],
        [
            "reference (gpytorch + fit_gpytorch_mll, per task)",
            fmt_spread(s_ref, 1e3, " ms"),
            f"{s_ref['median'] * 1e3 / args.tasks:.2f}",
            "-",
            f"{float(ref_gnorm.max()):.2e}",
            f"{max(r['lbfgs_steps'] for r in ref_info)} L-BFGS-B",
        ],
    ]
    print(
        f"inner loop: {args.tasks} tasks x {args.support} support points, {x.shape[-1]}-d features "
        f"({batch.source}), {args.dtype}, {device}, {torch.get_num_threads()} threads, "
        f"{args.clock} clock, {args.repeats} repeats (median [min, max])"
    )
    print(
        format_table(rows, ["variant", "time", "ms/task", "converged", "max |grad|", "max iters"])
    )
    print(
        f"tolerance: ours {tol:.2e} (reference's gradient norm in log coordinates: min "
        f"{float(ref_gnorm.min()):.2e}, median {float(ref_gnorm.median()):.2e}, max "
        f"{float(ref_gnorm.max()):.2e}); our max {float(fit.grad_norm.max()):.2e}"
    )
    print(
        f"same optimum: max |objective ours - reference| = {float(obj_diff.max()):.2e} "
        f"(ours lower on {int((f_ours <= f_ref + 1e-12).sum())}/{args.tasks} tasks); max |theta "
        f"diff| = {float(theta_diff.max()):.2e}; max |our objective - gpytorch -mll| at the "
        f"reference optimum = {float((f_ref - neg_mll).abs().max()):.2e}"
    )
    print(
        f"SUMMARY inner_loop: ours {s_ours['median'] * 1e3:.1f} ms vs reference "
        f"{s_ref['median'] * 1e3:.1f} ms for {args.tasks} tasks -> "
        f"{speed['ratio_of_medians']:.1f}x faster (per-repeat {speed['per_repeat_min']:.1f}-"
        f"{speed['per_repeat_max']:.1f}x; target 5x)"
    )

    payload = {
        "benchmark": NAME,
        "config": {
            k: (str(v) if not isinstance(v, (int, float, bool, type(None))) else v)
            for k, v in vars(args).items()
        },
        "data": {"source": batch.source, "tasks": batch.names, "dim": int(x.shape[-1])},
        "environment": environment(device),
        "tolerance": tol,
        "times_s": times,
        "summary_s": {"ours": s_ours, "reference": s_ref},
        "speedup": speed,
        "target_speedup": 5.0,
        "ours": {
            "grad_norm": fit.grad_norm,
            "converged": fit.converged,
            "n_iter": fit.n_iter,
            "objective": f_ours,
            "theta": fit.theta,
        },
        "reference": {
            "grad_norm_log_space": ref_gnorm,
            "objective": f_ref,
            "theta": theta_ref,
            "per_task": ref_info,
        },
        "agreement": {
            "max_abs_objective_diff": float(obj_diff.max()),
            "max_abs_theta_diff": float(theta_diff.max()),
            "max_abs_objective_vs_gpytorch_mll": float((f_ref - neg_mll).abs().max()),
        },
    }
    write_json(args.out, payload)
    print(f"wrote {args.out}")
    return payload


if __name__ == "__main__":
    main()
