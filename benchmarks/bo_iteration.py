"""Benchmark: one Bayesian-optimisation iteration over a molecule pool, ours vs plain BoTorch.

The work of one iteration of the out-of-domain protocol (Chen, Tripp & Hernandez-Lobato,
ICLR 2023): fit a GP with a Tanimoto kernel on the Morgan count fingerprints of the molecules
observed so far, score every other molecule of the pool with log expected improvement, pick the
best.

* **ours**: :class:`probrec.gp.bo_models.DeepKernelGP` (hyperparameters by the batched Newton
  inner loop with the log-normal noise prior) and the pool scored with
  :func:`probrec.gp.pool_bo.score_pool` (BoTorch's ``LogExpectedImprovement`` on the model's
  direct ``q = 1`` marginals).
* **botorch**: the standard recipe, ``SingleTaskGP`` with the same kernel
  (``ScaleKernel(TanimotoKernel())``) and ``Standardize``, fitted by ``fit_gpytorch_mll``
  (L-BFGS-B), candidates chosen by ``optimize_acqf_discrete`` (gpytorch's batched path).
* **scoring only**: the pool scoring of the same fitted model through both posterior paths
  (ours and gpytorch's), which must give the same acquisition values (checked).

The objective is the data set's label turned into something to maximise (:data:`GOALS`:
pIC50 for COVID Moonshot, minus the docking score for DOCKSTRING ESR2, PCE for CEP).

Run from the repository root::

    python benchmarks/bo_iteration.py --threads 1            # COVID Moonshot pool, 46 observed
    python benchmarks/bo_iteration.py --dataset cep_pce --data ../shared/data
    python benchmarks/bo_iteration.py --data none --pool 2000   # synthetic pool
"""

from __future__ import annotations

import argparse
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from _common import (
    REPO,
    add_common_arguments,
    environment,
    fmt_spread,
    format_table,
    ratio_summary,
    setup,
    summarize,
    time_interleaved,
    write_json,
)
from botorch.acquisition import LogExpectedImprovement
from botorch.fit import fit_gpytorch_mll
from botorch.models import SingleTaskGP
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.transforms.outcome import Standardize
from botorch.optim import optimize_acqf_discrete
from gpytorch.kernels import ScaleKernel
from gpytorch.mlls import ExactMarginalLogLikelihood

from probrec.argtypes import path_or_word, whole
from probrec.data import MoleculeFeaturizer, load_regression_set
from probrec.data.moleculenet import REGRESSION_SETS
from probrec.gp import GPConfig, TanimotoKernel
from probrec.gp.bo_models import DeepKernelGP
from probrec.gp.pool_bo import score_pool

NAME = "bo_iteration"
DEFAULT_ROOT = REPO.parent / "shared" / "data"
#: out-of-domain set -> sign that turns its label into the objective to maximise (as the
#: ``GOALS`` of ``examples/molecular_bo.py``): COVID Moonshot's label is the negated pIC50,
#: DOCKSTRING's the docking score (lower binds better), CEP's the PCE (higher is better)
GOALS = {"covid_moonshot": -1.0, "dockstring_esr2": -1.0, "cep_pce": 1.0}


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    add_common_arguments(p, NAME, data=False)
    p.add_argument(
        "--data",
        type=path_or_word("dir"),
        default="auto",
        help="data root holding molecules/ood/ (the pool of --dataset); 'auto' (default) uses "
        f"{DEFAULT_ROOT.relative_to(REPO.parent)} beside the repository when it holds the data "
        "set, 'none' a synthetic pool of --pool molecules",
    )
    p.add_argument(
        "--dataset",
        default="covid_moonshot",
        choices=tuple(GOALS),
        help="out-of-domain pool (default %(default)s)",
    )
    p.add_argument(
        "--observed",
        type=whole(2),
        default=46,
        help="observed molecules, >= 2 (default %(default)s: 16 + 30)",
    )
    p.add_argument(
        "--pool",
        type=whole(2),
        default=2000,
        help="synthetic pool size, with --data none (default %(default)s)",
    )
    return p


def _raise(message: str) -> None:
    raise ValueError(message)


def _dataset_file(root: Path, name: str) -> Path:
    return root / "molecules" / REGRESSION_SETS[name][0]


