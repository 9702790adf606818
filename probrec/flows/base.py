"""The annotator-simulator contract shared by every model of :mod:`probrec.flows`.

An annotator simulator is a conditional distribution ``p(y | x)`` over a finite, ordered set
of ``K`` integer labels, learned from many items' individual annotations and used zero-shot
on new items (Wu, Chen, Zhang & Woodland, "It HAS to be Subjective: Human Annotator Simulation
via Zero-shot Density Estimation", 2023). :class:`AnnotatorModel` implements everything but
the model itself:

* input checks (``[n, in_dim]`` finite features; labels in the label set; no empty items),
  feature standardisation (statistics of the training features, stored as buffers);
* :meth:`~AnnotatorModel.fit` -- mini-batch AdamW on the negative log-likelihood (or a bound
  on it) of all individual annotations, early stopping on a validation set, a progress bar,
  seeded (the same seed gives the same model);
* :meth:`~AnnotatorModel.label_log_probs`, :meth:`~AnnotatorModel.predict_proba`,
  :meth:`~AnnotatorModel.log_prob`, :meth:`~AnnotatorModel.nll` and
  :meth:`~AnnotatorModel.sample` (simulated annotations), batched over items;
* :meth:`~AnnotatorModel.save` / :meth:`AnnotatorModel.load`;
* the fitted state (:attr:`~AnnotatorModel.fitted`): every prediction before :meth:`fit`
  (or loading) raises, rather than answering with the random initial weights.

Annotators are exchangeable given ``x``, so an item's annotations enter only through its label
counts ``n_ik``; the training loss is ``-sum_ik n_ik log p(k | x_i) / sum_ik n_ik``.

Subclasses implement, on standardised features ``z``, ``_train_loss(z, counts, generator)
-> [B]`` (per-item negative log-likelihood or bound, summed over that item's annotations) and
``_label_log_probs(z, generator, n_samples) -> [B, K]``; Monte Carlo models override
``_estimate`` (log-probabilities and their standard errors) and ``_estimate_loo`` (the
log-probabilities with their leave-one-replicate-out estimates from the same draws, for the
standard error of a sum over items), models
with an item-level latent override ``_item_moments`` (the spread within one simulated panel)
and ``_valid_scores`` (the criterion of early stopping), and ``_sample`` may be a sampler
independent of ``_label_log_probs`` (the tests compare the two).
"""

from __future__ import annotations

import copy
import math
import os
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probrec.checks import (
    as_float_tensor,
    check_bool,
    check_choice,
    check_positive_int,
    check_real,
    check_seed,
)
from probrec.data.annotations import annotation_counts, check_label_values, pad_annotations
from probrec.progress import track
from probrec.seeding import seeded_rng, torch_generator

__all__ = [
    "CHUNK_ELEMENTS",
    "DEFAULT_DROPOUT",
    "DEFAULT_HIDDEN",
    "MAX_QUADRATURE_POINTS",
    "AnnotatorModel",
    "MemberPanels",
    "check_quadrature",
    "count_conditioned_gaussian",
    "hermite_draws",
    "hermite_grid",
    "item_chunks",
    "load_model",
    "map_item_chunks",
    "normal_points",
    "panel_moments",
    "replicate_log_mean",
    "replicate_loo",
]

_FORMAT = "probrec.flows/1"

#: Default feature-encoder width and dropout of every annotator model, chosen together with
#: :meth:`AnnotatorModel.fit`'s learning rate and weight decay (evidence in its docstring).
DEFAULT_HIDDEN: tuple[int, ...] = (256,)
DEFAULT_DROPOUT: float = 0.5


