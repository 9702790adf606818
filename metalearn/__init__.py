"""Meta-learners over probrec heads: ADKF-IFT, ADKF, DKT, DKL, ProtoNet, single-task baselines;
implicit hypergradients; the episodic meta-training loop; FS-Mol-protocol evaluation.

Public names: :class:`ADKFIFT`, :class:`ADKF`, :class:`DKT`, and :mod:`metalearn.hypergrad`.
"""

from metalearn import hypergrad
from metalearn.base import MetaLearner, Predictor, registered_learners
from metalearn.deep_kernel import ADKF, DKT, ADKFIFT, DeepKernelPredictor
from metalearn.training import TrainConfig, meta_train

__all__ = [
    "ADKF",
    "ADKFIFT",
    "DKT",
    "DeepKernelPredictor",
    "MetaLearner",
    "Predictor",
    "TrainConfig",
    "hypergrad",
    "meta_train",
    "registered_learners",
]
