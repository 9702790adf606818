"""Ensembles of independently trained annotator simulators of any class.

A :class:`ModelEnsemble` holds ``M`` models of one :class:`~probrec.flows.AnnotatorModel`
class, each with its own initialisation seed, trained one after the other on the same items
with their own early stopping (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017). It is
itself an :class:`~probrec.flows.AnnotatorModel`: for ensembles of integer flows, of Gaussian
heads, of softmax flows, ... with one interface, so that an ensemble of flows can be compared
with an ensemble of baselines of the same size.

Read as a posterior over the model (each member a draw of the unknown ``p(y | x)``), the
member index ``m`` is an *item-level* latent: all annotators of one item answer under the same
(unknown) true distribution. Hence

* ``P(k | x) = (1/M) sum_m P_m(k | x)`` -- the predictive distribution of one annotation
  (the usual ensemble average; the NLL uses it);
* a simulated panel draws one member per item and then its annotators from that member
  (with the member's own item latent, if it has one), so annotators are exchangeable given
  ``x``; :meth:`~probrec.flows.AnnotatorModel.sample` follows exactly ``P(k | x)`` per
  annotation;
* the per-item standard deviation (:meth:`~probrec.flows.AnnotatorModel.item_moments`) is
  ``(1/M) sum_m sd_m(x)``, the members' within-panel spreads averaged: the members'
  disagreement about the item is uncertainty about ``p(y | x)``, not disagreement between
  annotators, and does not widen the predicted panel spread.

(Wu, Chen, Zhang & Woodland, "It HAS to be Subjective: Human Annotator Simulation via Zero-shot
Density Estimation", 2023, compare deep ensembles of their baseline heads; this wrapper makes
the same construction available for the flows.)
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from probrec.checks import check_positive_int, check_seed
from probrec.flows.base import AnnotatorModel, MemberPanels

__all__ = ["ModelEnsemble", "member_seeds"]


def member_seeds(seed: int, members: int) -> list[int]:
    """``members`` distinct, reproducible seeds derived from ``seed`` (``numpy.SeedSequence``)."""
    seq = np.random.SeedSequence(int(seed))
    return [int(s.generate_state(1)[0] & 0x7FFFFFFF) for s in seq.spawn(members)]


class ModelEnsemble(MemberPanels, AnnotatorModel):
    """``M`` independently trained annotator simulators of one class, probabilities averaged.

    Example:
        >>> import torch
        >>> ens = ModelEnsemble(4, range(1, 6), model="ConditionalIntegerFlow", members=3)
        >>> x, y = torch.randn(32, 4), torch.randint(1, 6, (32, 3))
        >>> _ = ens.fit(x, y, epochs=2, progress=False)
        >>> p = ens.predict_proba(torch.randn(8, 4))
        >>> p.shape, bool(torch.allclose(p.sum(-1), torch.ones(8)))
        (torch.Size([8, 5]), True)

    Args:
        in_dim: feature width.
        labels: the label set.
        model: class name of the members (any registered
            :class:`~probrec.flows.AnnotatorModel`, e.g. ``"ConditionalIntegerFlow"``,
            ``"GaussianHead"``) or the class itself.
        members: ensemble size ``M``.
        seed: ensemble seed; member ``m`` is initialised and trained with
            ``member_seeds(seed, M)[m]``.
        **model_kwargs: constructor arguments of every member (``hidden``, ``dropout``, ...).

    Attributes:
        members: the ``M`` member models (``nn.ModuleList``).
    """

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int] = (1, 2, 3, 4, 5),
        *,
        model: str | type[AnnotatorModel] = "ConditionalIntegerFlow",
        members: int = 5,
        seed: int = 0,
        **model_kwargs: Any,
    ) -> None:
        super().__init__(in_dim, labels, seed=seed)
        name = model.__name__ if isinstance(model, type) else model
        klass = AnnotatorModel._registry.get(name) if isinstance(name, str) else None
        if klass is None or klass is ModelEnsemble:
            raise ValueError(
                f"model must name an annotator model class, got {model!r}; expected one of "
                f"{sorted(k for k in AnnotatorModel._registry if k != 'ModelEnsemble')}"
            )
        n = check_positive_int(members, "members")
        self.model_name = name
        self.kind = klass.kind
        self._remember(model=name, members=n, **model_kwargs)
        self.members = nn.ModuleList(
            klass(in_dim, labels, seed=s, **model_kwargs) for s in member_seeds(self.seed, n)
        )

    @property
    def n_members(self) -> int:
        return len(self.members)

    def fit(
        self,
        x: Any,
        annotations: Any,
        mask: Any = None,
        *,
        seed: int | None = None,
        progress: bool | None = None,
        **kwargs: Any,
    ) -> ModelEnsemble:
        """Fits every member on the same items with its own seed and early stopping.

        Args:
            x: ``[n, in_dim]`` features of the training items.
            annotations: the items' annotations (see :meth:`AnnotatorModel.fit`).
            mask: ``[n, m]`` bool mask of ``annotations``.
            seed: ensemble seed of the members' batch orders and noise (default: the
                constructor's); member ``m`` uses ``member_seeds(seed, M)[m]``.
            progress: progress bars.
            **kwargs: :meth:`AnnotatorModel.fit` options (``valid``, ``epochs``, ``lr``, ...).

        Returns:
            ``self`` in evaluation mode; ``history`` holds every member's epochs (key
            ``member``).
        """
        self._features(x, "x")  # shape and finiteness checks before any member trains
        seeds = member_seeds(self.seed if seed is None else check_seed(seed), self.n_members)
        self.history = []
        # each member's fit unmarks it once its checks pass: a fit refused for its arguments
        # leaves a fitted ensemble fitted, one that fails part way leaves it unfitted
        for i, (member, s) in enumerate(zip(self.members, seeds)):
            member.fit(x, annotations, mask, seed=s, progress=progress, **kwargs)
            self.history += [{**rec, "member": i} for rec in member.history]
        self._set_fitted()
        self.eval()
        return self

    # ------------------------------------------------------------------ hooks
    # the ensemble keeps the identity standardisation: z is the raw feature matrix and every
    # member standardises it with its own training statistics
    def _member_z(self, member: AnnotatorModel, z: Tensor) -> Tensor:
        return (z - member.x_loc) / member.x_scale

    def _train_loss(self, z: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
        return torch.stack(
            [m._train_loss(self._member_z(m, z), counts, generator) for m in self.members]
        )

    def _estimate(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor]:
        parts = [m._estimate(self._member_z(m, z), generator, n_samples) for m in self.members]
        logp = torch.stack([p[0] for p in parts])  # [M, B, K]
        se = torch.stack([p[1] for p in parts])
        log_mean = torch.logsumexp(logp, 0) - math.log(self.n_members)
        # independent member estimates: se(p_m) = p_m se_m (delta method), se(log p) = se(p) / p
        w = torch.exp(logp - log_mean)  # p_m / p
        return log_mean, torch.sqrt(((w * se) ** 2).sum(0)) / self.n_members

    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        return self._estimate(z, generator, n_samples)[0]

    def _estimate_loo(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor | None]:
        # replicate r of every member left out together: the members' replicates are
        # independent, so these groups are independent and identically distributed in r
        # (the members draw in the order of _estimate; closed forms enter unchanged)
        parts = [m._estimate_loo(self._member_z(m, z), generator, n_samples) for m in self.members]
        logp = torch.stack([p[0] for p in parts])  # [M, B, K]
        log_mean = torch.logsumexp(logp, 0) - math.log(self.n_members)
        if all(p[1] is None for p in parts):
            return log_mean, None
        rows = [p[0][None] if p[1] is None else p[1] for p in parts]
        loo = torch.stack(torch.broadcast_tensors(*rows))  # [M, R, B, K]
        return log_mean, torch.logsumexp(loo, 0) - math.log(self.n_members)

    def _item_moments(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor]:
        parts = [m._item_moments(self._member_z(m, z), generator, n_samples) for m in self.members]
        mean = torch.stack([p[0] for p in parts]).mean(0)
        sd = torch.stack([p[1] for p in parts]).mean(0)
        return mean, sd

    def _member_panel_log_liks(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        parts = [
            m._panel_log_lik(self._member_z(m, z), counts, generator, n_samples)
            for m in self.members
        ]
        return torch.stack(parts)  # [M, B]

    def _sample(self, z: Tensor, n: int, generator: torch.Generator) -> Tensor:
        # one member per item (a simulated panel shares it), then that member's annotators
        pick = torch.randint(
            0, self.n_members, (z.shape[0],), generator=generator, device=generator.device
        ).to(z.device)
        out = torch.zeros((n, z.shape[0]), dtype=torch.long, device=z.device)
        for i, m in enumerate(self.members):
            rows = (pick == i).nonzero().squeeze(1)
            if rows.numel():
                out[:, rows] = m._sample(self._member_z(m, z[rows]), n, generator)
        return out