def pool(
    args: argparse.Namespace, parser: argparse.ArgumentParser | None = None
) -> tuple[torch.Tensor, torch.Tensor, str]:
    """Fingerprints ``[N, 2048]`` and objective ``[N]`` (to maximise) of the pool: ``--dataset``
    under the ``--data`` root, or synthetic (``--data none``, or ``auto`` without the data).

    Raises:
        SystemExit: (through ``parser.error``) a data root without the data set, or
            ``--observed`` that leaves no molecule of the pool to choose from.
    """
    error = parser.error if parser is not None else _raise
    root: Path | None
    if args.data == "none":
        root = None
    elif args.data == "auto":
        root = DEFAULT_ROOT if _dataset_file(DEFAULT_ROOT, args.dataset).is_file() else None
    else:
        root = Path(args.data)
        if not _dataset_file(root, args.dataset).is_file():
            error(
                f"argument --data: {str(root)!r} holds no {args.dataset} pool "
                f"(molecules/{REGRESSION_SETS[args.dataset][0]})"
            )
    if root is not None:
        task = load_regression_set(args.dataset, root)
        if args.observed >= len(task):
            error(
                f"argument --observed: {args.observed} leaves no candidate in the "
                f"{len(task)}-molecule {args.dataset} pool"
            )
        x = MoleculeFeaturizer(descriptors=False, progress=False).transform(list(task.inputs))
        y = GOALS[args.dataset] * torch.as_tensor(task.labels, dtype=torch.float64)
        return torch.as_tensor(x, dtype=torch.float64), y, args.dataset
    n = args.pool
    if args.observed >= n:
        error(f"argument --observed: {args.observed} leaves no candidate in a pool of {n} (--pool)")
    g = torch.Generator().manual_seed(args.seed)
    x = (torch.rand(n, 2048, generator=g) < 0.02).double() * torch.randint(
        1, 4, (n, 2048), generator=g
    )
    return x, x[:, :64].sum(-1) + torch.randn(n, generator=g).double(), "synthetic"


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Runs the benchmark, prints the table and ratios, writes the JSON; returns the payload."""
    parser = build_parser()
    args = parser.parse_args(argv)
    device = setup(args)
    warnings.simplefilter("ignore")  # BoTorch's input-scaling advice for count features
    x, y, source = pool(args, parser)
    rng = np.random.default_rng(args.seed)
    obs = torch.as_tensor(rng.choice(len(x), size=args.observed, replace=False))
    rest = torch.as_tensor(np.setdiff1d(np.arange(len(x)), obs.numpy()))
    x_obs, y_obs, x_rest = x[obs], y[obs, None], x[rest]
    best_f = y_obs.max()
    config = GPConfig(kernel="tanimoto", kind="regression")

    def ours() -> int:
        model = DeepKernelGP.fit(x_obs, y_obs, config=config)
        return int(score_pool(LogExpectedImprovement(model, best_f=best_f), x_rest).argmax())

    def botorch() -> torch.Tensor:
        model = SingleTaskGP(
            x_obs,
            y_obs,
            covar_module=ScaleKernel(TanimotoKernel()),
            outcome_transform=Standardize(m=1),
        )
        fit_gpytorch_mll(ExactMarginalLogLikelihood(model.likelihood, model))
        cand, _ = optimize_acqf_discrete(
            LogExpectedImprovement(model, best_f=best_f), q=1, choices=x_rest
        )
        return cand

    fitted = DeepKernelGP.fit(x_obs, y_obs, config=config)
    acq = LogExpectedImprovement(fitted, best_f=best_f)

    class _GpytorchPath(torch.nn.Module):
        """The same fitted model, posterior through gpytorch's batched path."""

        def __init__(self, model: DeepKernelGP) -> None:
            super().__init__()
            self.model = model
            self.num_outputs = 1

        def posterior(self, X: torch.Tensor, **kw: Any):
            return GPyTorchModel.posterior(self.model, X, **kw)

    acq_ref = LogExpectedImprovement(_GpytorchPath(fitted), best_f=best_f)
    s_ours, s_ref = score_pool(acq, x_rest), score_pool(acq_ref, x_rest, chunk=2048)
    max_diff = float((s_ours - s_ref).abs().max())
    same_pick = int(s_ours.argmax()) == int(s_ref.argmax())
    times = time_interleaved(
        {
            "ours": ours,
            "botorch": botorch,
            "score ours": lambda: score_pool(acq, x_rest),
            "score gpytorch path": lambda: score_pool(acq_ref, x_rest, chunk=2048),
        },
        args.repeats,
        args.warmup,
        device,
        args.clock,
    )
    summ = {k: summarize(v) for k, v in times.items()}
    ratios = {
        "iteration": ratio_summary(times["botorch"], times["ours"]),
        "scoring": ratio_summary(times["score gpytorch path"], times["score ours"]),
    }
    rows = [[k, fmt_spread(s, 1e3, " ms")] for k, s in summ.items()]
    print(
        f"one BO iteration: {args.observed} observed, pool of {len(x_rest)} ({source}, "
        f"{x.shape[1]}-d counts), Tanimoto GP, {torch.get_num_threads()} threads, {args.clock} "
        f"clock, {args.repeats} repeats (median [min, max])"
    )
    print(format_table(rows, ["variant", "time"]))
    print(f"scoring paths agree: max |LogEI difference| {max_diff:.2e}, same argmax: {same_pick}")
    print(
        f"SUMMARY {NAME}: iteration {ratios['iteration']['ratio_of_medians']:.1f}x faster than "
        f"SingleTaskGP + fit_gpytorch_mll + optimize_acqf_discrete; pool scoring "
        f"{ratios['scoring']['ratio_of_medians']:.1f}x faster than gpytorch's batched path"
    )
    payload = {
        "benchmark": NAME,
        "config": {k: str(v) for k, v in vars(args).items()},
        "source": source,
        "objective_sign": GOALS[args.dataset] if source != "synthetic" else None,
        "environment": environment(device),
        "seconds": times,
        "summary": summ,
        "ratios": ratios,
        "scoring_max_abs_diff": max_diff,
        "scoring_same_argmax": same_pick,
    }
    print(f"wrote {write_json(args.out, payload)}")
    return payload


if __name__ == "__main__":
    main()
