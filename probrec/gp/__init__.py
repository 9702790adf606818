"""Exact GP heads on deep features: kernels, priors, the batched inner loop, posteriors.

Public names: :class:`GPConfig`, :class:`GPHead`, :class:`FittedGP`, :func:`fit_hyperparameters`,
:class:`FitResult`, :class:`TanimotoKernel`, :func:`robust_cholesky`,
:class:`NotPositiveDefiniteError`, and the functional pieces in :mod:`probrec.gp.exact`.
"""

from probrec.gp.exact import (
    GPConfig,
    Posterior,
    geometry,
    inner_objective,
    inner_objective_derivatives,
    inner_objective_grad,
    neg_log_marginal_likelihood,
    posterior,
    posterior_from_geometry,
    predictive_nll,
    prior_centres,
)
from probrec.gp.fit import FitResult, fit_hyperparameters
from probrec.gp.head import FittedGP, GPHead, encode_labels
from probrec.gp.kernels import TanimotoKernel, gpytorch_kernel, matern52, rbf, tanimoto
from probrec.gp.linalg import NotPositiveDefiniteError, gaussian_nll, robust_cholesky
from probrec.gp.newton import NewtonResult, batched_newton

__all__ = [
    "FitResult",
    "FittedGP",
    "GPConfig",
    "GPHead",
    "NewtonResult",
    "NotPositiveDefiniteError",
    "Posterior",
    "TanimotoKernel",
    "batched_newton",
    "encode_labels",
    "fit_hyperparameters",
    "geometry",
    "gpytorch_kernel",
    "inner_objective",
    "inner_objective_derivatives",
    "inner_objective_grad",
    "matern52",
    "neg_log_marginal_likelihood",
    "posterior",
    "posterior_from_geometry",
    "predictive_nll",
    "prior_centres",
    "rbf",
    "robust_cholesky",
    "gaussian_nll",
    "tanimoto",
]
