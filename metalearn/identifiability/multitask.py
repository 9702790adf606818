"""Stage 1: a multi-task regression network (shared encoder, one linear head per task).

With ``T`` regression tasks ``y_t = w_t^T f(x) + b_t + noise`` trained jointly by least squares,
the shared representation ``f(x)`` of a well-trained network is identified up to an invertible
linear map as soon as the tasks' optimal heads span the representation space (Chen, Horwood,
Heo & Hernandez-Lobato, "Leveraging Task Structures for Improved Identifiability in Neural
Network Representations", TMLR 2024, Sec. 3). The encoder is probrec's
:class:`~probrec.backbone.mlp.MLPEncoder`; labels come as one ``[N, T]`` matrix with NaN where a
row has no label for a task, so tasks may share inputs (DOCKSTRING) or not (synthetic tasks).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import Tensor, nn

from probrec.backbone.mlp import MLPEncoder
from probrec.checks import ArrayLike, as_float_tensor, check_positive_int
from probrec.progress import track
from probrec.seeding import child_seeds, seeded_rng, torch_generator

__all__ = ["MultiTaskRegressor", "MultiTaskFit", "fit_multitask"]


class MultiTaskRegressor(nn.Module):
    """Shared MLP encoder ``f: R^D -> R^k`` and ``T`` linear heads.

    Args:
        in_dim: input width ``D``.
        n_tasks: number of heads ``T``.
        rep_dim: representation width ``k``.
        hidden: hidden widths of the encoder.
        activation: encoder activation (see :data:`probrec.backbone.mlp.ACTIVATIONS`).
        dropout: encoder dropout.
        seed: seed of the initialisation.
    """

    def __init__(
        self,
        in_dim: int,
        n_tasks: int,
        rep_dim: int,
        *,
        hidden: Sequence[int] = (256, 256),
        activation: str = "leaky_relu",
        dropout: float = 0.0,
        seed: int | None = None,
    ) -> None:
        super().__init__()
        self.n_tasks = check_positive_int(n_tasks, "n_tasks")
        self.encoder = MLPEncoder(
            in_dim,
            hidden=hidden,
            out_dim=check_positive_int(rep_dim, "rep_dim"),
            activation=activation,
            dropout=dropout,
            seed=seed,
        )
        gen = torch_generator(None if seed is None else seed + 1)
        self.head_weight = nn.Parameter(torch.randn(n_tasks, rep_dim, generator=gen) / rep_dim**0.5)
        self.head_bias = nn.Parameter(torch.zeros(n_tasks))

    def represent(self, x: Tensor) -> Tensor:
        """``[..., D] -> [..., k]`` the shared representation ``f(x)``."""
        return self.encoder(x)

    def forward(self, x: Tensor) -> Tensor:
        """``[N, D] -> [N, T]`` predictions of every task's head."""
        return self.represent(x) @ self.head_weight.T + self.head_bias


@dataclass
class MultiTaskFit:
    """A trained stage-1 network and its training record.

    Attributes:
        model: the trained :class:`MultiTaskRegressor` (eval mode).
        y_mean, y_std: ``[T]`` label standardisation used in training (heads predict
            standardised labels).
        losses: mean training loss per epoch.
    """

    model: MultiTaskRegressor
    y_mean: Tensor
    y_std: Tensor
    losses: list[float] = field(default_factory=list)

    @torch.no_grad()
    def represent(self, x: ArrayLike, batch_size: int = 4096) -> Tensor:
        """``[N, D] -> [N, k]`` representations (no gradient, in batches of ``batch_size``)."""
        batch_size = check_positive_int(batch_size, "batch_size")  # 0: range() error
        p = next(self.model.parameters())
        xt = as_float_tensor(x, "x", ndim=2, dtype=p.dtype, device=p.device)
        return torch.cat(
            [self.model.represent(xt[i : i + batch_size]) for i in range(0, len(xt), batch_size)]
        )

    @torch.no_grad()
    def predict(self, x: ArrayLike) -> Tensor:
        """``[N, D] -> [N, T]`` predictions in the original label units."""
        p = next(self.model.parameters())
        xt = as_float_tensor(x, "x", ndim=2, dtype=p.dtype, device=p.device)
        return self.model(xt) * self.y_std + self.y_mean


