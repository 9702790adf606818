"""Deep-kernel GP meta-learners: ADKF-IFT and its special cases ADKF and DKT.

All three share a feature extractor ``phi`` (an MLP over molecule features) and a GP head
with per-task hyperparameters ``theta`` (lengthscale, outputscale, noise). They differ in
which parameters are meta-learned and which are adapted per task (Chen, Tripp &
Hernandez-Lobato, "Meta-learning Adaptive Deep Kernel Gaussian Processes for Molecular
Property Prediction", ICLR 2023):

* :class:`ADKFIFT` -- ``theta`` fitted on each support set (MAP, batched Newton), ``phi``
  meta-learned on the query predictive NLL with the implicit-function-theorem hypergradient
  ``dL/dphi = dL_out/dphi - (d2 L_in / dphi dtheta) H^-1 dL_out/dtheta``.
* :class:`ADKF` -- the same with the IFT correction dropped (``theta*`` treated as a constant).
* :class:`DKT` -- ``theta`` meta-learned together with ``phi`` (no per-task fit) on the
  marginal likelihood of whole episodes (Patacchiola et al., "Bayesian Meta-Learning for the
  Few-Shot Setting via Deep Kernels", NeurIPS 2020).
"""

from __future__ import annotations

import math
from dataclasses import asdict
from typing import Any, ClassVar

import torch
import torch.distributed as dist

from metalearn.base import MetaLearner, check_support
from metalearn.episodes import MetaBatch
from metalearn.hypergrad import implicit_argmin
from metalearn.training import TrainConfig, _dist_info, as_task_list, meta_train
from probrec.backbone import MLPEncoder, hidden_widths
from probrec.backbone.mlp import ACTIVATIONS
from probrec.checks import (
    as_float_tensor,
    check_bool,
    check_choice,
    check_positive_int,
    check_real,
)
from probrec.gp.exact import (
    GPConfig,
    geometry,
    inner_objective,
    inner_objective_grad,
    median_lengthscale,
    neg_log_marginal_likelihood,
    posterior_from_geometry,
    predictive_nll,
    prior_centres,
)
from probrec.gp.fit import fit_hyperparameters
from probrec.gp.head import FittedGP, GPHead, encode_labels

_TRAIN_KEYS = set(TrainConfig.__dataclass_fields__)


#: encoder activations whose outputs are never negative (a Tanimoto kernel's domain)
NONNEGATIVE_ACTIVATIONS = ("relu", "softplus")


def check_encoder_kernel(kernel: str, out_dim: int | None, activation: str) -> None:
    """Checks that a deep kernel's encoder gives features its GP kernel is defined on.

    The Tanimoto kernel needs non-negative features: those of an encoder without an output
    layer (``out_dim=None``) whose activation is ``"relu"`` or ``"softplus"``. A linear output
    layer, or another activation, gives negative features, and meta-training or adaptation
    failed at the first kernel evaluation.

    Args:
        kernel: the GP kernel's name.
        out_dim: width of the encoder's linear output layer (``None``: none).
        activation: the encoder's activation.

    Raises:
        ValueError: ``kernel="tanimoto"`` with an encoder whose features can be negative; the
            message names ``kernel``.
    """
    check_choice(activation, "activation", tuple(ACTIVATIONS))
    if kernel != "tanimoto" or (out_dim is None and activation in NONNEGATIVE_ACTIVATIONS):
        return
    why = (
        f"the encoder ends in a linear output layer (out_dim={out_dim})"
        if out_dim is not None
        else f"the encoder's activation {activation!r} takes negative values"
    )
    raise ValueError(
        f"kernel='tanimoto' needs non-negative features, but {why}: use kernel='matern52' or "
        "'rbf', or out_dim=None with activation='relu' or 'softplus' (the last hidden "
        "activations are then the features)"
    )


