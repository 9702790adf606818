"""Baseline annotator simulators (the comparisons of Wu, Chen, Zhang & Woodland, 2023).

* :class:`GaussianHead` -- ``N(mu(x), sigma(x)^2)`` over the rating, trained as a density on
  the integer labels (the original conditional-Gaussian approach); its label distribution is
  that of rounded samples with the tails folded into the end labels,
  ``Phi((c_k - mu) / sigma) - Phi((c_{k-1} - mu) / sigma)``.
* :class:`OrdinalLogisticHead` -- cumulative link (proportional odds, McCullagh 1980):
  ``P(y <= k | x) = sigmoid(theta_k - eta(x))`` with learned increasing thresholds.
* :class:`SoftmaxHead` -- a categorical distribution trained by cross-entropy on all
  individual annotations (soft labels).
* :class:`MCDropoutHead` -- the softmax head with dropout kept on at prediction, averaging
  ``T`` stochastic passes (Gal & Ghahramani, ICML 2016).
* :class:`DeepEnsemble` -- ``M`` softmax heads from different initialisations, probabilities
  averaged (Lakshminarayanan, Pritzel & Blundell, NeurIPS 2017); the members are trained
  together as one vectorised network (shared mini-batches, separate dropout masks), each
  with its own early stopping.

In :class:`DeepEnsemble` the member is uncertainty about ``p(y | x)``, shared by every
annotator of an item (as in :class:`probrec.flows.ModelEnsemble`): one annotation follows the
averaged distribution, a simulated panel draws one member per item, and the per-item spread
is the members' average standard deviation -- their disagreement does not widen a panel's
spread. (:class:`MCDropoutHead` keeps the averaged distribution for everything.)
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from probrec.backbone import ACTIVATIONS, MLPEncoder, hidden_widths
from probrec.checks import check_choice, check_positive_int, check_real
from probrec.flows.base import (
    DEFAULT_DROPOUT,
    DEFAULT_HIDDEN,
    AnnotatorModel,
    MemberPanels,
    _categorical,
    panel_moments,
)
from probrec.flows.discrete import interval_log_mass

__all__ = ["DeepEnsemble", "GaussianHead", "MCDropoutHead", "OrdinalLogisticHead", "SoftmaxHead"]


def _cut_points(labels: Sequence[int], dtype: torch.dtype) -> Tensor:
    v = torch.tensor(labels, dtype=torch.float64)
    return ((v[1:] + v[:-1]) / 2).to(dtype)


def _folded_intervals(t: Tensor) -> tuple[Tensor, Tensor]:
    """``[B, K-1]`` increasing cut images -> lower / upper ends ``[B, K]`` with infinite tails."""
    inf = torch.full_like(t[:, :1], math.inf)
    return torch.cat([-inf, t], 1), torch.cat([t, inf], 1)


class _EncodedHead(AnnotatorModel):
    """An :class:`~probrec.backbone.MLPEncoder` followed by a linear head of ``n_out`` units."""

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int],
        n_out: int,
        *,
        hidden: Sequence[int],
        dropout: float,
        seed: int,
    ) -> None:
        super().__init__(in_dim, labels, seed=seed)
        self._remember(hidden=hidden_widths(hidden), dropout=dropout)
        gen = torch.Generator().manual_seed(self.seed)
        self.encoder = MLPEncoder(in_dim, hidden, dropout=dropout, seed=gen)
        self.head = nn.Linear(self.encoder.out_dim, n_out)
        with torch.no_grad():
            b = self.encoder.out_dim**-0.5
            self.head.weight.uniform_(-b, b, generator=gen)
            self.head.bias.zero_()

    def _out(self, z: Tensor) -> Tensor:
        return self.head(self.encoder(z))

    def _train_loss(self, z: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
        return -(counts * self._label_log_probs(z, generator, None)).sum(-1)


class GaussianHead(_EncodedHead):
    """Conditional Gaussian over the rating, discretised to the label set.

    Args:
        in_dim: feature width.
        labels: ordered integer labels.
        hidden: encoder widths.
        dropout: encoder dropout.
        objective: ``"density"`` (default; the original approach: maximise the Gaussian
            density at the integer labels, then round) or ``"discretised"`` (maximise the
            discretised probabilities directly).
        seed: initialisation seed.
    """

    kind = "ordinal"

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int] = (1, 2, 3, 4, 5),
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        objective: str = "density",
        seed: int = 0,
    ) -> None:
        super().__init__(in_dim, labels, 2, hidden=hidden, dropout=dropout, seed=seed)
        self.objective = check_choice(objective, "objective", ("density", "discretised"))
        self._remember(objective=objective)
        v = self.values
        with torch.no_grad():  # start at the middle of the scale with a unit-ish spread
            self.head.bias[0] = float((v[0] + v[-1]) / 2)
            self.head.bias[1] = math.log(max(float(v[-1] - v[0]) / 4, 0.5))
        self.register_buffer("cuts", _cut_points(self.labels, self.dtype))

    def mean_std(self, z: Tensor) -> tuple[Tensor, Tensor]:
        """``mu(x)``, ``sigma(x)`` ``[B]`` for standardised features ``z``."""
        out = self._out(z)
        return out[:, 0], F.softplus(out[:, 1]) + 1e-3

    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        mu, sigma = self.mean_std(z)
        t = (self.cuts[None, :] - mu[:, None]) / sigma[:, None]
        return interval_log_mass(*_folded_intervals(t), "normal")

    def _train_loss(self, z: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
        if self.objective == "discretised":
            return super()._train_loss(z, counts, generator)
        mu, sigma = self.mean_std(z)
        # no argument validation: sigma > 0 by construction, and each check is a device sync
        normal = torch.distributions.Normal(mu[:, None], sigma[:, None], validate_args=False)
        logpdf = normal.log_prob(self.values)
        return -(counts * logpdf).sum(-1)


class OrdinalLogisticHead(_EncodedHead):
    """Cumulative-link (ordinal logistic) head: ``P(y <= k) = sigmoid(theta_k - eta(x))``.

    Args:
        in_dim: feature width.
        labels: ordered integer labels.
        hidden: encoder widths.
        dropout: encoder dropout.
        seed: initialisation seed.
    """

    kind = "ordinal"

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int] = (1, 2, 3, 4, 5),
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        seed: int = 0,
    ) -> None:
        super().__init__(in_dim, labels, 1, hidden=hidden, dropout=dropout, seed=seed)
        k = self.n_labels
        self.theta0 = nn.Parameter(torch.tensor(-(k - 2) / 2.0))
        self.log_gaps = nn.Parameter(torch.zeros(k - 2))  # gaps of 1 at the start

    def thresholds(self) -> Tensor:
        """The ``K - 1`` increasing thresholds ``theta``."""
        gaps = F.softplus(self.log_gaps + math.log(math.expm1(1.0)))
        return torch.cat([self.theta0.reshape(1), self.theta0 + torch.cumsum(gaps, 0)])

    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        eta = self._out(z)  # [B, 1]
        t = self.thresholds()[None, :] - eta
        return interval_log_mass(*_folded_intervals(t), "logistic")


class SoftmaxHead(_EncodedHead):
    """Categorical head trained by cross-entropy on every individual annotation.

    Args:
        in_dim: feature width.
        labels: the label set.
        hidden: encoder widths.
        dropout: encoder dropout.
        seed: initialisation seed.
    """

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int] = (0, 1),
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        seed: int = 0,
    ) -> None:
        super().__init__(
            in_dim, labels, len(list(labels)), hidden=hidden, dropout=dropout, seed=seed
        )

    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        return torch.log_softmax(self._out(z), -1)


class MCDropoutHead(SoftmaxHead):
    """Softmax head with Monte Carlo dropout at prediction (Gal & Ghahramani, ICML 2016).

    ``p(y | x) = (1/T) sum_t softmax(f(x; dropout mask t))``; mask ``t`` is shared by every
    item (one sampled sub-network per pass) and drawn from the seed passed to
    :meth:`label_log_probs`, so an item's prediction is reproducible and does not depend on
    the batch it is scored in.

    Args:
        in_dim: feature width.
        labels: the label set.
        hidden: encoder widths.
        dropout: dropout probability, used in training and prediction (> 0).
        mc_samples: stochastic passes ``T`` at prediction.
        seed: initialisation seed.
    """

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int] = (0, 1),
        *,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        mc_samples: int = 50,
        seed: int = 0,
    ) -> None:
        if not 0 < check_real(dropout, "dropout") < 1:  # a str: a bare TypeError
            raise ValueError(f"MC dropout needs 0 < dropout < 1, got {dropout}")
        super().__init__(in_dim, labels, hidden=hidden, dropout=dropout, seed=seed)
        self.mc_samples = check_positive_int(mc_samples, "mc_samples")
        self._remember(mc_samples=mc_samples)

    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        if self.training:  # training: one stochastic pass, as for the plain head
            return super()._label_log_probs(z, generator, n_samples)
        t = n_samples or self.mc_samples
        with _shared_dropout_masks(self.encoder, t, generator):
            logp = torch.log_softmax(self._out(z.repeat(t, 1)), -1).reshape(t, z.shape[0], -1)
        return torch.logsumexp(logp, 0) - math.log(t)


@contextlib.contextmanager
def _shared_dropout_masks(
    encoder: nn.Module, passes: int, generator: torch.Generator
) -> Iterator[None]:
    """Inside the block, ``encoder``'s dropout layers (in eval mode, where they pass inputs
    through) drop with one mask per stochastic pass, shared by every item: an input of
    ``[passes * B, h]`` rows (the ``B`` items repeated ``passes`` times) is multiplied by
    ``[passes, 1, h]`` masks drawn from ``generator``.

    Each pass is then one sampled sub-network applied to all items (Gal & Ghahramani's
    reading of MC dropout), and an item's prediction depends on the seed alone, not on the
    batch it is in or its position there (per-row masks did).
    """

    def hook(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> Tensor:
        x = inputs[0]
        shape = (passes, 1, x.shape[-1])
        keep = torch.rand(shape, generator=generator, device=x.device, dtype=x.dtype) >= module.p
        scaled = keep.to(x.dtype) / (1.0 - module.p)
        return (x.reshape(passes, -1, x.shape[-1]) * scaled).reshape(x.shape)

    handles = [
        m.register_forward_hook(hook)
        for m in encoder.modules()
        if isinstance(m, nn.Dropout) and m.p > 0
    ]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


class _EnsembleLinear(nn.Module):
    """``M`` independent linear layers applied at once: ``[M, B, in] -> [M, B, out]``."""

    def __init__(self, members: int, n_in: int, n_out: int, generator: torch.Generator) -> None:
        super().__init__()
        b = n_in**-0.5  # the init distribution of nn.Linear, per member
        self.weight = nn.Parameter(
            torch.empty(members, n_in, n_out).uniform_(-b, b, generator=generator)
        )
        self.bias = nn.Parameter(
            torch.empty(members, 1, n_out).uniform_(-b, b, generator=generator)
        )

    def forward(self, x: Tensor) -> Tensor:
        return torch.baddbmm(self.bias, x, self.weight)


class DeepEnsemble(MemberPanels, AnnotatorModel):
    """``M`` softmax heads, probabilities averaged (Lakshminarayanan et al., NeurIPS 2017).

    The members are one vectorised network (weights ``[M, ...]``): each has its own
    initialisation and dropout masks, they share mini-batches, and each keeps the weights of
    its own best validation epoch (training stops when every member has run out of patience).

    Args:
        in_dim: feature width.
        labels: the label set.
        members: ensemble size ``M``.
        hidden: hidden widths of each member.
        dropout: dropout of each member.
        activation: hidden activation (:data:`probrec.backbone.ACTIVATIONS`).
        seed: initialisation seed.
    """

    def __init__(
        self,
        in_dim: int,
        labels: Sequence[int] = (0, 1),
        *,
        members: int = 5,
        hidden: Sequence[int] = DEFAULT_HIDDEN,
        dropout: float = DEFAULT_DROPOUT,
        activation: str = "relu",
        seed: int = 0,
    ) -> None:
        super().__init__(in_dim, labels, seed=seed)
        self.members = check_positive_int(members, "members")
        if not check_real(dropout, "dropout") < 1:  # a str: a bare TypeError
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        check_choice(activation, "activation", tuple(ACTIVATIONS))
        self._remember(
            members=members, hidden=hidden_widths(hidden), dropout=dropout, activation=activation
        )
        gen = torch.Generator().manual_seed(self.seed)
        widths = [in_dim, *hidden]
        layers: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:]):
            layers += [_EnsembleLinear(self.members, a, b, gen), ACTIVATIONS[activation]()]
            if dropout > 0:
                layers.append(nn.Dropout(dropout))
        layers.append(_EnsembleLinear(self.members, widths[-1], self.n_labels, gen))
        self.net = nn.Sequential(*layers)

    def member_log_probs(self, z: Tensor) -> Tensor:
        """``[M, B, K]`` log-probabilities of each member."""
        return torch.log_softmax(self.net(z.expand(self.members, *z.shape)), -1)

    def _label_log_probs(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        return torch.logsumexp(self.member_log_probs(z), 0) - math.log(self.members)

    def _train_loss(self, z: Tensor, counts: Tensor, generator: torch.Generator) -> Tensor:
        return -(counts * self.member_log_probs(z)).sum(-1)  # [M, B]

    def _item_moments(
        self, z: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> tuple[Tensor, Tensor]:
        return panel_moments(self.member_log_probs(z).exp(), self.values)

    def _sample(self, z: Tensor, n: int, generator: torch.Generator) -> Tensor:
        # one member per item: a simulated panel answers under one member
        probs = self.member_log_probs(z).exp()  # [M, B, K]
        pick = torch.randint(
            0, self.members, (z.shape[0],), generator=generator, device=generator.device
        ).to(z.device)
        return _categorical(probs[pick, torch.arange(z.shape[0], device=z.device)], n, generator)

    def _member_panel_log_liks(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, n_samples: int | None
    ) -> Tensor:
        return (counts * self.member_log_probs(z)).sum(-1)  # [M, B]

    def _valid_scores(
        self, z: Tensor, counts: Tensor, generator: torch.Generator, metric: str = "panel"
    ) -> Tensor:
        # each member's annotators are independent: panel and per-annotation scores coincide
        return -(counts * self.member_log_probs(z)).sum((-1, -2)) / counts.sum()

    def _snapshot(self, best: dict[str, Tensor] | None, improved: Tensor) -> dict[str, Tensor]:
        state = self.state_dict()
        if best is None or bool(improved.all()):
            return {k: v.detach().clone() for k, v in state.items()}
        keep = improved.to(self.device).expand(self.members)  # [1] without a valid set
        for k, v in state.items():
            if k.startswith("net.") and v.shape[:1] == (self.members,):
                best[k][keep] = v.detach()[keep]
        return best