def fit_multitask(
    x: ArrayLike,
    y: ArrayLike,
    rep_dim: int,
    *,
    hidden: Sequence[int] = (256, 256),
    activation: str = "leaky_relu",
    dropout: float = 0.0,
    epochs: int = 100,
    batch_size: int = 256,
    lr: float = 1e-3,
    weight_decay: float = 0.0,
    dtype: torch.dtype = torch.float32,
    device: torch.device | str | None = None,
    seed: int = 0,
    progress: bool | None = False,
) -> MultiTaskFit:
    """Trains a :class:`MultiTaskRegressor` by masked least squares (Adam, minibatches).

    The loss is the mean over tasks of each task's mean squared error on its labelled rows of
    the minibatch (labels standardised per task; tasks without a label in the minibatch count
    0), so every task weighs the same whatever its number of labels.

    Args:
        x: ``[N, D]`` inputs.
        y: ``[N, T]`` labels, NaN where missing (every task needs at least 2 labels).
        rep_dim: representation width ``k``.
        hidden, activation, dropout: encoder architecture.
        epochs, batch_size, lr, weight_decay: optimisation.
        dtype, device: of the model (default: ``x``'s device if a tensor, else CPU).
        seed: seed of the initialisation; the minibatch order and the dropout masks draw
            independent streams derived from it (:func:`probrec.seeding.child_seeds`).
        progress: show a progress bar over epochs.

    Returns:
        A :class:`MultiTaskFit`.

    Raises:
        ValueError: shapes disagree, a task has fewer than 2 labels, or ``x`` is not finite.
    """
    xt = as_float_tensor(x, "x", ndim=2, dtype=dtype, device=device)
    yt = as_float_tensor(y, "y", ndim=2, dtype=dtype, device=xt.device, allow_nonfinite=True)
    if yt.shape[0] != xt.shape[0]:
        raise ValueError(f"x has {xt.shape[0]} rows but y has {yt.shape[0]}")
    if torch.isinf(yt).any():
        raise ValueError("y contains inf; use NaN for missing labels")
    mask = ~torch.isnan(yt)
    counts = mask.sum(0)
    if bool((counts < 2).any()):
        bad = torch.nonzero(counts < 2).flatten().tolist()
        raise ValueError(f"tasks {bad[:10]} of y have fewer than 2 labels")
    check_positive_int(epochs, "epochs")
    check_positive_int(batch_size, "batch_size")
    w = mask.to(dtype)
    y0 = torch.where(mask, yt, torch.zeros((), dtype=dtype, device=xt.device))
    mean = y0.sum(0) / counts
    std = (((y0 - mean) * w) ** 2).sum(0).div(counts).sqrt().clamp_min(1e-12)
    ys = (y0 - mean) / std * w

    model = MultiTaskRegressor(
        xt.shape[1],
        yt.shape[1],
        rep_dim,
        hidden=hidden,
        activation=activation,
        dropout=dropout,
        seed=seed,
    ).to(device=xt.device, dtype=dtype)
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    # the minibatch order and the dropout masks draw their own streams: seeded with `seed`
    # itself, both repeated the Mersenne-Twister stream of the encoder's initialisation
    order_seed, dropout_seed = child_seeds(seed, 2)
    gen = torch_generator(order_seed)
    n = xt.shape[0]
    losses: list[float] = []
    model.train()
    # dropout masks come from torch's global generators: seeded here (and restored after), so
    # the same seed gives the same fit (they followed the global state, different per call)
    with seeded_rng(dropout_seed, xt.device):
        for _ in track(range(epochs), progress=progress, desc="stage 1", unit="epoch"):
            order = torch.randperm(n, generator=gen).to(xt.device)
            total, steps = 0.0, 0
            for i in range(0, n, batch_size):
                idx = order[i : i + batch_size]
                wb = w[idx]
                nb = wb.sum(0)
                pred = model(xt[idx])
                per_task = (((pred - ys[idx]) ** 2) * wb).sum(0) / nb.clamp_min(1.0)
                loss = per_task[nb > 0].sum() / yt.shape[1]
                opt.zero_grad()
                loss.backward()
                opt.step()
                total += float(loss.detach())
                steps += 1
            losses.append(total / steps)
    model.eval()
    return MultiTaskFit(model, mean, std, losses)
