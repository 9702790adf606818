"""BoTorch models for Bayesian optimisation on (meta-learned) features.

:class:`DeepKernelGP` is a GP head (:class:`~probrec.gp.head.GPHead`: hyperparameters fitted on
the observed points by the batched Newton inner loop, targets standardised with the observed
mean and standard deviation) on the features of a frozen encoder, exposed as a BoTorch
``GPyTorchModel``: ``posterior()`` returns a ``GPyTorchPosterior`` in the original units, and
``condition_on_observations`` / ``fantasize`` come from gpytorch's exact-GP fantasy updates, so
BoTorch's analytic and Monte-Carlo acquisition functions (EI, LogEI, UCB, qEI, qNEI) and
``optimize_acqf_discrete`` work on it unchanged. With ``encoder=None`` the inputs are the
features themselves (e.g. fingerprints with a Tanimoto kernel, or features encoded once).

:class:`ForestModel` is the random-forest baseline as a BoTorch model with a Gaussian posterior
(mean and between-tree variance plus the out-of-bag residual variance), so that the same
acquisition code scores it.

Reference: Chen, Tripp & Hernandez-Lobato, "Meta-learning Adaptive Deep Kernel Gaussian
Processes for Molecular Property Prediction", ICLR 2023 (Bayesian optimisation with expected
improvement on frozen meta-learned features, Section 5.3); Balandat et al., "BoTorch: A
Framework for Efficient Monte-Carlo Bayesian Optimization", NeurIPS 2020.
"""

from __future__ import annotations

import copy
import warnings
from typing import Any

import gpytorch
import numpy as np
import torch
from botorch.models.gpytorch import GPyTorchModel
from botorch.models.model import FantasizeMixin, Model
from botorch.models.transforms.outcome import Standardize
from botorch.models.utils import gpt_posterior_settings
from botorch.posteriors.gpytorch import GPyTorchPosterior
from linear_operator.operators import DiagLinearOperator

from probrec.checks import all_finite, as_float_tensor, check_seed
from probrec.gp.exact import GPConfig
from probrec.gp.head import FittedGP, GPHead
from probrec.gp.linalg import robust_cholesky


def _check_candidates(
    X: torch.Tensor, d: int, device: torch.device | None = None, dtype: torch.dtype | None = None
) -> None:
    """Candidates ``X`` ``[..., d]`` for :meth:`posterior`: the model's width (and device and
    dtype, if given), finite."""
    if X.dim() < 2 or X.shape[-1] != d:
        raise ValueError(f"X must have shape [..., q, {d}], got {tuple(X.shape)}")
    if device is not None and X.device != device:  # gpytorch failed deep inside a matmul
        raise ValueError(
            f"X is on device {X.device} but the model is on device {device}: move X there first"
        )
    if dtype is not None and X.dtype != dtype:  # a bare "expected scalar type" error inside
        raise ValueError(f"X has dtype {X.dtype} but the model's is {dtype}: convert X first")
    if not all_finite(X):
        raise ValueError("X contains non-finite values")


