"""Human annotator simulation: conditional distributions over labels given an input.

Wu, Chen, Zhang & Woodland, "It HAS to be Subjective: Human Annotator Simulation via Zero-shot
Density Estimation" (2023): the labels different annotators give an item are draws from
``p(y | x)``; one conditional density model, learned across items, simulates annotators
(their disagreement, not only the majority) on items it has never seen.

* :class:`ConditionalIntegerFlow` -- ordinal labels; an exact distribution over the integers
  from a conditional monotone spline flow, ``P(y = k | x) = F_x(k + 1/2) - F_x(k - 1/2)``.
* :class:`ConditionalSoftmaxFlow` -- categorical labels; latent ``v ~ p(v | x)`` from a
  conditional flow, ``y ~ softmax(v)``; trained with an importance-weighted variational bound
  using ``q(v | y, x)``, evaluated by importance sampling with standard errors.
* Both can share a latent across an item's annotators (``item_latent=`` / ``latent="item"``):
  simulated panels then agree among themselves as human panels do.
* Baselines: :class:`GaussianHead` (the original Gaussian + rounding approach, discretised),
  :class:`OrdinalLogisticHead` (cumulative link), :class:`SoftmaxHead`,
  :class:`MCDropoutHead`, :class:`DeepEnsemble`.
* :class:`ModelEnsemble` -- ``M`` independently trained models of any of these classes
  (e.g. integer flows), probabilities averaged; the member is an item-level latent, so the
  per-item spread is the members' average within-panel spread.
* :mod:`probrec.flows.metrics` -- NLL of individual annotations, RMSE of the mean and of the
  per-item standard deviation, Wasserstein-1, majority-vote accuracy, Fleiss' kappa.
* :mod:`probrec.flows.experiment` -- fit-and-score helpers (``examples/annotators.py``);
  :mod:`probrec.flows.demo` -- the ``probrec demo`` section.

Every model shares :class:`AnnotatorModel`'s interface: ``fit``, ``label_log_probs``,
``predict_proba``, ``log_prob``, ``nll``, ``sample``, ``save`` / ``load``.
"""

from probrec.flows.base import AnnotatorModel, load_model
from probrec.flows.baselines import (
    DeepEnsemble,
    GaussianHead,
    MCDropoutHead,
    OrdinalLogisticHead,
    SoftmaxHead,
)
from probrec.flows.ensemble import ModelEnsemble
from probrec.flows.integer import ConditionalIntegerFlow
from probrec.flows.softmax import ConditionalSoftmaxFlow

__all__ = [
    "AnnotatorModel",
    "ConditionalIntegerFlow",
    "ConditionalSoftmaxFlow",
    "DeepEnsemble",
    "GaussianHead",
    "MCDropoutHead",
    "ModelEnsemble",
    "OrdinalLogisticHead",
    "SoftmaxHead",
    "load_model",
]
