"""GP heads: fit a task's hyperparameters on support features, predict on query features.

:class:`GPHead` wraps the batched inner loop (:mod:`probrec.gp.fit`) and the exact posterior
(:mod:`probrec.gp.exact`) behind a fit / predict interface. Classification is GP regression on
labels mapped to +-1 with probability ``sigmoid(mean)``; regression works on targets
standardised with the support set's mean and standard deviation and reports predictions in
the original units (Chen, Tripp & Hernandez-Lobato, ICLR 2023). A fitted head converts to an
equivalent gpytorch ``ExactGP`` (:meth:`FittedGP.to_gpytorch`) for use with gpytorch / BoTorch.
"""

from __future__ import annotations

from dataclasses import dataclass

import gpytorch
import torch

from probrec.checks import (
    as_bool_mask,
    as_float_tensor,
    check_choice,
    check_positive_int,
    check_real,
)
from probrec.gp.exact import (
    GPConfig,
    geometry,
    posterior_from_geometry,
    prior_centres,
    unpack,
)
from probrec.gp.fit import FitResult, fit_hyperparameters
from probrec.gp.kernels import gpytorch_kernel


def encode_labels(
    y: torch.Tensor, kind: str, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Maps labels to GP targets per task.

    Classification: ``{0, 1} -> {-1, +1}`` (scale 1, shift 0). Regression: standardised with
    the (valid) support mean and standard deviation, whatever the labels' units; only where
    the labels are equal (one point, or a deviation within ``1000`` rounding errors of the
    largest label's magnitude) the scale is 1 instead, as BoTorch's ``Standardize`` does for a
    zero deviation, so the predictive variance stays on the prior's scale rather than
    collapsing with the scale squared; their targets are exactly 0, and
    :func:`~probrec.gp.fit.fit_hyperparameters` keeps such a task's hyperparameters at the
    prior modes (outputscale 1), since the marginal likelihood of constant targets grows
    without bound as the outputscale shrinks. (A deviation below ``1e-6 * (1 + |mean|)``
    counted as equal before, which flattened labels in small units, e.g. molar IC50 values.)

    Args:
        y: ``[T, n]`` labels.
        kind: ``"classification"`` or ``"regression"``.
        mask: ``[T, n]`` bool mask of real points.

    Returns:
        ``(targets [T, n], shift [T], scale [T])`` with ``y = targets * scale + shift``.

    Raises:
        ValueError: classification labels outside {0, 1}.
    """
    check_choice(kind, "kind", ("classification", "regression"))  # a typo read as regression
    m = torch.ones_like(y, dtype=torch.bool) if mask is None else mask.bool()
    y = torch.where(m, y, y.new_zeros(()))  # a NaN at a padded point (missing label) stays out
    if kind == "classification":
        if not bool(((y == 0) | (y == 1) | ~m).all()):
            raise ValueError("classification labels must be 0 or 1")
        t = (2.0 * y - 1.0) * m.to(y.dtype)
        return t, torch.zeros_like(y[:, 0]), torch.ones_like(y[:, 0])
    w = m.to(y.dtype)
    n = w.sum(-1).clamp_min(1.0)
    mu = (y * w).sum(-1) / n
    sd = (((y - mu[:, None]) ** 2 * w).sum(-1) / n).sqrt()
    top = (y.abs() * w).amax(-1)
    tied = sd <= 1000 * torch.finfo(y.dtype).eps * top
    sd = torch.where(tied, torch.ones_like(sd), sd)
    # tied labels encode to exact zeros (not the rounding residue of their mean), which the
    # hyperparameter fit recognises as a support without information (it keeps the prior modes)
    t = torch.where(tied[:, None], torch.zeros_like(y), (y - mu[:, None]) / sd[:, None] * w)
    return t, mu, sd


@dataclass
class FittedGP:
    """A GP conditioned on support sets, with fitted hyperparameters.

    Attributes:
        config: GP configuration.
        theta: ``[T, p]`` log hyperparameters.
        z_s: ``[T, n, d]`` support features.
        targets: ``[T, n]`` encoded support targets.
        mask: ``[T, n]`` support mask or ``None``.
        shift, scale: ``[T]`` label standardisation (regression) or 0 / 1.
        fit: the inner-loop report, if the hyperparameters were fitted.
        batched: whether inputs were batched (``[T, ...]``) or a single task.
    """

    config: GPConfig
    theta: torch.Tensor
    z_s: torch.Tensor
    targets: torch.Tensor
    mask: torch.Tensor | None
    shift: torch.Tensor
    scale: torch.Tensor
    fit: FitResult | None
    batched: bool

    def _query(self, z_q: torch.Tensor) -> torch.Tensor:
        z = as_float_tensor(z_q, "z_q", dtype=self.z_s.dtype, device=self.z_s.device)
        if not self.batched:
            z = z[None]
        if z.dim() != 3 or z.shape[-1] != self.z_s.shape[-1] or z.shape[0] != self.z_s.shape[0]:
            raise ValueError(
                f"z_q must have shape {'[T, m, d]' if self.batched else '[m, d]'} with "
                f"d = {self.z_s.shape[-1]}, got {tuple(z_q.shape)}"
            )
        return z

    def latent(self, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Latent posterior mean and variance at ``z_q`` (encoded target scale)."""
        z = self._query(z_q)
        c = self.config
        post = posterior_from_geometry(
            self.theta,
            c,
            geometry(c, self.z_s, self.z_s),
            geometry(c, self.z_s, z),
            self.targets,
            self.mask,
        )
        if not self.batched:
            return post.mean[0], post.var[0]
        return post.mean, post.var

    def predict(self, z_q: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance at ``z_q`` (``[m, d]``, or ``[T, m, d]`` if batched).

        Regression: of ``y`` in the original units (noise included). Classification: of the
        latent function on the +-1 scale (``predict_proba`` gives probabilities).
        """
        mean, var = self.latent(z_q)
        noise = unpack(self.theta, self.config).noise
        if not self.batched:
            noise, shift, scale = noise[0], self.shift[0], self.scale[0]
        else:
            noise, shift, scale = noise[:, None], self.shift[:, None], self.scale[:, None]
        if self.config.kind == "classification":
            return mean, var
        return mean * scale + shift, (var + noise) * scale**2

    def predict_proba(self, z_q: torch.Tensor) -> torch.Tensor:
        """``P(y = 1) = sigmoid(latent mean)`` (classification only)."""
        if self.config.kind != "classification":
            raise ValueError("predict_proba is only defined for classification heads")
        return torch.sigmoid(self.latent(z_q)[0])

    def hyperparameters(self) -> dict[str, torch.Tensor]:
        """Positive hyperparameters by name, each ``[T]`` (or a scalar for one task)."""
        h = unpack(self.theta, self.config)
        out = {"outputscale": h.outputscale, "noise": h.noise, "mean": h.mean}
        if h.lengthscale is not None:
            out["lengthscale"] = h.lengthscale
        return {k: (v if self.batched else v[0]) for k, v in out.items()}

    def gpytorch_modules(
        self,
    ) -> tuple[gpytorch.means.Mean, gpytorch.kernels.Kernel, gpytorch.likelihoods.Likelihood]:
        """gpytorch mean, kernel and likelihood holding this (single-task) head's hyperparameters.

        Returns:
            ``(mean_module, covar_module, likelihood)`` on the features' device and dtype; the
            kernel is a ``ScaleKernel`` over :func:`~probrec.gp.kernels.gpytorch_kernel`.

        Raises:
            ValueError: the head holds more than one task.
        """
        if self.theta.shape[0] != 1:
            raise ValueError("one task is converted at a time; index a batched FittedGP first")
        ref = self.z_s
        h = unpack(self.theta.detach(), self.config)
        lik = gpytorch.likelihoods.GaussianLikelihood(
            noise_constraint=gpytorch.constraints.GreaterThan(1e-12)
        ).to(ref)
        lik.noise = h.noise[0]
        covar = gpytorch_kernel(self.config.kernel).to(ref)
        covar.outputscale = h.outputscale[0]
        if h.lengthscale is not None:
            covar.base_kernel.lengthscale = h.lengthscale[0]
        if self.config.mean == "constant":
            mean: gpytorch.means.Mean = gpytorch.means.ConstantMean().to(ref)
            mean.constant.data.fill_(float(h.mean[0]))
        else:
            mean = gpytorch.means.ZeroMean().to(ref)
        return mean, covar, lik

    def to_gpytorch(
        self,
    ) -> tuple[gpytorch.models.ExactGP, gpytorch.likelihoods.GaussianLikelihood]:
        """An equivalent gpytorch exact GP (single task, in eval mode) and its likelihood.

        The model is trained on the encoded targets, so its predictions are on the encoded
        scale (``y = f * scale + shift``). :class:`probrec.gp.bo_models.DeepKernelGP` is the
        BoTorch model in the original units.
        """
        mean, covar, lik = self.gpytorch_modules()
        x = self.z_s[0] if self.mask is None else self.z_s[0][self.mask[0]]
        y = self.targets[0] if self.mask is None else self.targets[0][self.mask[0]]
        model = _ExactGP(x.detach(), y.detach(), lik, mean, covar)
        model.eval()
        lik.eval()
        return model, lik


class _ExactGP(gpytorch.models.ExactGP):
    def __init__(
        self,
        x: torch.Tensor,
        y: torch.Tensor,
        lik: gpytorch.likelihoods.Likelihood,
        mean: gpytorch.means.Mean,
        covar: gpytorch.kernels.Kernel,
    ):
        super().__init__(x, y, lik)
        self.mean_module = mean
        self.covar_module = covar

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        return gpytorch.distributions.MultivariateNormal(self.mean_module(x), self.covar_module(x))


class GPHead:
    """Exact GP head whose hyperparameters are fitted per support set.

    Example:
        >>> head = GPHead(GPConfig(kernel="matern52", kind="regression"))
        >>> z, y = torch.randn(20, 4), torch.randn(20)
        >>> gp = head.fit(z, y)
        >>> mean, var = gp.predict(torch.randn(5, 4))   # [5], [5]

    Args:
        config: GP configuration (kernel, mean, kind, priors).
        tol: gradient-norm tolerance of the inner fit.
        max_iter: Newton iteration cap.
    """

    def __init__(self, config: GPConfig | None = None, *, tol: float = 1e-6, max_iter: int = 50):
        if config is not None and not isinstance(config, GPConfig):
            raise TypeError(f"config must be a GPConfig, got {type(config).__name__} {config!r}")
        self.config = config or GPConfig()
        self.tol = check_real(tol, "tol", strict=True)
        self.max_iter = check_positive_int(max_iter, "max_iter")

    def fit(
        self,
        z_s: torch.Tensor,
        y_s: torch.Tensor,
        mask: torch.Tensor | None = None,
        *,
        theta: torch.Tensor | None = None,
    ) -> FittedGP:
        """Fits the hyperparameters on a support set (``[n, d]``) or a batch (``[T, n, d]``).

        Args:
            z_s: support features.
            y_s: support labels (0/1 for classification, real values for regression).
            mask: ``[T, n]`` mask of real points for padded batches.
            theta: fixed ``[T, p]`` log hyperparameters; skips the fit (e.g. DKT).

        Raises:
            TypeError: ``z_s`` is not float32 / float64 (half precision).
            ValueError: shapes disagree, labels are NaN, classification labels are not 0 / 1,
                or a classification support set is single-class.
        """
        z = as_float_tensor(z_s, "z_s")
        if z.dtype not in (torch.float32, torch.float64):
            # half precision has no Cholesky on the CPU and too few digits for the fit
            raise TypeError(
                f"z_s must be float32 or float64, got {z.dtype} (e.g. features made under "
                "autocast): cast them with .float() or .double()"
            )
        y = as_float_tensor(y_s, "y_s", dtype=z.dtype, device=z.device)
        batched = z.dim() == 3
        if not batched:
            if z.dim() != 2:
                raise ValueError(f"z_s must have shape [n, d] or [T, n, d], got {tuple(z.shape)}")
            z, y = z[None], y[None]
            mask = None if mask is None else as_bool_mask(mask)[None]
        if y.shape != z.shape[:2]:
            raise ValueError(f"y_s must have shape {tuple(z.shape[:2])}, got {tuple(y.shape)}")
        if mask is not None:
            mask = as_bool_mask(mask).to(z.device)
            if mask.shape != y.shape:
                raise ValueError(
                    f"mask must have the shape of y_s {tuple(y.shape)}, got {tuple(mask.shape)}"
                )
            if not bool(mask.any(-1).all()):
                raise ValueError("mask leaves a support set without points")
        if self.config.kind == "classification":
            m = torch.ones_like(y, dtype=torch.bool) if mask is None else mask
            if not bool(((y == 0) | (y == 1) | ~m).all()):  # before the single-class test
                bad = torch.unique(y[m & (y != 0) & (y != 1)])[:5].tolist()
                raise ValueError(
                    f"y_s must hold 0/1 labels for classification, got values such as {bad}"
                )
            n_pos = ((y == 1) & m).sum(-1)
            n_all = m.sum(-1)
            bad = torch.nonzero((n_pos == 0) | (n_pos == n_all)).flatten().tolist()
            if bad:
                raise ValueError(
                    f"support set of task(s) {bad[:10]} is single-class; a classification GP head "
                    "needs at least one positive and one negative"
                )
        targets, shift, scale = encode_labels(y, self.config.kind, mask)
        fit = None
        if theta is None:
            zd = z.detach()
            geom = geometry(self.config, zd, zd)
            centres = prior_centres(self.config, zd, mask, geom=geom)
            fit = fit_hyperparameters(
                self.config, geom, targets, mask, centres, tol=self.tol, max_iter=self.max_iter
            )
            theta = fit.theta
        else:
            theta = as_float_tensor(theta, "theta", dtype=z.dtype, device=z.device)
            if theta.dim() == 1:
                theta = theta[None].expand(z.shape[0], -1)
            p = self.config.n_params
            if theta.shape != (z.shape[0], p):
                raise ValueError(
                    f"theta must have shape [{p}] or [{z.shape[0]}, {p}] (one row per task), "
                    f"got {tuple(theta.shape)}"
                )
        return FittedGP(self.config, theta, z, targets, mask, shift, scale, fit, batched)
