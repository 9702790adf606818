"""Targets: unnormalised log-densities over ``R^d`` with batched gradients.

Benchmarks of multimodal sampling (Chen et al., *Diffusive Gibbs Sampling*, ICML 2024;
Akhound-Sadegh et al., DEM, ICML 2024): :class:`MoG40`, :class:`ManyWell`,
:class:`DoubleWell4`, :class:`LennardJones`, :class:`BNNPosterior`; a general
:class:`GaussianMixture` and :class:`Gaussian`; and :func:`from_log_prob` to wrap any function.
"""

from .base import Target, check_start, load_reference_samples
from .bnn import BNNPosterior
from .gaussian import Gaussian
from .manywell import ManyWell
from .mixture import GaussianMixture, MoG40, mog40_means
from .particles import DoubleWell4, LennardJones, ParticleSystem, interatomic_distances
from .wrap import CallableTarget, from_log_prob

__all__ = [
    "Target",
    "check_start",
    "load_reference_samples",
    "GaussianMixture",
    "MoG40",
    "mog40_means",
    "Gaussian",
    "ManyWell",
    "ParticleSystem",
    "DoubleWell4",
    "LennardJones",
    "interatomic_distances",
    "BNNPosterior",
    "CallableTarget",
    "from_log_prob",
]