def encode_in_chunks(
    encoder: torch.nn.Module, x: Any, device: torch.device, chunk: int = 4096
) -> torch.Tensor:
    """Frozen features ``[m, k]`` of inputs ``x [m, d]`` (eval mode, no graph, in chunks)."""
    xt = as_float_tensor(x, "x", ndim=2, dtype=torch.float32)
    d = getattr(encoder, "in_dim", None)
    if d is not None and xt.shape[1] != d:
        raise ValueError(f"x must have {d} features per row, got shape {tuple(xt.shape)}")
    encoder.eval()
    with torch.no_grad():
        parts = [encoder(xt[i : i + chunk].to(device)) for i in range(0, max(len(xt), 1), chunk)]
    return torch.cat(parts)


def query_features(
    encoder: torch.nn.Module | None, x: Any, z_s: torch.Tensor, device: torch.device
) -> torch.Tensor:
    """Checked features ``[m, k]`` of queries ``x``: encoded by the frozen ``encoder``, or ``x``
    itself when it is already encoded (``encoder=None``), in the support features' dtype."""
    if encoder is not None:
        return encode_in_chunks(encoder, x, device).to(z_s.dtype)
    z = as_float_tensor(x, "x", ndim=2, dtype=z_s.dtype, device=device)
    if z.shape[1] != z_s.shape[-1]:
        raise ValueError(
            f"x (encoded) must have {z_s.shape[-1]} features per row, got {tuple(z.shape)}"
        )
    return z