def _check_xy(train_X: torch.Tensor, train_Y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    x = as_float_tensor(train_X, "train_X")
    y = as_float_tensor(train_Y, "train_Y", dtype=x.dtype, device=x.device)
    if x.dim() != 2:
        raise ValueError(f"train_X must have shape [n, d], got {tuple(x.shape)}")
    if y.shape != (x.shape[0], 1):
        raise ValueError(f"train_Y must have shape [{x.shape[0]}, 1], got {tuple(y.shape)}")
    if x.shape[0] < 2:
        raise ValueError(f"train_X needs at least 2 observed points, got {x.shape[0]}")
    if not bool(torch.isfinite(y).all()):
        raise ValueError("train_Y contains NaN or infinite values")
    return x, y


class _FixedStandardize(Standardize):
    """BoTorch's ``Standardize`` with statistics fixed to a GP head's shift and scale.

    The head standardises with the population standard deviation; fixing the statistics keeps
    the BoTorch posterior identical to the head's prediction, and the transform never refits
    (it stays in eval mode even when the model is put in train mode).
    """

    def __init__(self, shift: torch.Tensor, scale: torch.Tensor) -> None:
        super().__init__(m=1)
        self.means = shift.detach().reshape(1, 1).clone()
        self.stdvs = scale.detach().reshape(1, 1).clone()
        self._stdvs_sq = self.stdvs.pow(2)
        self._is_trained = torch.tensor(True)
        self.eval()

    def train(self, mode: bool = True) -> _FixedStandardize:
        return super().train(False)


class DeepKernelGP(gpytorch.models.ExactGP, GPyTorchModel, FantasizeMixin):
    """A fitted GP head on frozen encoder features, as a single-output BoTorch model.

    Use :meth:`fit` to fit the hyperparameters on observed points, or build it from an already
    fitted single-task :class:`~probrec.gp.head.FittedGP` (regression).

    Example:
        >>> x, y = torch.rand(20, 3, dtype=torch.float64), torch.rand(20, 1, dtype=torch.float64)
        >>> model = DeepKernelGP.fit(x, y)
        >>> post = model.posterior(torch.rand(5, 1, 3, dtype=torch.float64))  # 5 x 1 x 1

    Args:
        train_X: ``[n, d]`` observed inputs (raw inputs of ``encoder``, or features).
        train_Y: ``[n, 1]`` observed values (original units).
        gp: the head fitted on ``encoder(train_X)`` and ``train_Y`` (one task, regression).
        encoder: frozen feature extractor ``[..., d] -> [..., k]``; a frozen copy is kept (the
            caller's module is not modified). ``None``: inputs are features.

    Raises:
        ValueError: ``gp`` is not a single-task regression head, or ``train_X`` / ``train_Y``
            disagree with the points it was fitted on.
    """

    _num_outputs = 1

    def __init__(
        self,
        train_X: torch.Tensor,
        train_Y: torch.Tensor,
        gp: FittedGP,
        encoder: torch.nn.Module | None = None,
    ) -> None:
        x, y = _check_xy(train_X, train_Y)
        if gp.config.kind != "regression":
            raise ValueError("gp must be a regression head (GPConfig(kind='regression'))")
        if gp.theta.shape[0] != 1 or gp.mask is not None:
            raise ValueError("gp must hold exactly one unpadded task")
        if gp.z_s.shape[1] != x.shape[0]:
            raise ValueError(
                f"gp was fitted on {gp.z_s.shape[1]} points but train_X has {x.shape[0]} rows"
            )
        mean, covar, lik = gp.gpytorch_modules()
        targets = gp.targets[0].detach().to(x)
        refit = targets * gp.scale[0].to(x) + gp.shift[0].to(x)
        if not torch.allclose(refit, y[:, 0], rtol=1e-5, atol=1e-8 * float(y.abs().max() + 1)):
            raise ValueError("train_Y differs from the labels gp was fitted on")
        super().__init__(x, targets, lik)
        self.mean_module = mean.to(x)
        self.covar_module = covar.to(x)
        self.likelihood.to(x)
        self.encoder = None if encoder is None else _frozen(encoder).to(x.device)
        self.outcome_transform = _FixedStandardize(gp.shift[0].to(x), gp.scale[0].to(x))
        self.config = gp.config
        floor = gpytorch.settings.min_variance.value(x.dtype)
        if float(gp.scale[0]) ** 2 < 100 * floor:
            warnings.warn(
                f"train_Y varies by {float(gp.scale[0]):.3g}: posterior variances under "
                f"{floor:g} (gpytorch's min_variance for {x.dtype}) are rounded up to it, so "
                "confident predictions look uncertain; rescale the labels (e.g. micromolar "
                "instead of molar)",
                RuntimeWarning,
                stacklevel=2,
            )

    def condition_on_observations(self, X: torch.Tensor, Y: torch.Tensor, **kwargs: Any):
        """BoTorch's conditioning, after one gpytorch prediction has built the caches it needs
        (the direct ``q = 1`` path of :meth:`posterior` does not build them).

        With ``noise`` (per-observation variances, as ``fantasize(observation_noise=...)``
        passes), the conditioned model predicts through gpytorch's fantasy caches only: the
        direct ``q = 1`` path knows one homoscedastic noise, and gave other variances than
        gpytorch's (and ``SingleTaskGP``'s) path on the same model.
        """
        if self.prediction_strategy is None:
            self.eval()
            with torch.no_grad():
                self(self.train_inputs[0][:1])
        model = super().condition_on_observations(X, Y, **kwargs)
        if kwargs.get("noise") is not None:
            model._per_point_noise = True
        return model

    @classmethod
    def fit(
        cls,
        train_X: torch.Tensor,
        train_Y: torch.Tensor,
        *,
        encoder: torch.nn.Module | None = None,
        config: GPConfig | None = None,
        tol: float = 1e-6,
        max_iter: int = 50,
    ) -> DeepKernelGP:
        """Fits a GP head on ``encoder(train_X)`` and ``train_Y`` and wraps it.

        Args:
            train_X: ``[n, d]`` observed inputs.
            train_Y: ``[n, 1]`` observed values.
            encoder: frozen feature extractor, or ``None`` (inputs are features).
            config: GP configuration (default: Matern-5/2 regression with the log-normal
                lengthscale and noise priors); ``kind`` must be ``"regression"``.
            tol, max_iter: Newton inner-loop settings.
        """
        x, y = _check_xy(train_X, train_Y)
        config = config or GPConfig(kind="regression")
        if config.kind != "regression":
            raise ValueError("config.kind must be 'regression' for a BoTorch model")
        frozen = _frozen(encoder)
        with torch.no_grad():  # the frozen copy's eval-mode features (as posterior reads them)
            z = _encode(frozen, x)
        gp = GPHead(config, tol=tol, max_iter=max_iter).fit(z, y[:, 0])
        return cls(x, y, gp, frozen)

    def posterior(
        self,
        X: torch.Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | torch.Tensor = False,
        posterior_transform=None,
        **kwargs,
    ) -> GPyTorchPosterior:
        """Posterior over ``X`` (``batch x q x d``): a ``batch x q x 1`` ``GPyTorchPosterior``.

        For ``q = 1`` (scoring a pool, analytic acquisition functions) the marginals are
        computed directly with one ``[batch, n]`` cross-covariance instead of gpytorch's
        batched path, which concatenates a copy of the training inputs to every candidate (for
        2048-d fingerprints and a pool of 2,000 molecules: a 1 GB tensor). Same numbers, from
        the same gpytorch modules (tests check it against gpytorch's path and ``SingleTaskGP``
        with the same hyperparameters); ``q > 1``, batched (fantasy) models and models
        conditioned with per-point noise go through gpytorch's path. A tensor
        ``observation_noise`` (outcome-transformed variances) is added per point, as
        ``SingleTaskGP`` adds it. ``output_indices``: ``None`` or ``[0]`` (one output).
        """
        train = self.train_inputs[0]
        _check_candidates(X, train.shape[-1], train.device, train.dtype)
        if output_indices is not None and list(output_indices) != [0]:  # BoTorch ignored them
            raise ValueError(
                f"output_indices must be None or [0] (one output), got {output_indices}"
            )
        if isinstance(observation_noise, torch.Tensor):
            return self._posterior_with_noise(X, observation_noise, posterior_transform)
        direct = (
            X.shape[-2] == 1
            and train.dim() == 2
            and not getattr(self, "_per_point_noise", False)
            and not kwargs
        )
        if not direct:
            return super().posterior(
                X,
                observation_noise=bool(observation_noise),
                posterior_transform=posterior_transform,
                **kwargs,
            )
        self.eval()
        mean, var = self._marginals(X[..., 0, :], bool(observation_noise))
        post = self.outcome_transform.untransform_posterior(_independent(X, mean, var), X=X)
        return post if posterior_transform is None else posterior_transform(posterior=post, X=X)

    def _posterior_with_noise(
        self, X: torch.Tensor, noise: torch.Tensor, posterior_transform
    ) -> GPyTorchPosterior:
        """gpytorch's posterior plus the observation-noise variances ``noise`` (outcome-
        transformed units) on the diagonal, broadcast as ``SingleTaskGP`` does: ``(batch) x q x
        1``, a shared ``(batch) x 1 x 1``, or (one dimension fewer than ``X``) ``(batch) x q``.
        (``GPyTorchModel.posterior`` added a ``... x 1 x 1`` noise, as ``fantasize`` passes it,
        to every entry of the covariance: noise fully correlated across the ``q`` points.)"""
        if not all_finite(noise) or bool((noise < 0).any()):
            raise ValueError("observation_noise must hold finite variances >= 0")
        self.eval()
        with gpt_posterior_settings():
            mvn = self(X)
            shape = mvn.batch_shape + mvn.event_shape
            try:
                flat = noise.squeeze(-1) if noise.dim() >= X.dim() else noise
                per_point = flat.to(mvn.mean).expand(shape)
            except RuntimeError as err:
                raise ValueError(
                    f"observation_noise of shape {tuple(noise.shape)} does not broadcast to "
                    f"the posterior's {tuple(shape)} (+ a trailing output dimension of 1)"
                ) from err
            mvn = self.likelihood(mvn, X, noise=per_point)
        post = self.outcome_transform.untransform_posterior(GPyTorchPosterior(mvn), X=X)
        return post if posterior_transform is None else posterior_transform(posterior=post, X=X)

    def _marginals(
        self, x: torch.Tensor, observation_noise: bool
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact marginal posterior mean / variance ``[m]`` (standardised units) at ``x [..., d]``.

        ``mean = m(x) + k_x^T (K + s I)^-1 (y - m)``, ``var = k(x, x) - k_x^T (K + s I)^-1 k_x``
        (+ ``s`` with observation noise), with the mean, kernel and noise ``s`` of the modules.
        """
        z_q = self.features(x.reshape(-1, x.shape[-1]))
        z_s = self.features(self.train_inputs[0])
        noise = self.likelihood.noise.reshape(())
        k_ss = self.covar_module(z_s).to_dense()
        eye = torch.eye(len(z_s), dtype=z_s.dtype, device=z_s.device)
        chol = robust_cholesky(k_ss + noise * eye).to(z_s.dtype)
        resid = (self.train_targets - self.mean_module(z_s))[:, None]
        k_sq = self.covar_module(z_s, z_q).to_dense()
        v = torch.linalg.solve_triangular(chol, k_sq, upper=False)
        alpha = torch.cholesky_solve(resid, chol)
        mean = self.mean_module(z_q) + (k_sq * alpha).sum(0)
        prior = self.covar_module(z_q, diag=True)
        var = (prior - (v * v).sum(0)).clamp_min(1e-12)
        return mean, var + noise if observation_noise else var

    def features(self, X: torch.Tensor) -> torch.Tensor:
        """Encoder features ``[..., k]`` of inputs ``[..., d]`` (the inputs if no encoder)."""
        return _encode(self.encoder, X)

    def forward(self, x: torch.Tensor) -> gpytorch.distributions.MultivariateNormal:
        z = self.features(x)
        return gpytorch.distributions.MultivariateNormal(self.mean_module(z), self.covar_module(z))


def _independent(X: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> GPyTorchPosterior:
    """Posterior of independent Gaussians over the points of ``X`` (``batch x q x d``) from flat
    ``mean`` / ``var`` (``batch * q`` values)."""
    shape = X.shape[:-1]
    mvn = gpytorch.distributions.MultivariateNormal(
        mean.reshape(shape), DiagLinearOperator(var.reshape(shape))
    )
    return GPyTorchPosterior(mvn)


def _frozen(encoder: torch.nn.Module | None) -> torch.nn.Module | None:
    """An eval-mode copy of ``encoder`` without gradients (the caller's module untouched: a
    train-mode encoder updated its batch-norm statistics and drew dropout masks)."""
    if encoder is None:
        return None
    return copy.deepcopy(encoder).eval().requires_grad_(False)


def _encode(encoder: torch.nn.Module | None, x: torch.Tensor) -> torch.Tensor:
    """``encoder(x)`` in the encoder's dtype and on its device, returned in ``x``'s."""
    if encoder is None:
        return x
    p = next(encoder.parameters(), None)
    dtype, device = (x.dtype, x.device) if p is None else (p.dtype, p.device)
    flat = x.reshape(-1, x.shape[-1]).to(device, dtype)
    z = encoder(flat).to(x.device, x.dtype)
    return z.reshape(*x.shape[:-1], z.shape[-1])


class ForestModel(Model):
    """A scikit-learn random forest as a BoTorch model with a Gaussian posterior.

    Posterior at a point: mean of the trees' predictions; variance = variance across trees plus
    the out-of-bag mean squared residual on the observed points (an estimate of the noise the
    tree spread does not see). Independent across points (diagonal covariance). No gradients
    with respect to the inputs: use it with discrete acquisition optimisation. No
    ``condition_on_observations`` / ``fantasize`` either, so acquisitions built on fantasy
    models (``qKnowledgeGradient``) need :class:`DeepKernelGP`.

    Args:
        forest: a fitted ``sklearn.ensemble.RandomForestRegressor``.
        noise: variance added to the between-tree variance (>= 0).
        dtype: of the posterior tensors.
    """

    _num_outputs = 1

    def __init__(self, forest, noise: float = 0.0, dtype: torch.dtype = torch.float64) -> None:
        super().__init__()
        if not hasattr(forest, "estimators_"):
            raise ValueError("forest must be a fitted scikit-learn forest")
        if getattr(forest, "n_outputs_", 1) != 1:  # a reshape error at the first posterior
            raise ValueError(f"forest must have one output, got {forest.n_outputs_}")
        if not (noise >= 0.0 and np.isfinite(noise)):
            raise ValueError(f"noise must be a finite variance >= 0, got {noise}")
        self.forest = forest
        self.noise = float(noise)
        self._dtype = dtype

    @classmethod
    def fit(
        cls,
        train_X: torch.Tensor,
        train_Y: torch.Tensor,
        *,
        n_estimators: int = 100,
        seed: int = 0,
        **forest_kwargs,
    ) -> ForestModel:
        """Fits ``RandomForestRegressor(n_estimators, random_state=seed, **forest_kwargs)``.

        ``seed`` is an int in ``[0, 2**63)``; scikit-learn takes seeds below ``2**32``, so the
        forest's ``random_state`` is ``seed mod 2**32`` (the seed itself below ``2**32``).

        Raises:
            TypeError / ValueError: ``seed`` is not an int in ``[0, 2**63)``.
        """
        from sklearn.ensemble import RandomForestRegressor

        # a seed from 2**32 on (pool_bo gives surrogate `it` the seed `seed * 1000 + it`)
        # failed inside scikit-learn with "random_state ... must be an int in the range
        # [0, 4294967295]"
        seed = check_seed(seed) % 2**32
        x, y = _check_xy(train_X, train_Y)
        fixed = {"bootstrap", "oob_score", "random_state"} & set(forest_kwargs)
        if fixed:  # sklearn's "got multiple values for keyword argument"
            raise ValueError(
                f"{sorted(fixed)} cannot be set: the noise estimate needs bootstrap=True and "
                "oob_score=True, and seed sets random_state"
            )
        forest = RandomForestRegressor(
            n_estimators=n_estimators,
            random_state=seed,
            bootstrap=True,
            oob_score=True,
            n_jobs=1,
            **forest_kwargs,
        )
        xn, yn = x.detach().cpu().numpy(), y[:, 0].detach().cpu().numpy()
        with warnings.catch_warnings():  # few points: some may never be out of bag
            warnings.simplefilter("ignore", UserWarning)
            forest.fit(xn, yn)
        oob = forest.oob_prediction_
        seen = np.isfinite(oob)
        noise = float(np.mean((oob[seen] - yn[seen]) ** 2)) if seen.any() else float(yn.var())
        return cls(forest, noise, x.dtype)

    @property
    def num_outputs(self) -> int:
        return 1

    @property
    def batch_shape(self) -> torch.Size:
        return torch.Size()

    def posterior(
        self,
        X: torch.Tensor,
        output_indices: list[int] | None = None,
        observation_noise: bool | torch.Tensor = False,
        posterior_transform=None,
    ) -> GPyTorchPosterior:
        """Gaussian posterior over ``X`` (``batch x q x d``): a ``batch x q x 1`` posterior.

        ``observation_noise`` is accepted for BoTorch's interface and has no effect: the
        out-of-bag noise term is always part of the variance (see the class docstring).
        """
        if output_indices not in (None, [0]):
            raise ValueError(f"output_indices must be None or [0], got {output_indices}")
        _check_candidates(X, self.forest.n_features_in_)
        flat = np.ascontiguousarray(X.detach().reshape(-1, X.shape[-1]).cpu().numpy(), np.float32)
        per_tree = np.stack([t.predict(flat, check_input=False) for t in self.forest.estimators_])
        mean = torch.as_tensor(per_tree.mean(0), dtype=self._dtype, device=X.device)
        var = torch.as_tensor(per_tree.var(0), dtype=self._dtype, device=X.device) + self.noise
        post = _independent(X, mean, var.clamp_min(1e-12))
        return post if posterior_transform is None else posterior_transform(post)
