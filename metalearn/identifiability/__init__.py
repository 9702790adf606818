"""Identifiable representations from task structure (Chen, Horwood, Heo & Hernandez-Lobato,
"Leveraging Task Structures for Improved Identifiability in Neural Network Representations",
TMLR 2024).

Stage 1 (:func:`fit_multitask`): a shared encoder with one linear head per regression task;
its representation is identified up to a linear map. Stage 2 (:func:`fit_causal_model`): a
linear Gaussian latent model with per-task causal indicators fitted to the stage-1 features by
maximum marginal likelihood; its latents are identified up to permutation and scaling.
Metrics: :func:`weak_mcc` (after CCA) and :func:`strong_mcc` (Hungarian matching).
Synthetic problems with known latents: :func:`make_synthetic_tasks`.
"""

from metalearn.identifiability.causal import (
    CausalFitRecord,
    LinearCausalModel,
    TaskMoments,
    causal_log_marginal,
    fit_causal_model,
    latent_moments,
    task_moments,
)
from metalearn.identifiability.mcc import correlation_matrix, strong_mcc, weak_mcc
from metalearn.identifiability.multitask import MultiTaskFit, MultiTaskRegressor, fit_multitask
from metalearn.identifiability.synthetic import (
    SyntheticTasks,
    make_synthetic_tasks,
    mixing_function,
)

__all__ = [
    "CausalFitRecord",
    "LinearCausalModel",
    "MultiTaskFit",
    "MultiTaskRegressor",
    "SyntheticTasks",
    "TaskMoments",
    "causal_log_marginal",
    "correlation_matrix",
    "fit_causal_model",
    "fit_multitask",
    "latent_moments",
    "make_synthetic_tasks",
    "mixing_function",
    "strong_mcc",
    "task_moments",
    "weak_mcc",
]
