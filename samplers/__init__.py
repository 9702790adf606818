"""samplers: batched MCMC, parallel tempering and diffusive Gibbs sampling for multimodal targets.

Every sampler is configured once and called as ``run(target, n_samples, seed)``, returning a
:class:`SamplerResult` with the samples, the target evaluations spent, wall time and diagnostics:

- :class:`RandomWalkMetropolis`, :class:`MALA`, :class:`HMC` (:mod:`samplers.mcmc`);
- :class:`ParallelTempering` (:mod:`samplers.tempering`);
- :class:`DiGS`, diffusive Gibbs sampling (Chen et al., ICML 2024; :mod:`samplers.digs`);
- :class:`PTSD`, progressive tempering with diffusion models (Rissanen et al., ICML 2025;
  :mod:`samplers.ptsd`), and :class:`DiKL`, a one-step generator trained by reverse diffusive
  KL (He et al., AISTATS 2025; :mod:`samplers.dikl`), on the diffusion building blocks of
  :mod:`samplers.diffusion`.

Targets live in :mod:`samplers.targets`, quality metrics in :mod:`samplers.metrics`, the
benchmark runner in :mod:`samplers.bench` (``probrec bench samplers``).
"""

from . import metrics, targets
from .base import RunPlan, Sampler, SamplerResult
from .digs import DiGS
from .dikl import DiKL
from .kernels import ChainState, HMCKernel, Kernel, MALAKernel, RandomWalkKernel, StepInfo
from .mcmc import HMC, MALA, MCMC, RandomWalkMetropolis
from .ptsd import PTSD
from .tempering import ParallelTempering

__all__ = [
    "targets",
    "metrics",
    "Sampler",
    "SamplerResult",
    "RunPlan",
    "MCMC",
    "RandomWalkMetropolis",
    "MALA",
    "HMC",
    "ParallelTempering",
    "DiGS",
    "PTSD",
    "DiKL",
    "Kernel",
    "RandomWalkKernel",
    "MALAKernel",
    "HMCKernel",
    "ChainState",
    "StepInfo",
]
