"""Out-of-domain molecular prediction and Bayesian optimisation on frozen meta-learned features.

The protocol of Chen, Tripp & Hernandez-Lobato, "Meta-learning Adaptive Deep Kernel Gaussian
Processes for Molecular Property Prediction" (ICLR 2023, Section 5.3 and Appendix): a feature
extractor meta-trained on one family of tasks is frozen and reused on regression sets from other
domains (COVID Moonshot, DOCKSTRING ESR2, CEP); a GP head's hyperparameters are fitted on the few
molecules observed.

* Prediction: fit on ``n_train`` random molecules, score the rest by out-of-sample R^2 (the
  training mean scores 0) and the mean per-molecule Gaussian negative log predictive density in
  units standardised by the training mean and standard deviation; many repeats.
* Bayesian optimisation: :func:`probrec.gp.pool_bo.pool_bo` over the whole set as a pool
  (16 random initial points, 30 iterations of batch size 1 with expected improvement).

Each model is a :class:`Surrogate`: a BoTorch model built on one named input matrix (meta-learned
features, fingerprints), so the deep-kernel GPs and the baselines run through the same code.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from botorch.models.model import Model

from metalearn.metrics import mean_and_se, r2_os
from probrec.checks import (
    as_float_tensor,
    check_choice,
    check_positive_int,
    check_real,
    check_seed,
)
from probrec.gp.bo_models import DeepKernelGP, ForestModel
from probrec.gp.exact import GPConfig
from probrec.gp.kernels import KERNELS
from probrec.gp.pool_bo import pool_bo
from probrec.progress import track
from probrec.seeding import numpy_rng, wrap_seed


@dataclass(frozen=True)
class Surrogate:
    """A named regression model on one input matrix.

    Attributes:
        name: label in tables and plots.
        inputs: key of the input matrix it reads (e.g. ``"ADKF-IFT"``, ``"fingerprint"``).
        model: ``"gp"`` (:class:`~probrec.gp.bo_models.DeepKernelGP`, hyperparameters fitted on
            the observed points) or ``"forest"`` (:class:`~probrec.gp.bo_models.ForestModel`).
        kernel: GP kernel (``"matern52"``, ``"rbf"``, ``"tanimoto"``).
    """

    name: str
    inputs: str
    model: str = "gp"
    kernel: str = "matern52"

    def __post_init__(self) -> None:
        check_choice(self.model, "model", ("gp", "forest"))
        check_choice(self.kernel, "kernel", KERNELS)  # was accepted until the first fit

    def fit(self, X: torch.Tensor, Y: torch.Tensor, seed: int = 0) -> Model:
        """A fitted BoTorch model on ``X [n, d]``, ``Y [n, 1]``."""
        if self.model == "forest":
            return ForestModel.fit(X, Y, seed=seed)
        return DeepKernelGP.fit(X, Y, config=GPConfig(kernel=self.kernel, kind="regression"))


def default_surrogates(feature_names: Sequence[str]) -> list[Surrogate]:
    """GPs (Matern-5/2) on each meta-learned feature set, a Tanimoto GP and a random forest on
    fingerprints (input key ``"fingerprint"``)."""
    gps = [Surrogate(name, name) for name in feature_names]
    return gps + [
        Surrogate("GP-Tanimoto", "fingerprint", "gp", "tanimoto"),
        Surrogate("RF", "fingerprint", "forest"),
    ]


def _float_inputs(inputs: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """Each input matrix as a floating tensor: integer or bool matrices (count fingerprints,
    bits) become float64, so the labels, which take the inputs' dtype, are not truncated."""
    out = {}
    for k, v in inputs.items():
        floating = (
            v.is_floating_point()
            if isinstance(v, torch.Tensor)
            else np.issubdtype(np.asarray(v).dtype, np.floating)
        )
        out[k] = as_float_tensor(
            v, f"inputs[{k!r}]", ndim=2, dtype=None if floating else torch.float64
        )
    return out


