"""Prototypical networks for few-shot binary classification.

The encoder is meta-learned so that each query point is classified by the softmax over
negative squared Euclidean distances to the class prototypes (means of the encoded support
points of each class): Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning",
NeurIPS 2017; the FS-Mol ProtoNet baseline (Stanley et al., 2021).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from metalearn.base import check_support
from metalearn.deep_kernel import _DeepKernelBase, query_features
from metalearn.episodes import MetaBatch


def _logits(z_s: torch.Tensor, y_s: torch.Tensor, z_q: torch.Tensor) -> torch.Tensor:
    """``[B, m, 2]`` logits: minus squared distances to the negative and positive prototypes."""
    w1 = y_s / y_s.sum(-1, keepdim=True)
    w0 = (1 - y_s) / (1 - y_s).sum(-1, keepdim=True)
    protos = torch.stack([(w0[..., None] * z_s).sum(-2), (w1[..., None] * z_s).sum(-2)], dim=-2)
    return -torch.cdist(z_q, protos).pow(2)


class ProtoNetPredictor:
    """Prototypes of one task; ``predict_proba`` is the softmax over prototype distances.

    ``encoder`` is ``None`` when the inputs are already encoded features.
    """

    def __init__(
        self, encoder: torch.nn.Module | None, z_s: torch.Tensor, y_s: torch.Tensor, device
    ):
        self.encoder, self.z_s, self.y_s, self.device = encoder, z_s, y_s, device

    def predict_proba(self, x: Any) -> torch.Tensor:
        """``P(y = 1)``, ``[m]``."""
        z = query_features(self.encoder, x, self.z_s, self.device)
        with torch.no_grad():
            return torch.softmax(_logits(self.z_s[None], self.y_s[None], z[None])[0], -1)[:, 1]

    def predict(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Bernoulli mean and variance ``(p, p (1 - p))``."""
        p = self.predict_proba(x)
        return p, p * (1 - p)


class ProtoNet(_DeepKernelBase):
    """Prototypical network on the shared MLP encoder (classification only).

    Meta-training minimises the query cross-entropy of the prototype classifier, with the
    same episodic loop, optimiser and model selection as the GP meta-learners.
    """

    name = "ProtoNet"
    supports = ("classification",)

    def episode_loss(self, batch: MetaBatch) -> torch.Tensor:
        """Sum over tasks of the mean query cross-entropy."""
        b, n_s, d = batch.support_x.shape
        flat = torch.cat([batch.support_x.reshape(-1, d), batch.query_x.reshape(-1, d)])
        z = self.encoder(flat)
        z_s = z[: b * n_s].reshape(b, n_s, -1)
        z_q = z[b * n_s :].reshape(b, batch.query_x.shape[1], -1)
        logits = _logits(z_s, batch.support_y.to(z.dtype), z_q)
        ce = F.cross_entropy(
            logits.reshape(-1, 2), batch.query_y.long().reshape(-1), reduction="none"
        )
        m = batch.query_mask.to(ce.dtype)
        return ((ce.reshape(b, -1) * m).sum(-1) / m.sum(-1)).sum()

    def adapt(self, support_x: Any, support_y: Any, *, encoded: bool = False) -> ProtoNetPredictor:
        """Prototypes of the encoded support set (``encoded=True``: inputs are features)."""
        if self.encoder is None:
            raise RuntimeError("ProtoNet is not meta-trained yet: call meta_fit()")
        x, y = check_support(support_x, support_y, self.kind, device=self.device)
        z = x if encoded else self.encode(x)
        return ProtoNetPredictor(None if encoded else self.encoder, z, y, self.device)
