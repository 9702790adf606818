"""Prototypical networks for few-shot binary classification.

The encoder is meta-learned so that each query point is classified by the softmax over
negative squared distances to the class prototypes (means of the encoded support points of
each class): Snell, Swersky & Zemel, "Prototypical Networks for Few-shot Learning", NeurIPS
2017. ``distance="euclidean"`` is their squared Euclidean distance; ``distance="mahalanobis"``
the FS-Mol ProtoNet baseline's (Stanley et al., NeurIPS 2021 Datasets), after Simple CNAPS
(Bateni et al., CVPR 2020): each class's squared Mahalanobis distance under a regularised
covariance ``0.1 S_class + 0.9 S_task + 0.1 I`` of the support features (``S`` the unbiased
sample covariances of the class's and of all support points; FS-Mol's settings).
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F

from metalearn.base import check_support
from metalearn.deep_kernel import _DeepKernelBase, query_features
from metalearn.episodes import MetaBatch
from probrec.checks import check_choice

#: weight of a class's own covariance against the whole support set's (FS-Mol's
#: ``min(n_k / (n_k + 1), 0.1)``, which is 0.1 for any class with a support point)
CLASS_COVARIANCE_WEIGHT = 0.1
#: ridge added to the mixed covariance (FS-Mol's setting)
COVARIANCE_RIDGE = 0.1
DISTANCES = ("euclidean", "mahalanobis")


def _covariance(z: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
    """``[B, d, d]`` unbiased sample covariance of the rows of ``z`` ``[B, n, d]`` with
    0/1 weights ``w`` ``[B, n]`` (zero for a single row)."""
    n = w.sum(-1)[:, None, None]
    mean = (w[..., None] * z).sum(-2, keepdim=True) / n
    c = (z - mean) * w[..., None]
    return c.transpose(-1, -2) @ c / (n - 1).clamp_min(1)


def _logits(
    z_s: torch.Tensor, y_s: torch.Tensor, z_q: torch.Tensor, distance: str = "euclidean"
) -> torch.Tensor:
    """``[B, m, 2]`` logits: minus squared distances of the queries ``z_q`` ``[B, m, d]`` to
    the negative and positive prototypes of the support ``z_s`` ``[B, n, d]``, ``y_s``
    ``[B, n]`` in {0, 1}."""
    masks = torch.stack([1 - y_s, y_s], 1)  # [B, 2, n]
    protos = (masks[..., None] * z_s[:, None]).sum(-2) / masks.sum(-1)[..., None]  # [B, 2, d]
    if distance == "euclidean":
        return -torch.cdist(z_q, protos).pow(2)
    b, n, d = z_s.shape
    task = _covariance(z_s, torch.ones_like(y_s))  # [B, d, d]
    cls = _covariance(z_s[:, None].expand(b, 2, n, d).reshape(2 * b, n, d), masks.reshape(2 * b, n))
    cov = (
        CLASS_COVARIANCE_WEIGHT * cls.reshape(b, 2, d, d)
        + (1 - CLASS_COVARIANCE_WEIGHT) * task[:, None]
    )
    cov = cov + COVARIANCE_RIDGE * torch.eye(d, dtype=z_s.dtype, device=z_s.device)
    chol = torch.linalg.cholesky(cov)  # [B, 2, d, d]
    diff = (z_q[:, None] - protos[:, :, None]).transpose(-1, -2)  # [B, 2, d, m]
    white = torch.linalg.solve_triangular(chol, diff, upper=False)
    return -white.pow(2).sum(-2).transpose(-1, -2)  # [B, m, 2]


class ProtoNetPredictor:
    """Prototypes of one task; ``predict_proba`` is the softmax over prototype distances.

    ``encoder`` is ``None`` when the inputs are already encoded features.
    """

    def __init__(
        self,
        encoder: torch.nn.Module | None,
        z_s: torch.Tensor,
        y_s: torch.Tensor,
        device,
        distance: str = "euclidean",
    ):
        self.encoder, self.z_s, self.y_s, self.device = encoder, z_s, y_s, device
        self.distance = distance

    def predict_proba(self, x: Any) -> torch.Tensor:
        """``P(y = 1)``, ``[m]``."""
        z = query_features(self.encoder, x, self.z_s, self.device)
        with torch.no_grad():
            logits = _logits(self.z_s[None], self.y_s[None], z[None], self.distance)[0]
            return torch.softmax(logits, -1)[:, 1]

    def predict(self, x: Any) -> tuple[torch.Tensor, torch.Tensor]:
        """Bernoulli mean and variance ``(p, p (1 - p))``."""
        p = self.predict_proba(x)
        return p, p * (1 - p)


class ProtoNet(_DeepKernelBase):
    """Prototypical network on the shared MLP encoder (classification only).

    Meta-training minimises the query cross-entropy of the prototype classifier, with the
    same episodic loop, optimiser and model selection as the GP meta-learners. Config key
    ``distance``: ``"euclidean"`` (default; Snell et al.) or ``"mahalanobis"`` (FS-Mol's
    ProtoNet; see the module docstring).
    """

    name = "ProtoNet"
    supports = ("classification",)
    defaults = {**_DeepKernelBase.defaults, "distance": "euclidean"}
    options = _DeepKernelBase.options | {"distance"}

    def __init__(self, kind: str = "classification", seed: int = 0, device=None, **config: Any):
        super().__init__(kind, seed, device, **config)
        check_choice(self.config["distance"], "distance", DISTANCES)

    def episode_loss(self, batch: MetaBatch) -> torch.Tensor:
        """Sum over tasks of the mean query cross-entropy."""
        b, n_s, d = batch.support_x.shape
        if self.config["norm"] == "batch":  # batch statistics of the real rows, not padding
            z_s, z_q = self._encode_real_rows(batch)
        else:
            flat = torch.cat([batch.support_x.reshape(-1, d), batch.query_x.reshape(-1, d)])
            z = self.encoder(flat)
            z_s = z[: b * n_s].reshape(b, n_s, -1)
            z_q = z[b * n_s :].reshape(b, batch.query_x.shape[1], -1)
        logits = _logits(z_s, batch.support_y.to(z_s.dtype), z_q, self.config["distance"])
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
        return ProtoNetPredictor(
            None if encoded else self.encoder, z, y, self.device, self.config["distance"]
        )