class DeepKernelPredictor:
    """A deep-kernel GP adapted to one task: features from the frozen encoder, then the GP.

    Attributes:
        gp: the fitted GP on the support features.
        encoder: the frozen encoder, or ``None`` when inputs are already encoded features.
    """

    def __init__(self, encoder: torch.nn.Module | None, gp: FittedGP, device: torch.device) -> None:
        self.encoder = encoder
        self.gp = gp
        self.device = device

    def features(self, x: Any) -> torch.Tensor:
        return query_features(self.encoder, x, self.gp.z_s, self.device)

    def predict(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictive mean and variance ``([m], [m])`` (latent +-1 scale for classification)."""
        with torch.no_grad():
            return self.gp.predict(self.features(x))

    def predict_proba(self, x: Any) -> torch.Tensor:
        """``sigmoid(latent mean)``, ``[m]``."""
        with torch.no_grad():
            return self.gp.predict_proba(self.features(x))


class _DeepKernelBase(MetaLearner):
    """Shared machinery: encoder, GP configuration, adapt, meta-training.

    Config keys (all optional): ``hidden`` (encoder widths, default ``(512, 256)``),
    ``out_dim``, ``activation``, ``dropout``, ``norm``, ``gmp``; ``kernel``
    (``"matern52"``; ``"tanimoto"`` needs non-negative features: ``out_dim=None`` with a
    ``"relu"`` or ``"softplus"`` activation, see :func:`check_encoder_kernel`), ``mean``
    (``"zero"``), ``lengthscale_prior`` / ``noise_prior`` (True;
    terms of the per-task inner objective, so DKT, which has no per-task fit, does not use
    them),
    ``joint_outer`` (True: the joint query predictive NLL), ``inner_tol`` (1e-6),
    ``inner_max_iter`` (50), ``gp_dtype`` (``"float64"``), and every field of
    :class:`~metalearn.training.TrainConfig`.
    """

    defaults: dict[str, Any] = {
        "hidden": (512, 256),
        "out_dim": None,
        "activation": "relu",
        "dropout": 0.0,
        "norm": None,
        "gmp": False,
        "kernel": "matern52",
        "mean": "zero",
        "lengthscale_prior": True,
        "noise_prior": True,
        "joint_outer": True,
        "inner_tol": 1e-6,
        "inner_max_iter": 50,
        "gp_dtype": "float64",
    }

    options = frozenset(defaults) | _TRAIN_KEYS
    #: whether a GP kernel works on the encoder's features (ProtoNet has no kernel)
    kernel_on_features: ClassVar[bool] = False

    def __init__(self, kind: str = "classification", seed: int = 0, device=None, **config: Any):
        full = {**self.defaults, **{k: v for k, v in asdict(TrainConfig()).items()}, **config}
        full["hidden"] = hidden_widths(full["hidden"])
        super().__init__(kind, seed, device, **full)
        self.gp_config = GPConfig(
            kernel=full["kernel"],
            mean=full["mean"],
            kind=kind,
            lengthscale_prior=full["lengthscale_prior"],
            noise_prior=full["noise_prior"],
        )
        check_choice(full["gp_dtype"], "gp_dtype", ("float32", "float64"))
        # the inner-loop settings reach GPHead only at the first validation (eval_every steps
        # into meta-training, named there as tol / max_iter); "no" for a flag meant True
        check_real(full["inner_tol"], "inner_tol", strict=True)
        check_positive_int(full["inner_max_iter"], "inner_max_iter")
        check_bool(full["joint_outer"], "joint_outer")
        check_bool(full["gmp"], "gmp")  # checked here, not at build() in meta_fit
        if self.kernel_on_features:  # a Tanimoto kernel on negative features: at the first step
            check_encoder_kernel(full["kernel"], full["out_dim"], full["activation"])
        self.gp_dtype = getattr(torch, full["gp_dtype"])
        self.encoder: torch.nn.Module | None = None
        self.in_dim: int | None = None

    # ------------------------------------------------------------------ modules
    def build(self, in_dim: int) -> None:
        c = self.config
        self.in_dim = int(in_dim)
        self.encoder = MLPEncoder(
            in_dim,
            hidden=c["hidden"],
            out_dim=c["out_dim"],
            activation=c["activation"],
            dropout=c["dropout"],
            norm=c["norm"],
            gmp=c["gmp"],
            seed=self.seed,
        ).to(self.device)

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        return {} if self.encoder is None else {"encoder": self.encoder}

    def modules(self) -> dict[str, torch.nn.Module]:
        return self.trainable_modules()

    @property
    def train_config(self) -> TrainConfig:
        return TrainConfig(**{k: self.config[k] for k in _TRAIN_KEYS})

    def meta_fit(
        self, train_tasks, valid_tasks=None, *, checkpoint_dir=None, resume=True, progress=None
    ) -> dict[str, list]:
        """Meta-trains the encoder (and DKT's hyperparameters) episodically."""
        return meta_train(
            self,
            as_task_list(train_tasks, "train_tasks"),
            [] if valid_tasks is None else as_task_list(valid_tasks, "valid_tasks"),
            self.train_config,
            checkpoint_dir=checkpoint_dir,
            resume=resume,
            progress=progress,
        )

    # ------------------------------------------------------------------ episodes
    def _encode_real_rows(self, batch: MetaBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Support ``[B, n_s, k]`` and query ``[B, n_q, k]`` features (encoder dtype) from one
        encoder call over the support rows and the real query rows only.

        With ``norm="batch"`` the batch statistics (and the running statistics kept for
        adaptation) then cover the meta-batch's points, not the zero rows that pad shorter
        query sets (which get zero features, masked out of every loss).
        """
        b, n_s, d = batch.support_x.shape
        mask = batch.query_mask
        z = self.encoder(torch.cat([batch.support_x.reshape(-1, d), batch.query_x[mask]]))
        z_q = z.new_zeros(*mask.shape, z.shape[-1]).masked_scatter(mask[..., None], z[b * n_s :])
        return z[: b * n_s].reshape(b, n_s, -1), z_q

    def _features(self, batch: MetaBatch) -> tuple[torch.Tensor, torch.Tensor]:
        """Encoded support ``[B, n_s, k]`` and query ``[B, n_q, k]`` features (GP dtype)."""
        b, n_s, d = batch.support_x.shape
        n_q = batch.query_x.shape[1]
        if self.config["norm"] == "batch":  # one call, so batch statistics cover the episode
            z_s, z_q = self._encode_real_rows(batch)
            return z_s.to(self.gp_dtype), z_q.to(self.gp_dtype)
        # two calls avoid a concatenated copy of the inputs being kept for backward
        z_s = self.encoder(batch.support_x.reshape(-1, d)).to(self.gp_dtype)
        z_q = self.encoder(batch.query_x.reshape(-1, d)).to(self.gp_dtype)
        return z_s.reshape(b, n_s, -1), z_q.reshape(b, n_q, -1)

    def _targets(self, batch: MetaBatch) -> tuple[torch.Tensor, torch.Tensor]:
        ys = batch.support_y.to(self.gp_dtype)
        yq = batch.query_y.to(self.gp_dtype)
        t_s, shift, scale = encode_labels(ys, self.kind)
        if self.kind == "classification":
            t_q = (2.0 * yq - 1.0) * batch.query_mask.to(yq.dtype)
        else:
            t_q = (yq - shift[:, None]) / scale[:, None] * batch.query_mask.to(yq.dtype)
        return t_s, t_q

    def _outer_loss(self, theta, z_s, z_q, t_s, t_q, mask_q) -> torch.Tensor:
        c = self.gp_config
        joint = bool(self.config["joint_outer"])
        post = posterior_from_geometry(
            theta,
            c,
            geometry(c, z_s, z_s),
            geometry(c, z_s, z_q),
            t_s,
            None,
            geometry(c, z_q, z_q) if joint else None,
        )
        nll = predictive_nll(post, t_q, mask_q, joint=joint)
        return (nll / mask_q.sum(-1).to(nll.dtype)).sum()

    # ------------------------------------------------------------------ adaptation
    def _fixed_theta(self) -> torch.Tensor | None:
        return None

    def encode(self, x: Any) -> torch.Tensor:
        """Features of the meta-learned (frozen) encoder, ``[m, k]``.

        ``adapt(encode(x_s), y_s, encoded=True)`` equals ``adapt(x_s, y_s)``; evaluation uses
        it to encode each task's molecules once instead of once per episode.
        """
        if self.encoder is None:
            raise RuntimeError(f"{type(self).__name__} is not meta-trained yet: call meta_fit()")
        return encode_in_chunks(self.encoder, x, self.device)

    def adapt(
        self, support_x: Any, support_y: Any, *, encoded: bool = False
    ) -> DeepKernelPredictor:
        """Fits the GP head on the encoded support set (``x [n, d]``, ``y [n]``).

        With ``encoded=True`` the inputs (support and later query) are already features from
        :meth:`encode`.
        """
        if self.encoder is None:
            raise RuntimeError(f"{type(self).__name__} is not meta-trained yet: call meta_fit()")
        x, y = check_support(support_x, support_y, self.kind, device=self.device)
        z = (x if encoded else self.encode(x)).to(self.gp_dtype)
        head = GPHead(
            self.gp_config, tol=self.config["inner_tol"], max_iter=self.config["inner_max_iter"]
        )
        theta = self._fixed_theta()
        gp = head.fit(z, y.to(self.gp_dtype), theta=None if theta is None else theta.detach()[None])
        return DeepKernelPredictor(None if encoded else self.encoder, gp, self.device)


class ADKFIFT(_DeepKernelBase):
    """Adaptive deep kernel fitting with implicit-function-theorem hypergradients.

    Per meta-step: encode the support and query sets of ``B`` tasks; fit every task's
    ``theta*`` at once on the detached support features (batched Newton to ``inner_tol``);
    attach the implicit derivative ``dtheta*/dz_s`` (exact ``p x p`` block solves with the
    Newton Hessians); the outer loss is the query predictive NLL under the GP posterior at
    ``theta*``; ``backward`` puts the IFT hypergradient in the encoder's ``.grad``.

    Example:
        >>> from probrec.data import latent_feature_tasks, split_tasks
        >>> tasks = latent_feature_tasks(40, 96, dim=16, seed=0)
        >>> tr, va, te = split_tasks(tasks, (30, 5, 5), seed=0)
        >>> m = ADKFIFT(n_steps=20, batch_size=4, support_size=16, query_size=32, lr=1e-3,
        ...             hidden=(32,), eval_every=10)
        >>> _ = m.meta_fit(tr, va, progress=False)
        >>> p = m.adapt(te[0].inputs[:16], te[0].labels[:16]).predict_proba(te[0].inputs[16:])
    """

    name = "ADKF-IFT"
    use_ift = True
    kernel_on_features = True

    def episode_loss(self, batch: MetaBatch) -> torch.Tensor:
        """Sum over the batch's tasks of the per-point query predictive NLL at ``theta*``."""
        c = self.gp_config
        z_s, z_q = self._features(batch)
        t_s, t_q = self._targets(batch)
        zd = z_s.detach()
        geom = geometry(c, zd, zd)
        centres = prior_centres(c, zd, geom=geom)
        fit = fit_hyperparameters(
            c,
            geom,
            t_s,
            None,
            centres,
            tol=self.config["inner_tol"],
            max_iter=self.config["inner_max_iter"],
        )
        self.last_fit = fit
        theta = fit.theta.to(self.gp_dtype)
        if self.use_ift:

            def inner(th: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
                return inner_objective(th, c, geometry(c, zs, zs), t_s, None, centres).sum()

            def inner_grad(th: torch.Tensor, zs: torch.Tensor) -> torch.Tensor:
                return inner_objective_grad(th, c, geometry(c, zs, zs), t_s, None, centres)

            held = fit.held
            theta_ift = implicit_argmin(
                inner, theta, [z_s], solver="block", hessian=fit.hessian, inner_grad=inner_grad
            )
            # a task with constant support targets keeps the prior modes, not a stationary
            # point of its inner objective: its theta is a constant, without an implicit term
            theta = theta_ift if held is None else torch.where(held[:, None], theta, theta_ift)
        return self._outer_loss(theta, z_s, z_q, t_s, t_q, batch.query_mask)


class ADKF(ADKFIFT):
    """ADKF-IFT without the IFT correction: ``theta*`` is fitted per task, then held constant
    when differentiating the outer loss with respect to the feature extractor."""

    name = "ADKF"
    use_ift = False


class DKT(_DeepKernelBase):
    """Deep kernel transfer: encoder and one set of GP hyperparameters meta-learned jointly on
    the marginal likelihood of whole episodes (support and query); no per-task fit.

    The objective is the marginal likelihood alone (Patacchiola et al., NeurIPS 2020), so the
    ``lengthscale_prior`` / ``noise_prior`` options change nothing here; the noise starts at
    the noise prior's mode and the lengthscale at the median heuristic of the first
    meta-batch.
    """

    name = "DKT"
    kernel_on_features = True

    def build(self, in_dim: int) -> None:
        super().build(in_dim)
        init = torch.zeros(self.gp_config.n_params, dtype=self.gp_dtype)
        names = self.gp_config.names
        init[names.index("log_noise")] = math.log(self.gp_config.noise_prior_mode)
        self.hyper = torch.nn.Module()
        self.hyper.theta = torch.nn.Parameter(init.to(self.device))
        # the lengthscale starts at the median heuristic of the first meta-batch's features
        self.hyper.register_buffer("initialised", torch.tensor(False, device=self.device))

    def trainable_modules(self) -> dict[str, torch.nn.Module]:
        if self.encoder is None:
            return {}
        return {"encoder": self.encoder, "hyper": self.hyper}

    def _fixed_theta(self) -> torch.Tensor:
        return self.hyper.theta

    def episode_loss(self, batch: MetaBatch) -> torch.Tensor:
        """Sum over tasks of the per-point NLML of support and query points together."""
        c = self.gp_config
        z_s, z_q = self._features(batch)
        t_s, t_q = self._targets(batch)
        z = torch.cat([z_s, z_q], dim=1)
        t = torch.cat([t_s, t_q], dim=1)
        mask = torch.cat([torch.ones_like(t_s, dtype=torch.bool), batch.query_mask], dim=1)
        if not bool(self.hyper.initialised) and "log_lengthscale" in c.names:
            with torch.no_grad():
                i = c.names.index("log_lengthscale")
                per_task = median_lengthscale(z_s.detach())
                _, world = _dist_info()
                if world > 1:  # every rank starts from the median over the whole meta-batch
                    parts: list[list[float] | None] = [None] * world
                    dist.all_gather_object(parts, per_task.cpu().tolist())
                    per_task = per_task.new_tensor([v for part in parts for v in part])
                self.hyper.theta[i] = per_task.median().log()
                self.hyper.initialised.fill_(True)
        theta = self.hyper.theta[None].expand(z.shape[0], -1)
        nlml = neg_log_marginal_likelihood(theta, c, geometry(c, z, z), t, mask)
        return (nlml / mask.sum(-1).to(nlml.dtype)).sum()
