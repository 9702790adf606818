"""Synthetic few-shot task families, generated with a seed.

Two families with shared structure that meta-learning can exploit:

* :func:`sinusoid_tasks`: the 1-D sine-wave regression family of MAML / DKT
  (Finn et al., ICML 2017; Patacchiola et al., NeurIPS 2020): amplitude in [0.1, 5], phase in
  [0, pi], inputs in [-5, 5].
* :func:`latent_feature_tasks`: inputs ``x in R^d`` whose labels depend on a few nonlinear
  latent features ``h = tanh(W x)`` shared by every task of the family, each task with its own
  linear read-out: ``y = w_t^T h + noise`` (regression) or ``1[w_t^T h + b_t > 0]``
  (classification). A feature extractor meta-learned across tasks can recover ``h``.
* :func:`descriptor_tasks`: a family over real molecules whose labels are thresholded random
  nonlinear combinations of a few standardised RDKit descriptors (a pretext family for
  meta-training a molecule encoder without assay data).
"""

from __future__ import annotations

import numpy as np

from probrec.checks import check_choice, check_positive_int, check_real
from probrec.data.tasks import Task, TaskSet
from probrec.seeding import numpy_rng


def sinusoid_tasks(
    n_tasks: int, n_points: int = 50, *, noise: float = 0.0, seed: int = 0
) -> TaskSet:
    """Sine-wave regression tasks ``y = A sin(x - phase) + noise``, ``x ~ U[-5, 5]``.

    Returns:
        ``n_tasks`` tasks, each with ``[n_points, 1]`` inputs.
    """
    check_positive_int(n_tasks, "n_tasks")
    check_positive_int(n_points, "n_points")
    check_real(noise, "noise")
    rng = numpy_rng(seed)
    out = []
    for t in range(n_tasks):
        amp, phase = rng.uniform(0.1, 5.0), rng.uniform(0.0, np.pi)
        x = rng.uniform(-5.0, 5.0, size=(n_points, 1))
        y = amp * np.sin(x[:, 0] - phase) + noise * rng.standard_normal(n_points)
        out.append(Task(x, y, "regression", f"sinusoid-{t}", {"amplitude": amp, "phase": phase}))
    return TaskSet(out, source=f"sinusoid_tasks(seed={seed})")


def latent_feature_tasks(
    n_tasks: int,
    n_points: int = 128,
    *,
    dim: int = 32,
    n_latent: int = 4,
    kind: str = "classification",
    noise: float = 0.1,
    seed: int = 0,
) -> TaskSet:
    """A task family sharing nonlinear latent features ``h = tanh(W x)``.

    Args:
        n_tasks: number of tasks.
        n_points: molecules-like rows per task.
        dim: input dimension ``d``.
        n_latent: number of shared latent features.
        kind: ``"classification"`` or ``"regression"``.
        noise: standard deviation of the label noise (before thresholding).
        seed: seed of the family (the shared ``W``) and of every task.

    Returns:
        ``n_tasks`` tasks with ``[n_points, dim]`` float inputs; classification tasks have
        a positive fraction between roughly 0.2 and 0.5.
    """
    check_positive_int(n_tasks, "n_tasks")
    check_positive_int(n_points, "n_points", minimum=4)
    check_choice(kind, "kind", ("classification", "regression"))
    # n_latent=0 (a 0/0 readout) or a NaN noise gave one-class tasks
    check_positive_int(dim, "dim")
    check_positive_int(n_latent, "n_latent")
    check_real(noise, "noise")
    rng = numpy_rng(seed)
    w_shared = rng.standard_normal((dim, n_latent)) * (2.0 / np.sqrt(dim))
    out = []
    for t in range(n_tasks):
        x = rng.standard_normal((n_points, dim))
        h = np.tanh(x @ w_shared)
        w = rng.standard_normal(n_latent)
        f = h @ w / np.sqrt(n_latent)
        f = f + noise * rng.standard_normal(n_points)
        if kind == "classification":
            q = rng.uniform(0.5, 0.8)  # negatives make up 50-80 % of each task
            y = (f > np.quantile(f, q)).astype(np.float64)
        else:
            y = f
        out.append(Task(x, y, kind, f"latent-{kind[:3]}-{t}", {"readout": w.tolist()}))
    return TaskSet(out, source=f"latent_feature_tasks(seed={seed})")


def descriptor_tasks(
    smiles: list[str],
    n_tasks: int,
    n_points: int = 128,
    *,
    n_terms: int = 3,
    noise: float = 0.2,
    seed: int = 0,
    cache_dir=None,
) -> TaskSet:
    """Classification tasks over molecules from RDKit descriptors.

    Task ``t`` draws ``n_points`` molecules, a random combination
    ``s = sum_k w_k tanh(d_k)`` of ``n_terms`` standardised descriptors ``d_k`` plus Gaussian
    noise, and labels the molecules above a random quantile (50-80 %) of ``s`` positive.
    Inputs are SMILES (featurise them, e.g. with Morgan counts, to learn from structure).

    Returns:
        ``n_tasks`` classification tasks named ``descriptor-<t>``.
    """
    from probrec.data.featurize import MoleculeFeaturizer

    check_positive_int(n_tasks, "n_tasks")
    # two points at least: the label threshold is a quantile strictly inside the task's scores
    check_positive_int(n_points, "n_points", minimum=2)
    check_positive_int(n_terms, "n_terms")
    check_real(noise, "noise")
    if n_points > len(smiles):
        raise ValueError(f"n_points {n_points} exceeds the {len(smiles)} molecules given")
    rng = numpy_rng(seed)
    feat = MoleculeFeaturizer(fingerprint=False, cache_dir=cache_dir, progress=False)
    desc = feat.fit_transform(smiles).astype(np.float64)
    informative = np.flatnonzero(desc.std(0) > 0.3)
    if n_terms > informative.size:
        raise ValueError(
            f"n_terms {n_terms} exceeds the {informative.size} informative descriptors "
            "(standard deviation over 0.3) of these molecules"
        )
    arr = np.asarray(smiles, dtype=object)
    out = []
    for t in range(n_tasks):
        rows = rng.choice(len(smiles), n_points, replace=False)
        cols = rng.choice(informative, n_terms, replace=False)
        w = rng.standard_normal(n_terms)
        s = np.tanh(desc[np.ix_(rows, cols)]) @ w + noise * rng.standard_normal(n_points)
        y = (s > np.quantile(s, rng.uniform(0.5, 0.8))).astype(np.float64)
        meta = {"descriptors": [feat.feature_names[c] for c in cols], "weights": w.tolist()}
        out.append(Task(arr[rows], y, "classification", f"descriptor-{t}", meta))
    return TaskSet(out, source=f"descriptor_tasks(seed={seed})")