class AnnotatorModel(nn.Module, ABC):
    """Base class of conditional distributions ``p(y | x)`` over ``K`` integer labels.

    Args:
        in_dim: feature width ``d``.
        labels: the label set, strictly increasing integers (e.g. ``range(1, 6)``).
        seed: seed of the weight initialisation and default seed of :meth:`fit`.

    Attributes:
        labels: the label set as a tuple.
        history: one dict per training epoch (``epoch``, ``train``, ``valid``).
    """

    kind: ClassVar[str] = "categorical"
    #: Monte Carlo samples used for the validation NLL during :meth:`fit` (stochastic models)
    valid_samples: ClassVar[int | None] = None
    #: the same for the per-annotation validation NLL of ``fit(valid_metric="annotation")``
    #: (``None``: ``valid_samples``)
    valid_marginal_samples: ClassVar[int | None] = None
    _registry: ClassVar[dict[str, type[AnnotatorModel]]] = {}
    #: instances start unfitted (``__init__``); a model pickled whole before the flag existed
    #: reads this class default
    _fitted: bool = True

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        AnnotatorModel._registry[cls.__name__] = cls

    def __init__(self, in_dim: int, labels: Sequence[int], *, seed: int = 0) -> None:
        super().__init__()
        self.in_dim = check_positive_int(in_dim, "in_dim")
        self.labels = check_label_values(list(labels), "labels")
        self.n_labels = len(self.labels)
        self.seed = check_seed(seed)
        dtype = torch.get_default_dtype()
        self.register_buffer("values", torch.tensor(self.labels, dtype=dtype))
        self.register_buffer("x_loc", torch.zeros(self.in_dim, dtype=dtype))
        self.register_buffer("x_scale", torch.ones(self.in_dim, dtype=dtype))
        self.history: list[dict[str, float]] = []
        self._fitted = False
        self._hermite: tuple[int, int] | None = None
        self._config: dict[str, Any] = {
            "in_dim": self.in_dim,
            "labels": list(self.labels),
            "seed": self.seed,
        }

    def _remember(self, **kwargs: Any) -> None:
        """Records constructor arguments for :meth:`save` / :meth:`load`."""
        for k, v in kwargs.items():
            self._config[k] = list(v) if isinstance(v, tuple) else v

    @classmethod
    def _saved_config(cls, config: dict[str, Any]) -> dict[str, Any]:
        """The constructor arguments of a saved file's ``config`` (a subclass maps settings
        that older files hold and the constructor now refuses)."""
        return dict(config)

    def _register_hermite_grid(self, nodes_per_dim: int, dim: int) -> None:
        """Registers :func:`hermite_grid`'s ``nodes`` ``[Q**dim, dim]`` and ``log_weights``
        ``[Q**dim]`` as buffers, in the model's dtype."""
        self._hermite = (nodes_per_dim, dim)
        nodes, log_w = hermite_grid(nodes_per_dim, dim)
        self.register_buffer("nodes", nodes.to(self.dtype))
        self.register_buffer("log_weights", log_w.to(self.dtype))

    def _apply(self, fn: Callable[[Tensor], Tensor], recurse: bool = True) -> AnnotatorModel:
        """``nn.Module``'s dtype / device conversion; the quadrature grid is recomputed from
        float64 rather than converted, so that a model built in float32 and moved to float64
        integrates (and sums to one) with float64 accuracy."""
        super()._apply(fn, recurse)
        if self._hermite is not None:
            nodes, log_w = hermite_grid(*self._hermite)
            self.nodes = nodes.to(self.nodes)
            self.log_weights = log_w.to(self.log_weights)
        return self

    # ------------------------------------------------------------------ helpers
    @property
    def device(self) -> torch.device:
        return self.values.device

    @property
    def dtype(self) -> torch.dtype:
        return self.values.dtype

    def _generator(self, seed: int | None) -> torch.Generator:
        return torch_generator(seed, self.device)

    @property
    def fitted(self) -> bool:
        """Whether the model may predict: set by :meth:`fit` (cleared while it trains), by
        :meth:`load` and by ``load_state_dict``. Predictions, log-probabilities and samples of
        a model that is not fitted raise ``ValueError``: its initial weights are random.

        An ensemble is fitted when it and every member are (a member whose fit failed part
        way is not). Set it to ``True`` by hand to predict with weights that came from
        elsewhere (set directly, or a subclass whose parameters are fixed); this marks
        ensemble members too.
        """
        return all(m._fitted for m in self.modules() if isinstance(m, AnnotatorModel))

    @fitted.setter
    def fitted(self, value: bool) -> None:
        self._set_fitted(check_bool(value, "fitted"))

    def _set_fitted(self, fitted: bool = True) -> None:
        """Marks this model and every annotator model inside it (ensemble members)."""
        for m in self.modules():
            if isinstance(m, AnnotatorModel):
                m._fitted = fitted

    def _check_fitted(self) -> None:
        """Raises unless the model is :attr:`fitted` (its initial weights are random)."""
        if not self.fitted:
            raise ValueError(
                f"{type(self).__name__} is not fitted: call fit() first (or load a saved "
                "model with load_model / load_state_dict); its initial weights are random"
            )

    def load_state_dict(
        self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False
    ) -> Any:
        """``nn.Module.load_state_dict``; the model then counts as :attr:`fitted`."""
        result = super().load_state_dict(state_dict, strict=strict, assign=assign)
        self._set_fitted()
        return result

    def _features(self, x: Any, name: str = "x") -> Tensor:
        """Checked ``[n, in_dim]`` features on the model's device and dtype, standardised."""
        t = as_float_tensor(x, name, ndim=2, dtype=self.dtype, device=self.device)
        if t.shape[1] != self.in_dim:
            raise ValueError(
                f"{name} must have {self.in_dim} features per row, got shape {tuple(t.shape)}"
            )
        return (t - self.x_loc) / self.x_scale

    def _counts(self, annotations: Any, mask: Any, name: str = "annotations") -> Tensor:
        labels, m = pad_annotations(annotations, mask, label_values=self.labels, name=name)
        counts = annotation_counts(labels, m, self.labels)
        return torch.as_tensor(counts, dtype=self.dtype, device=self.device)

    def _label_index(self, y: Any, name: str = "y") -> Tensor:
        """Label values -> indices ``0..K-1`` (same shape), with a clear error otherwise."""
        if isinstance(y, Tensor):
            arr = y.detach().cpu().numpy()
        else:
            arr = np.asarray(y)
        if arr.dtype == object or not (np.issubdtype(arr.dtype, np.number) or arr.dtype == bool):
            raise TypeError(f"{name} must hold integer labels, got dtype {arr.dtype}")
        arr = arr.astype(np.float64)
        if not np.isfinite(arr).all() or not np.all(arr == np.round(arr)):
            raise ValueError(f"{name} must hold integer labels (no NaN)")
        values = np.asarray(self.labels)
        idx = np.clip(np.searchsorted(values, arr), 0, self.n_labels - 1)
        bad = values[idx] != arr
        if bad.any():
            raise ValueError(
                f"{name} holds labels {sorted(set(arr[bad].astype(int).tolist()))[:10]} "
                f"outside the label set {list(self.labels)}"
            )
        return torch.as_tensor(idx, dtype=torch.long, device=self.device)

    def _batches(self, n: int, batch_size: int) -> Iterator[slice]:
        for start in range(0, n, batch_size):
            yield slice(start, min(start + batch_size, n))

    # ------------------------------------------------------------------ model hooks
    @abstractmethod
    def _train_loss(self, z: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
        """Per-item negative log-likelihood (or bound) ``[B]`` (or ``[M, B]`` for ensembles)."""

    @abstractmethod
    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        """``[B, K]`` log-probabilities of every label for standardised features ``z``."""

    def _estimate(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor]:
        """``[B, K]`` log-probabilities and their Monte Carlo standard errors (0: exact)."""
        logp = self._label_log_probs(z, generator, n_samples)
        return logp, torch.zeros_like(logp)

    def _estimate_loo(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor | None]:
        """``[B, K]`` log-probabilities (those of :meth:`_label_log_probs` with the same
        generator state) and ``[R, B, K]`` leave-one-replicate-out log-probabilities
        (:func:`replicate_loo`) of a replicated Monte Carlo estimate from the same draws;
        ``None`` in place of the latter for closed forms (and estimates without replicates)."""
        return self._label_log_probs(z, generator, n_samples), None

    def _item_moments(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor]:
        """Expected mean and standard deviation ``[B]`` of a simulated item's labels.

        Default (annotators independent given ``x``): the moments of ``p(y | x)``.
        """
        probs = self._label_log_probs(z, generator, n_samples).exp()
        return panel_moments(probs[None], self.values)

    def _sample(self, z: Tensor, n: int, generator: torch.Generator) -> Tensor:
        """``[n, B]`` label indices; default: inverse-CDF draws from :meth:`_label_log_probs`."""
        probs = self._label_log_probs(z, generator, None).exp()
        return _categorical(probs, n, generator)

    @property
    def panel_latent(self) -> bool:
        """Whether an item's simulated annotators are dependent given ``x`` (they share an
        item-level latent or an ensemble member); ``False``: independent, so the panel
        likelihood is the sum of the per-annotation log-probabilities."""
        return False

    def _valid_scores(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, metric: str = "panel"
    ) -> Tensor:
        """Validation NLL per annotation; ``[1]`` (``[M]`` for members trained jointly).

        ``metric="panel"``: the items' joint (panel) likelihood; ``"annotation"``: the
        per-annotation marginal ``p(y | x)``. The two are the same for independent annotators.
        """
        if metric == "annotation" and self.panel_latent:
            n = self.valid_marginal_samples or self.valid_samples
            ll = (counts * self._label_log_probs(z, generator, n)).sum(-1)
        else:
            ll = self._panel_log_lik(z, counts, generator, self.valid_samples)
        return (-ll.sum() / counts.sum()).reshape(1)

    def _panel_log_lik(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        """``[B]`` ``log p(y_1, ..., y_n | x)`` of each item's annotations as one panel.

        Annotators independent given ``x``: ``sum_k n_k log p(k | x)``. Models with an item
        latent (:attr:`panel_latent`) implement ``_item_log_lik(z, counts, generator, s,
        mixture=True)`` (an estimate that does not trust the amortised posterior; exact with
        quadrature) and ``n_eval_samples``; ensembles override this to match :meth:`_sample`.
        """
        if self.panel_latent:
            s = n_samples or self.n_eval_samples  # type: ignore[attr-defined]
            if s < 2:
                raise ValueError(f"n_samples must be >= 2 for a panel's likelihood, got {s}")
            return self._item_log_lik(z, counts, generator, s, mixture=True)  # type: ignore[attr-defined]
        return (counts * self._label_log_probs(z, generator, n_samples)).sum(-1)

    def _param_groups(self, lr: float) -> list[dict[str, Any]]:
        """Optimiser parameter groups (one group at ``lr`` by default)."""
        return [{"params": list(self.parameters()), "lr": lr}]

    def _snapshot(self, best: dict[str, Tensor] | None, improved: Tensor) -> dict[str, Tensor]:
        """Copies the parameters of improved members into ``best``."""
        if best is None or bool(improved.all()):
            return {k: v.detach().clone() for k, v in self.state_dict().items()}
        return best

    # ------------------------------------------------------------------ training
    def fit(
        self,
        x: Any,
        annotations: Any,
        mask: Any = None,
        *,
        valid: tuple[Any, ...] | None = None,
        epochs: int = 300,
        batch_size: int = 64,
        lr: float = 3e-4,
        weight_decay: float = 1e-2,
        patience: int = 20,
        input_dropout: float = 0.0,
        valid_metric: str = "panel",
        seed: int | None = None,
        progress: bool | None = None,
    ) -> AnnotatorModel:
        """Fits the model to individual annotations by maximum likelihood (or a bound).

        Args:
            x: ``[n, in_dim]`` features of the training items.
            annotations: the items' annotations: a padded ``[n, m]`` matrix of label values
                (with ``mask``, or NaN for missing) or ``n`` per-item sequences of labels.
            mask: ``[n, m]`` bool, ``True`` where ``annotations`` holds an annotation.
            valid: ``(x_valid, annotations_valid[, mask_valid])`` for early stopping on the
                validation NLL per annotation (see ``valid_metric``); ``None``: stop on the
                training loss.
            epochs: maximum passes over the items.
            batch_size: items per step.
            lr: AdamW learning rate.
            weight_decay: AdamW weight decay. The defaults (3e-4, 1e-2), with the models'
                default width 256 and dropout 0.5 (``DEFAULT_HIDDEN``, ``DEFAULT_DROPOUT``),
                were chosen on the validation items of POPQUORN, ConvAbuse and MD-Agreement
                (MiniLM features, 3 seeds, every annotator model): validation NLL lower than
                at (1e-3, 1e-4, 128, 0.1) in 15 of 17 (dataset, model) cells, by 0.007 on
                average (the ordinal-logistic head and the discretised Gaussian on POPQUORN
                0.002-0.004 worse).
            patience: training stops once more than ``patience`` epochs in a row (that is,
                ``patience + 1``) have not improved on the best score by 1e-6; the best
                epoch's weights are restored.
            input_dropout: dropout on the standardised input features of every training
                batch (each feature zeroed with this probability, the rest scaled by
                ``1 / (1 - p)``; one mask per item, shared by an ensemble's members); a
                regulariser for wide frozen embeddings (0.2 on the MiniLM features above
                lowered the validation NLL by a further 0.002 on average; off by default, as
                it would hurt low-dimensional features). Never applied at prediction.
            valid_metric: what early stopping minimises for models whose annotators share
                an item latent (:attr:`panel_latent`): ``"panel"``, the items' joint
                likelihood per annotation (what simulated panels are scored by), or
                ``"annotation"``, the per-annotation marginal ``p(y | x)`` (what the
                per-annotation NLL scores). The same for independent annotators. The
                marginal often keeps improving for some epochs after the panel fit has
                turned. ``"annotation"`` against ``"panel"``, test items, 10 seeds
                (``examples/annotators.py --valid-metric``): POPQUORN integer flow with an
                item latent, NLL per annotation -0.0051 +- 0.0022, panel NLL +0.0003 +-
                0.0006 (seeds 10-19: -0.0026 +- 0.0014 and +0.0016 +- 0.0007); all
                MD-Agreement items, softmax flow, -0.0011 +- 0.0005 and +0.0012 +- 0.0005;
                no consistent gain on ConvAbuse (-0.0014 +- 0.0014; all items +0.0015 +-
                0.0009) or the MD-Agreement subsample (+0.0012 +- 0.0010).
            seed: seed of the batch order, dropout masks and Monte Carlo noise (default: the
                constructor's seed).
            progress: progress bar over epochs (``None``: when attached to a terminal).

        Returns:
            ``self``, in evaluation mode and :attr:`fitted`; ``self.history`` lists the
            per-epoch losses. A second call continues from the current weights (a warm
            start; the standardisation is recomputed from the new training features): build
            a new model for an independent fit.

        Raises:
            ValueError / TypeError: bad features (shape, NaN), labels outside the label set,
                items without annotations, mismatched lengths, bad settings.
        """
        z = self._features(x, "x")
        counts = self._counts(annotations, mask, "annotations")
        if counts.shape[0] != z.shape[0]:
            raise ValueError(f"x has {z.shape[0]} items but annotations has {counts.shape[0]}")
        zv = cv = None
        if valid is not None:
            if not isinstance(valid, (tuple, list)) or len(valid) not in (2, 3):
                raise TypeError("valid must be (x_valid, annotations_valid[, mask_valid])")
            zv_raw = as_float_tensor(
                valid[0], "valid x", ndim=2, dtype=self.dtype, device=self.device
            )
            cv = self._counts(valid[1], valid[2] if len(valid) == 3 else None, "valid annotations")
            if zv_raw.shape[0] != cv.shape[0]:
                raise ValueError(
                    f"valid x has {zv_raw.shape[0]} items but valid annotations has {cv.shape[0]}"
                )
        epochs = check_positive_int(epochs, "epochs")
        batch_size = check_positive_int(batch_size, "batch_size")
        patience = check_positive_int(patience, "patience")
        lr = check_real(lr, "lr", strict=True)
        weight_decay = check_real(weight_decay, "weight_decay")
        input_dropout = check_real(input_dropout, "input_dropout")  # a str: a bare TypeError
        if not input_dropout < 1.0:
            raise ValueError(f"input_dropout must be in [0, 1), got {input_dropout}")
        valid_metric = check_choice(valid_metric, "valid_metric", ("panel", "annotation"))
        seed = self.seed if seed is None else check_seed(seed)
        if valid is not None and zv_raw.shape[1] != self.in_dim:
            raise ValueError(f"valid x must have {self.in_dim} features, got {tuple(zv_raw.shape)}")

        self._set_fitted(False)  # until training ends (a failed fit leaves it unfitted)
        # standardise with the training statistics (undo the current ones first)
        raw = z * self.x_scale + self.x_loc
        loc = raw.mean(0)
        scale = raw.std(0) if raw.shape[0] > 1 else torch.ones_like(loc)
        scale = torch.where(scale > 1e-6 * (1 + loc.abs()), scale, torch.ones_like(scale))
        self.x_loc.copy_(loc)
        self.x_scale.copy_(scale)
        z = (raw - loc) / scale
        if valid is not None:
            zv = (zv_raw - loc) / scale

        gen_cpu = torch.Generator().manual_seed(seed)
        gen = self._generator(seed + 1)
        n_annotations = float(counts.sum())
        opt = torch.optim.AdamW(self._param_groups(lr), lr=lr, weight_decay=weight_decay)
        n = z.shape[0]
        best: dict[str, Tensor] | None = None
        best_score: Tensor | None = None
        best_epoch: Tensor | None = None
        self.history = []
        bar = track(
            range(epochs), progress=progress, desc=type(self).__name__, unit="epoch", leave=False
        )
        with seeded_rng(seed, self.device):
            for epoch in bar:
                self.train()
                perm = torch.randperm(n, generator=gen_cpu).to(self.device)
                # summed on the device (in float64, as Python floats would): one sync per
                # batch, the finiteness check, rather than three
                total = torch.zeros((), dtype=torch.float64, device=self.device)
                for sl in self._batches(n, batch_size):
                    idx = perm[sl]
                    c = counts[idx]
                    zb = F.dropout(z[idx], input_dropout) if input_dropout > 0 else z[idx]
                    loss_items = self._train_loss(zb, c, gen)
                    loss = loss_items.sum() / c.sum()
                    if not torch.isfinite(loss):
                        raise FloatingPointError(
                            f"{type(self).__name__}.fit: non-finite loss at epoch {epoch}; "
                            "try a smaller lr"
                        )
                    opt.zero_grad(set_to_none=True)
                    loss.backward()
                    nn.utils.clip_grad_norm_(self.parameters(), 10.0)
                    opt.step()
                    total += loss_items.detach().sum().double()
                members = loss_items.shape[0] if loss_items.dim() > 1 else 1
                train_loss = float(total) / (n_annotations * members)
                self.eval()
                with torch.no_grad():
                    if zv is not None:
                        score = self._valid_scores(zv, cv, self._generator(seed + 2), valid_metric)
                    else:
                        score = torch.tensor([train_loss])
                score = score.detach().cpu().double()
                rec = {
                    "epoch": epoch,
                    "train": train_loss,
                    "valid": float(score.mean()) if zv is not None else float("nan"),
                }
                self.history.append(rec)
                if best_score is None:
                    improved = torch.ones_like(score, dtype=torch.bool)
                    best_score, best_epoch = score.clone(), torch.zeros_like(score)
                else:
                    improved = score < best_score - 1e-6
                best_score = torch.where(improved, score, best_score)
                best_epoch = torch.where(improved, torch.full_like(best_epoch, epoch), best_epoch)
                if bool(improved.any()):
                    best = self._snapshot(best, improved)
                bar.set_postfix(train=f"{train_loss:.4f}", best=f"{float(best_score.mean()):.4f}")
                if bool((epoch - best_epoch > patience).all()):
                    break
        bar.close()
        if best is not None:
            self.load_state_dict(best)
        self._set_fitted()
        self.eval()
        return self

    # ------------------------------------------------------------------ prediction
    def label_log_probs(
        self, x: Any, *, batch_size: int = 512, seed: int = 0, n_samples: int | None = None
    ) -> Tensor:
        """Log-probabilities of every label for each item.

        Args:
            x: ``[n, in_dim]`` features.
            batch_size: items per forward pass.
            seed: seed of any Monte Carlo estimate (same seed, same numbers). The Monte Carlo
                points (and :class:`MCDropoutHead`'s dropout masks) are shared by the items,
                so an item's estimate does not depend on ``batch_size`` or on the other items.
            n_samples: Monte Carlo samples for models that need them (``None``: the model's
                default); ignored by models with closed-form probabilities.

        Returns:
            ``[n, K]`` log ``p(y = labels[k] | x)``, on the model's device.
        """
        n_samples = _n_samples(n_samples)
        parts = self._run(
            lambda z, g: self._label_log_probs(z, g, n_samples),
            x,
            batch_size,
            seed,
            same_draws=True,
        )
        return torch.cat(parts, 0)

    def _run(
        self,
        fn: Any,
        x: Any,
        batch_size: int,
        seed: int | None,
        *rows: Tensor,
        same_draws: bool = False,
    ) -> list[Any]:
        """Applies ``fn(z_batch, generator, *rows_batch)`` over item batches in evaluation
        mode, no grad; ``rows`` are per-item tensors (``[n, ...]``) batched alongside ``x``.

        With ``same_draws`` every batch starts from the same generator state, so estimators
        whose Monte Carlo points are shared by the items (:func:`normal_points`) draw the
        same points in every batch; otherwise the batches draw in turn (independent draws
        per item, as simulated annotations need).
        """
        self._check_fitted()
        z = self._features(x)
        batch_size = check_positive_int(batch_size, "batch_size")
        seed = check_seed(seed, optional=True)
        gen = self._generator(seed)
        start = gen.get_state() if same_draws else None
        was = self.training
        self.eval()
        out = []
        try:
            with torch.no_grad(), seeded_rng(seed, self.device):
                for sl in self._batches(z.shape[0], batch_size):
                    if start is not None:
                        gen.set_state(start)
                    out.append(fn(z[sl], gen, *(r[sl] for r in rows)))
        finally:
            self.train(was)
        return out

    def label_log_probs_se(
        self, x: Any, *, batch_size: int = 512, seed: int = 0, n_samples: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Log-probabilities ``[n, K]`` and their Monte Carlo standard errors ``[n, K]``.

        For Monte Carlo estimates the standard error of ``log p`` is the delta-method
        ``sd(w) / (sqrt(S) mean(w))`` of the importance weights ``w``; exact models return 0.
        """
        n_samples = _n_samples(n_samples)
        parts = self._run(
            lambda z, g: self._estimate(z, g, n_samples), x, batch_size, seed, same_draws=True
        )
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def label_log_probs_loo(
        self, x: Any, *, batch_size: int = 512, seed: int = 0, n_samples: int | None = None
    ) -> tuple[Tensor, Tensor | None]:
        """Log-probabilities and their leave-one-replicate-out estimates, from one set of draws.

        The estimate of :meth:`label_log_probs` (same arguments, same draws) averages ``R``
        independent replicates whose points every item shares, so the items' errors are
        correlated and per-entry standard errors do not add up to the standard error of a sum
        over items. Row ``r`` of the second tensor recomputes every item's estimate without
        replicate ``r``; a statistic ``T`` of all of them (the NLL of a test set) has the
        jackknife standard error ``sqrt((R - 1) / R * sum_r (T_r - mean_r T_r)^2)``.

        Returns:
            ``[n, K]`` log-probabilities (equal to :meth:`label_log_probs`) and ``[R, n, K]``
            leave-one-out rows, or ``None`` for closed-form probabilities; on the model's
            device.
        """
        n_samples = _n_samples(n_samples)
        parts = self._run(
            lambda z, g: self._estimate_loo(z, g, n_samples),
            x,
            batch_size,
            seed,
            same_draws=True,
        )
        logp = torch.cat([p[0] for p in parts], 0)
        return logp, None if parts[0][1] is None else torch.cat([p[1] for p in parts], 1)

    def item_moments(
        self, x: Any, *, batch_size: int = 512, seed: int = 0, n_samples: int | None = None
    ) -> tuple[Tensor, Tensor]:
        """Expected mean and standard deviation ``[n]`` of one simulated item's labels.

        For models whose annotators are independent given ``x`` these are the moments of
        ``p(y | x)``; models with an item-level latent ``u`` return ``E_u`` of the moments of
        ``p(y | x, u)`` -- the spread within one simulated panel, the quantity a human panel's
        per-item standard deviation estimates.
        """
        n_samples = _n_samples(n_samples)
        parts = self._run(
            lambda z, g: self._item_moments(z, g, n_samples), x, batch_size, seed, same_draws=True
        )
        return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts])

    def predict_proba(self, x: Any, **kwargs: Any) -> Tensor:
        """``[n, K]`` label probabilities (``exp`` of :meth:`label_log_probs`)."""
        return self.label_log_probs(x, **kwargs).exp()

    def log_prob(self, x: Any, y: Any, **kwargs: Any) -> Tensor:
        """``log p(y | x)`` of given labels.

        Args:
            x: ``[n, in_dim]`` features.
            y: ``[n]`` or ``[n, m]`` label values (all in the label set).
            **kwargs: passed to :meth:`label_log_probs`.

        Returns:
            Log-probabilities with the shape of ``y``.
        """
        idx = self._label_index(y, "y")
        if idx.dim() not in (1, 2):
            raise ValueError(f"y must be [n] or [n, m], got shape {tuple(idx.shape)}")
        logp = self.label_log_probs(x, **kwargs)
        if idx.shape[0] != logp.shape[0]:
            raise ValueError(f"x has {logp.shape[0]} items but y has {idx.shape[0]}")
        if idx.dim() == 1:
            return logp.gather(1, idx[:, None]).squeeze(1)
        return logp.gather(1, idx)

    def nll(self, x: Any, annotations: Any, mask: Any = None, **kwargs: Any) -> float:
        """Mean negative log-likelihood per individual annotation (nats)."""
        counts = self._counts(annotations, mask)
        logp = self.label_log_probs(x, **kwargs)
        if counts.shape[0] != logp.shape[0]:
            raise ValueError(f"x has {logp.shape[0]} items but annotations has {counts.shape[0]}")
        return float(-(counts * logp).sum() / counts.sum())

    def panel_log_prob(
        self,
        x: Any,
        annotations: Any,
        mask: Any = None,
        *,
        batch_size: int = 512,
        seed: int = 0,
        n_samples: int | None = None,
    ) -> Tensor:
        """Log-probability of each item's annotations jointly, as one panel of annotators.

        ``log p(y_1, ..., y_n | x)`` for the sequence of the item's labels (any order: the
        annotators are exchangeable), under the same rule :meth:`sample` simulates a panel
        with. For models whose annotators are independent given ``x`` this is
        ``sum_j log p(y_j | x)``; models with an item latent ``u`` give
        ``log E_u prod_j p(y_j | x, u)`` and ensembles ``log mean_m prod_j p_m(y_j | x)`` --
        the likelihood of a human panel's agreement, which the per-annotation NLL cannot see.

        Args:
            x: ``[n, in_dim]`` features.
            annotations: padded ``[n, m]`` labels (with ``mask``) or per-item sequences.
            mask: ``[n, m]`` bool.
            batch_size: items per forward pass.
            seed: seed of any Monte Carlo estimate (an unbiased estimate of the probability
                for importance-sampled models, so its log is biased low by Jensen's gap). The
                draws are made per item, batch after batch, so they depend on ``batch_size``.
            n_samples: Monte Carlo samples (``None``: the model's default; ``>= 2`` for models
                with an item latent, whose estimate mixes two proposals).

        Returns:
            ``[n]`` log-probabilities.
        """
        counts = self._counts(annotations, mask)
        n_samples = _n_samples(n_samples)
        n_x = self._features(x).shape[0]
        if counts.shape[0] != n_x:
            raise ValueError(f"x has {n_x} items but annotations has {counts.shape[0]}")
        parts = self._run(
            lambda z, g, c: self._panel_log_lik(z, c, g, n_samples), x, batch_size, seed, counts
        )
        return torch.cat(parts, 0)

    def sample(self, x: Any, n: int, *, seed: int | None = None, batch_size: int = 512) -> Tensor:
        """Simulated annotations: ``n`` independent annotators per item.

        Args:
            x: ``[N, in_dim]`` features.
            n: annotations per item.
            seed: seed (``None``: fresh randomness).
            batch_size: items per forward pass (the draws are made batch after batch, so a
                seeded draw depends on it).

        Returns:
            ``[n, N]`` int64 label values.
        """
        n = check_positive_int(n, "n")
        idx = torch.cat(self._run(lambda z, g: self._sample(z, n, g), x, batch_size, seed), 1)
        return torch.as_tensor(self.labels, device=self.device)[idx]

    # ------------------------------------------------------------------ persistence
    def save(self, path: str | os.PathLike) -> None:
        """Writes class, constructor arguments, weights and training history to ``path``."""
        path = Path(path)
        path.parent.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().cpu() for k, v in self.state_dict().items()}
        torch.save(
            {
                "format": _FORMAT,
                "class": type(self).__name__,
                "config": copy.deepcopy(self._config),
                "state_dict": state,
                "dtype": str(self.dtype).replace("torch.", ""),
                "history": self.history,
            },
            path,
        )

    @classmethod
    def load(
        cls, path: str | os.PathLike, map_location: str | torch.device | None = None
    ) -> AnnotatorModel:
        """Rebuilds a model written by :meth:`save` (identical predictions on the same kind of
        device; seeded Monte Carlo draws come from the device's generator, so a GPU's
        estimates differ from a CPU's within their Monte Carlo error).

        Args:
            path: the file.
            map_location: device to load onto (default: CPU).

        Raises:
            ValueError: not a probrec.flows file (any file that is not a torch pickle too), or
                a different class than ``cls``.
            OSError: the file cannot be read (e.g. ``FileNotFoundError``).
        """
        try:
            blob = torch.load(Path(path), map_location="cpu", weights_only=False)
        except OSError:  # a missing or unreadable file says so itself
            raise
        except Exception as exc:  # not a torch pickle: UnpicklingError, EOFError, RuntimeError...
            raise ValueError(f"{path} is not a saved probrec.flows model ({exc})") from exc
        if not isinstance(blob, dict) or blob.get("format") != _FORMAT:
            raise ValueError(f"{path} is not a saved probrec.flows model")
        klass = AnnotatorModel._registry.get(blob["class"])
        if klass is None:
            raise ValueError(f"{path} holds unknown model class {blob['class']!r}")
        if cls is not AnnotatorModel and not issubclass(klass, cls):
            raise ValueError(f"{path} holds a {blob['class']}, not a {cls.__name__}")
        model = klass(**klass._saved_config(blob["config"]))
        model.to(getattr(torch, blob.get("dtype", "float32")))
        model.load_state_dict(blob["state_dict"])
        model.history = list(blob.get("history", []))
        model._set_fitted()
        if map_location is not None:
            model.to(map_location)
        model.eval()
        return model


def _n_samples(n_samples: int | None) -> int | None:
    """Checks a user's Monte Carlo sample count: ``None`` (the model's default) or ``>= 1``."""
    return None if n_samples is None else check_positive_int(n_samples, "n_samples")


def load_model(
    path: str | os.PathLike, map_location: str | torch.device | None = None
) -> AnnotatorModel:
    """Loads any model saved with :meth:`AnnotatorModel.save`."""
    return AnnotatorModel.load(path, map_location)


class MemberPanels(ABC):
    """Mixin of ensembles whose simulated panel answers under one member drawn per panel.

    The member is shared by a panel's annotators (annotators are dependent given ``x``), so a
    panel's likelihood is ``log mean_m p_m(panel | x)``; subclasses give the members' panel
    log-likelihoods with ``_member_panel_log_liks -> [M, B]``.
    """

    @property
    def panel_latent(self) -> bool:
        return True

    @abstractmethod
    def _member_panel_log_liks(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        """``[M, B]`` log-likelihood of each item's annotations under every member."""

    def _panel_log_lik(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        member = self._member_panel_log_liks(z, counts, generator, n_samples)
        return torch.logsumexp(member, 0) - math.log(member.shape[0])


def normal_points(
    n: int, dim: int, generator: torch.Generator, like: Tensor, *, replicates: int = 8
) -> Tensor:
    """Randomised quasi-Monte Carlo standard normal points (scrambled Sobol, Owen 1997).

    Each replicate is an independently scrambled Sobol sequence mapped through the normal
    inverse CDF: every point is marginally ``N(0, I)``, so averages over them are unbiased,
    and the spread of the replicate averages gives an honest standard error, while within a
    replicate the points cover the space far more evenly than independent draws (errors
    closer to ``O(1/n)`` than ``O(1/sqrt(n))`` for smooth integrands).

    Args:
        n: points in total (rounded up to a multiple of ``replicates``).
        dim: dimension.
        generator: seeds the scrambles.
        like: the device and dtype of the result.
        replicates: independent scrambles.

    Returns:
        ``[replicates, ceil(n / replicates), dim]`` points.
    """
    per = max(1, -(-n // replicates))
    seeds = torch.randint(
        0, 2**31 - 1, (replicates,), generator=generator, device=generator.device
    ).tolist()
    pts = []
    for s in seeds:
        eng = torch.quasirandom.SobolEngine(dim, scramble=True, seed=int(s))
        # torch computes the first point in the default dtype whatever draw's dtype: taken
        # from the integer state here, so the points do not depend on the default dtype
        first = eng.quasi.to(torch.float64) / 2**eng.MAXBIT
        u = eng.draw(per, dtype=torch.float64)
        u[0] = first
        pts.append(torch.special.ndtri(u.clamp(1e-12, 1 - 1e-12)))
    return torch.stack(pts).to(device=like.device, dtype=like.dtype)


def replicate_summary(log_w: Tensor, *, normalise: bool = False) -> tuple[Tensor, Tensor, Tensor]:
    """Estimate, standard error and leave-one-replicate-out rows of a replicated mean.

    ``log_w`` ``[R, n, ...]`` holds ``R`` replicates of ``n`` log-weights; the estimate is the
    log of the mean of ``exp(log_w)`` over all of them, computed with one reduction over the
    draws for all three results.

    Returns:
        ``(estimate [...], s.e. [...], loo [R, ...])``: the s.e. of the log-estimate is the
        standard deviation of the replicate means over ``sqrt(R)``, carried to the log scale
        by the delta method (``se / mean``); row ``r`` of ``loo`` is the estimate without
        replicate ``r`` (with one replicate: its estimate, ``[1, ...]``). A statistic ``T`` of
        the estimates of many items (e.g. the NLL of a test set) then has the jackknife
        standard error ``sqrt((R - 1) / R * sum_r (T_r - mean T)^2)``, which counts the
        correlation that points shared by the items induce between their estimates.

    With ``normalise=True`` the last axis holds the labels of one distribution and every mean
    is divided by its sum over it (a ratio estimator: consistent, with an ``O(1/n)`` bias,
    exactly normalised). When the labels' estimates share draws their common error cancels in
    the ratio. The s.e. is then the jackknife over the replicates, in log space so that no
    label's weights underflow.
    """
    r, n = log_w.shape[:2]
    log_per = torch.logsumexp(log_w, 1) - math.log(n)  # [R, ...] replicate means
    est = torch.logsumexp(log_per, 0) - math.log(r)
    if r < 2:
        loo = log_per
    else:
        drop = torch.eye(r, dtype=torch.bool, device=log_w.device).reshape(
            r, r, *([1] * (log_per.dim() - 1))
        )
        loo = torch.logsumexp(log_per.unsqueeze(0).masked_fill(drop, -math.inf), 1)
        loo = loo - math.log(r - 1)
    if normalise:
        est, loo = _normalised(est), _normalised(loo)
        se = (
            torch.sqrt((r - 1) / r * ((loo - loo.mean(0)) ** 2).sum(0))
            if r > 1
            else torch.zeros_like(est)
        )
    else:  # the replicate means relative to the estimate have mean one
        rel = torch.exp(log_per - est)
        se = rel.std(0, correction=1) / math.sqrt(r) if r > 1 else torch.zeros_like(est)
    return est, se, loo


def replicate_log_mean(log_w: Tensor, *, normalise: bool = False) -> tuple[Tensor, Tensor]:
    """Log of the mean of ``exp(log_w)`` ``[R, n, ...]`` and its s.e. over the ``R``
    replicates (:func:`replicate_summary` without the leave-one-out rows)."""
    est, se, _ = replicate_summary(log_w, normalise=normalise)
    return est, se


def _normalised(log_mean: Tensor) -> Tensor:
    return log_mean - torch.logsumexp(log_mean, -1, keepdim=True)


def replicate_loo(log_w: Tensor, *, normalise: bool = False) -> Tensor:
    """Leave-one-replicate-out estimates ``[R, ...]`` of :func:`replicate_log_mean`
    (:func:`replicate_summary`'s third result)."""
    return replicate_summary(log_w, normalise=normalise)[2]


#: elements of the largest intermediate tensor of one chunk of a Monte Carlo estimate over
#: items (:func:`item_chunks`): on a CPU about the size of a core's cache (the softmax flow's
#: per-label importance-sampling estimates and per-item moments ran about 2x faster in chunks of
#: this size than over 512 items at once, the integer flow's per-item moments and panel
#: likelihood 1.2-1.8x, ``benchmarks/annotator_flows.py``); on a GPU large,
#: for parallelism, but bounded so that memory does not grow with the number of items.
CHUNK_ELEMENTS: dict[str, int] = {"cpu": 2**21, "cuda": 2**27}


def item_chunks(n_items: int, per_item: int, device: torch.device) -> list[slice]:
    """Slices of ``n_items`` items whose Monte Carlo work fits :data:`CHUNK_ELEMENTS`.

    Estimators that broadcast shared draws (QMC points) over items call this after drawing
    them, so the numbers do not depend on the chunking.

    Args:
        n_items: items to cover.
        per_item: elements of the largest intermediate tensor per item (samples x width).
        device: where the work runs (CPU budget for any device other than CUDA).

    Returns:
        Consecutive slices covering ``range(n_items)``.
    """
    budget = CHUNK_ELEMENTS["cuda" if device.type == "cuda" else "cpu"]
    size = max(1, budget // max(int(per_item), 1))
    return [slice(i, min(i + size, n_items)) for i in range(0, n_items, size)]


def map_item_chunks(
    fn: Callable[[slice], Tensor | tuple[Tensor, ...]],
    n_items: int,
    per_item: int,
    device: torch.device,
    dim: int = 0,
) -> Tensor | tuple[Tensor, ...]:
    """``fn`` over the :func:`item_chunks` of ``n_items`` items, its outputs (a tensor or a
    tuple of tensors) concatenated along their item axis ``dim``."""
    parts = [fn(sl) for sl in item_chunks(n_items, per_item, device)] or [fn(slice(0, 0))]
    if isinstance(parts[0], tuple):
        return tuple(torch.cat(p, dim) for p in zip(*parts))
    return torch.cat(parts, dim)


def count_conditioned_gaussian(
    net: nn.Module, h: Tensor, counts: Tensor, *, log_sd_limit: float = 3.0
) -> tuple[Tensor, Tensor]:
    """Amortised Gaussian posterior of an item latent given its annotations.

    ``net`` maps ``[h, counts / n, log n]`` (features ``[..., H]``, label proportions
    ``[..., K]`` and the log number of annotations) to a mean and a log-std ``[..., L]``; the
    log-std is soft-clipped to ``[-log_sd_limit, log_sd_limit]``.
    """
    n = counts.sum(-1, keepdim=True)
    mu, log_sd = net(torch.cat([h, counts / n, torch.log(n)], -1)).chunk(2, -1)
    return mu, log_sd_limit * torch.tanh(log_sd / log_sd_limit)


def panel_moments(
    probs: Tensor, values: Tensor, log_weights: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """Mean over the first axis of the mean and standard deviation of label distributions.

    Args:
        probs: ``[S, B, K]`` label distributions (e.g. one per latent draw or node).
        values: ``[K]`` label values.
        log_weights: ``[S]`` log-weights summing to one (quadrature nodes); ``None``: equal.

    Returns:
        ``E_s mean_s`` and ``E_s sd_s``, each ``[B]``.
    """
    p = probs / probs.sum(-1, keepdim=True)
    mean = p @ values
    sd = (p @ (values * values) - mean * mean).clamp_min(0.0).sqrt()
    if log_weights is None:
        return mean.mean(0), sd.mean(0)
    w = log_weights.exp()
    return w @ mean, w @ sd


#: most points a tensor-product quadrature grid over a latent may have
MAX_QUADRATURE_POINTS = 4096


def check_quadrature(quadrature: int, dim: int) -> int:
    """Checks a quadrature setting: an int ``Q >= 0`` (0: off) with ``Q**dim`` grid points at
    most :data:`MAX_QUADRATURE_POINTS`; returns ``Q``.

    Raises:
        TypeError / ValueError: naming ``quadrature``.
    """
    q = check_positive_int(quadrature, "quadrature", minimum=0)
    if q**dim > MAX_QUADRATURE_POINTS:
        raise ValueError(
            f"quadrature={q} nodes per dimension give {q}**{dim} grid points (at most "
            f"{MAX_QUADRATURE_POINTS}); use fewer nodes or importance sampling (0)"
        )
    return q


def hermite_grid(n: int, dim: int) -> tuple[Tensor, Tensor]:
    """Gauss-Hermite nodes ``[n**dim, dim]`` and log-weights ``[n**dim]`` for ``N(0, I_dim)``.

    The probabilists' rule (weight ``exp(-u^2 / 2)``, Abramowitz & Stegun 25.4.46) normalised to
    sum to one, as a tensor product over the dimensions: exact for polynomials of degree
    ``2n - 1`` in each coordinate.
    """
    x, w = np.polynomial.hermite_e.hermegauss(n)
    grids = np.meshgrid(*([x] * dim), indexing="ij")
    wgrid = np.meshgrid(*([w / w.sum()] * dim), indexing="ij")
    nodes = np.stack([g.reshape(-1) for g in grids], -1)
    log_w = np.sum([np.log(g.reshape(-1)) for g in wgrid], 0)
    return torch.as_tensor(nodes, dtype=torch.float64), torch.as_tensor(log_w, dtype=torch.float64)


def hermite_draws(
    nodes: Tensor, log_weights: Tensor, n: int, batch: int, generator: torch.Generator
) -> Tensor:
    """``[n, batch, dim]`` independent draws from the node mixture of :func:`hermite_grid`
    (each node with its weight): latent draws whose distribution is exactly the one the
    quadrature integrates against, so samples agree with the quadrature likelihood."""
    idx = torch.multinomial(log_weights.exp().expand(batch, -1), n, True, generator=generator)
    return nodes[idx.T]


def _categorical(probs: Tensor, n: int, generator: torch.Generator) -> Tensor:
    """``[n, B]`` draws from ``[B, K]`` probabilities by inverse CDF (seeded)."""
    cdf = probs.cumsum(-1)
    cdf = cdf / cdf[..., -1:]
    u = torch.rand(
        (n, probs.shape[0], 1), generator=generator, device=probs.device, dtype=probs.dtype
    )
    return (u > cdf[None, :, :-1]).sum(-1)