def _check_inputs(
    inputs: Mapping[str, torch.Tensor], y: np.ndarray, surrogates: Sequence[Surrogate]
) -> np.ndarray:
    y = np.asarray(y, dtype=np.float64).reshape(-1)
    if not np.isfinite(y).all():
        raise ValueError("y contains NaN or infinite values")
    if not inputs:  # a StopIteration deep in the loop
        raise ValueError("inputs is empty: give at least one {key: [N, d]} input matrix")
    names = [s.name for s in surrogates]
    repeated = sorted({n for n in names if names.count(n) > 1})
    if repeated:  # results are keyed by name: one surrogate overwrote the other
        raise ValueError(f"surrogates must have distinct names; repeated: {repeated}")
    for s in surrogates:
        if s.inputs not in inputs:
            raise ValueError(f"surrogate {s.name!r} reads inputs[{s.inputs!r}], which is missing")
        if inputs[s.inputs].shape[0] != len(y):
            raise ValueError(
                f"inputs[{s.inputs!r}] has {inputs[s.inputs].shape[0]} rows but y has {len(y)}"
            )
    return y


def predictive_moments(
    model: Model, X: torch.Tensor, chunk: int = 1024
) -> tuple[np.ndarray, np.ndarray]:
    """Marginal predictive mean and variance (observation noise included) at ``X [m, d]``."""
    means, variances = [], []
    with torch.no_grad():
        for i in range(0, len(X), chunk):
            post = model.posterior(X[i : i + chunk].unsqueeze(-2), observation_noise=True)
            means.append(post.mean.reshape(-1))
            variances.append(post.variance.reshape(-1))
    return torch.cat(means).cpu().numpy(), torch.cat(variances).cpu().numpy()


def standardised_nll(y: np.ndarray, mean: np.ndarray, var: np.ndarray, mu: float, sd: float):
    """Mean Gaussian NLL per point of ``(y - mu) / sd`` under ``N((mean - mu) / sd, var / sd^2)``.

    Raises:
        ValueError: a variance is not positive and finite, or ``sd`` is not positive.
    """
    if not (np.isfinite(var).all() and (var > 0).all()):
        raise ValueError("predictive variances must be positive and finite")
    check_real(sd, "sd", strict=True)  # 0 gave NaN
    v = var / sd**2
    r = (y - mean) / sd
    return float(np.mean(0.5 * (np.log(2 * math.pi * v) + r**2 / v)))


def predict_out_of_domain(
    inputs: Mapping[str, torch.Tensor],
    y: np.ndarray,
    surrogates: Sequence[Surrogate],
    *,
    n_train: int,
    repeats: int,
    seed: int = 0,
    progress: bool | None = None,
) -> dict[str, dict[str, np.ndarray]]:
    """Few-shot out-of-domain regression: fit on ``n_train`` random points, score the rest.

    Every surrogate sees the same random training sets (repeat ``r`` draws with seed
    ``(seed + r) mod 2**63``), so differences between models are paired.

    Args:
        inputs: ``{key: [N, d_key]}`` input matrices (tensors or arrays; integer / bool
            matrices are read as float64).
        y: ``[N]`` labels.
        surrogates: models to compare.
        n_train: observed points per repeat.
        repeats: number of random training sets.
        seed: base seed.
        progress: show a progress bar.

    Returns:
        ``{surrogate name: {"r2": [repeats], "nll": [repeats]}}``.
    """
    inputs = _float_inputs(inputs)
    y = _check_inputs(inputs, y, surrogates)
    check_positive_int(repeats, "repeats")
    check_positive_int(n_train, "n_train", minimum=2)
    check_seed(seed)
    if n_train >= len(y):
        raise ValueError(f"n_train ({n_train}) must be smaller than the data set ({len(y)})")
    out = {s.name: {"r2": np.empty(repeats), "nll": np.empty(repeats)} for s in surrogates}
    for r in track(range(repeats), progress=progress, desc=f"predict n={n_train}"):
        rng = numpy_rng(wrap_seed(seed + r))
        train = rng.choice(len(y), size=n_train, replace=False)
        rest = np.setdiff1d(np.arange(len(y)), train)
        y_tr, y_te = y[train], y[rest]
        mu, sd = float(y_tr.mean()), float(y_tr.std(ddof=1))
        sd = sd if sd > 0 else 1.0  # tied training labels: unit scale (the NLL was NaN)
        for s in surrogates:
            X = inputs[s.inputs]
            tr = torch.as_tensor(train, device=X.device)
            te = torch.as_tensor(rest, device=X.device)
            Y = torch.as_tensor(y_tr, dtype=X.dtype, device=X.device)[:, None]
            model = s.fit(X[tr], Y, wrap_seed(seed + r))
            mean, var = predictive_moments(model, X[te])
            out[s.name]["r2"][r] = r2_os(y_te, mean, mu)
            out[s.name]["nll"][r] = standardised_nll(y_te, mean, var, mu, sd)
    return out


