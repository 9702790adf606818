"""Meta-learners over probrec heads: ADKF-IFT, ADKF, DKT, DKL, ProtoNet, single-task baselines;
implicit hypergradients; the episodic meta-training loop; FS-Mol-protocol evaluation.

Public names: :class:`ADKFIFT`, :class:`ADKF`, :class:`DKT`, :class:`DKL`, :class:`ProtoNet`,
:class:`GPST`, :class:`RandomForest`, :class:`KNN`, :class:`LogisticRegression`,
:func:`evaluate`, :mod:`metalearn.hypergrad` and :mod:`metalearn.identifiability` (multi-task
representations and the linear causal latent model). :mod:`metalearn.ood` (out-of-domain
prediction and Bayesian optimisation on frozen features) is imported on its own, as it loads
BoTorch.
"""

from metalearn import hypergrad, identifiability
from metalearn.base import MetaLearner, Predictor, registered_learners
from metalearn.deep_kernel import ADKF, ADKFIFT, DKT, DeepKernelPredictor
from metalearn.dkl import DKL
from metalearn.evaluation import EvalResult, evaluate
from metalearn.protonet import ProtoNet
from metalearn.single_task import GPST, KNN, LogisticRegression, RandomForest
from metalearn.training import TrainConfig, meta_train

__all__ = [
    "ADKF",
    "ADKFIFT",
    "DKL",
    "DKT",
    "EvalResult",
    "GPST",
    "KNN",
    "LogisticRegression",
    "ProtoNet",
    "RandomForest",
    "evaluate",
    "DeepKernelPredictor",
    "MetaLearner",
    "Predictor",
    "TrainConfig",
    "hypergrad",
    "identifiability",
    "meta_train",
    "registered_learners",
]