def optimise_out_of_domain(
    inputs: Mapping[str, torch.Tensor],
    objective: np.ndarray,
    surrogates: Sequence[Surrogate],
    *,
    n_init: int = 16,
    n_iter: int = 30,
    repeats: int = 20,
    seed: int = 0,
    random_search: bool = True,
    progress: bool | None = None,
) -> dict[str, np.ndarray]:
    """Pool Bayesian optimisation (expected improvement, maximisation) with each surrogate.

    Repeat ``r`` uses seed ``(seed + r) mod 2**63`` for the initial design, shared by every
    surrogate.

    Args:
        inputs: ``{key: [N, d_key]}`` input matrices.
        objective: ``[N]`` values to maximise.
        surrogates: models to compare.
        n_init, n_iter: initial design size and number of acquisitions.
        repeats: independent runs.
        seed: base seed.
        random_search: also run random search (entry ``"random"``).
        progress: show a progress bar.

    Returns:
        ``{name: best value so far [repeats, n_iter + 1]}``.
    """
    inputs = _float_inputs(inputs)
    y = _check_inputs(inputs, objective, surrogates)
    check_positive_int(repeats, "repeats")
    check_positive_int(n_iter, "n_iter", minimum=0)  # sizes the result arrays below
    check_seed(seed)
    runs: list[tuple[str, Surrogate | None]] = [(s.name, s) for s in surrogates]
    if random_search:
        if "random" in dict(runs):
            raise ValueError("a surrogate named 'random' clashes with random search's entry")
        runs.append(("random", None))
    out = {name: np.empty((repeats, n_iter + 1)) for name, _ in runs}
    for r in track(range(repeats), progress=progress, desc="bayes-opt"):
        for name, s in runs:
            X = inputs[s.inputs] if s is not None else next(iter(inputs.values()))
            factory = None if s is None else (lambda x_, y_, sd_, s=s: s.fit(x_, y_, sd_))
            trace = pool_bo(
                X,
                torch.as_tensor(y, dtype=torch.float64),
                factory,
                n_init=n_init,
                n_iter=n_iter,
                seed=wrap_seed(seed + r),
            )
            out[name][r] = trace.best_so_far
    return out


def summarise(
    values: Mapping[str, np.ndarray],
) -> dict[str, tuple[float, float] | tuple[np.ndarray, np.ndarray]]:
    """``{name: (mean, standard error)}`` over the first axis (repeats).

    Args:
        values: ``{name: [repeats]}`` (e.g. :func:`predict_out_of_domain`'s ``"r2"``) or
            ``{name: [repeats, ...]}`` (e.g. :func:`optimise_out_of_domain`'s curves
            ``[repeats, n_iter + 1]``).

    Returns:
        Floats for ``[repeats]`` values; for ``[repeats, ...]`` values two arrays of shape
        ``[...]``: the mean and the standard error ``std(ddof=1) / sqrt(repeats)`` of each
        entry (one per iteration of a curve) over the repeats.
    """
    out: dict[str, tuple[float, float] | tuple[np.ndarray, np.ndarray]] = {}
    for k, v in values.items():
        v = np.asarray(v, dtype=float)
        if v.ndim <= 1:
            out[k] = mean_and_se(v)
        else:  # a 2-d curve was pooled over iterations and repeats into one mean and se
            stats = np.array([mean_and_se(c) for c in v.reshape(len(v), -1).T])
            out[k] = (stats[:, 0].reshape(v.shape[1:]), stats[:, 1].reshape(v.shape[1:]))
    return out
