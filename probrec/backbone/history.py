"""History encoder: a padded sequence of stored embeddings with a mask -> one vector.

In LoopFM-style transfer (Meta, 2026) a vertical model consumes a user's history of frozen
foundation-model embeddings (one per past event) as input features. :func:`build_history_batch`
turns per-row lists of keys into a padded batch read from an
:class:`~probrec.backbone.store.EmbeddingStore`; :class:`HistoryEncoder` pools such a batch
into one vector per row, by a masked mean or by attention with learned queries (one or
several heads), optionally informed by each event's recency.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from probrec.backbone.store import EmbeddingStore, MissingKeyError, canonical_key
from probrec.checks import (
    as_bool_mask,
    check_bool,
    check_choice,
    check_positive_int,
    check_real,
)
from probrec.seeding import torch_generator

__all__ = ["HistoryBatch", "HistoryEncoder", "build_history_batch", "recency_rank"]


class HistoryBatch(NamedTuple):
    """A padded batch of histories.

    Attributes:
        values: ``[B, L, d]`` embeddings; padded positions are zero.
        mask: ``[B, L]`` bool, ``True`` at real events (left-aligned, oldest first).
    """

    values: Tensor
    mask: Tensor


def build_history_batch(
    store: EmbeddingStore,
    histories: Sequence[Sequence[Any]],
    *,
    max_len: int | None = None,
    missing: str = "error",
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
) -> HistoryBatch:
    """Reads per-row key lists from ``store`` into a padded batch (one batched lookup).

    Each history is taken in the order given (oldest first); with ``max_len`` only the
    ``max_len`` most recent events are kept.

    Args:
        store: where the embeddings are.
        histories: ``B`` sequences of keys (may be empty), or a ``[B, L]`` integer array;
            a history whose keys are tuples of ``m`` integers may be an integer array
            ``[L_b, m]`` (one row per event; if every history is such an array the keys are
            looked up by the store's vectorised search).
        max_len: keep at most this many events per row (the last ones).
        missing: ``"error"`` (raise :class:`~probrec.backbone.store.MissingKeyError`),
            ``"skip"`` (drop unknown keys before truncation) or ``"zeros"`` (keep them as
            valid events with zero vectors).
        device: device of the result (default CPU).
        dtype: dtype of ``values`` (default: the store's dtype).

    Returns:
        :class:`HistoryBatch` with ``L = max(1, longest kept history)``.
    """
    check_choice(missing, "missing", ("error", "skip", "zeros"))
    if max_len is not None:
        max_len = check_positive_int(max_len, "max_len")
    if isinstance(histories, (np.ndarray, Tensor)) and histories.ndim == 2:
        histories = list(histories)  # [B, L] ids: one row per history
    if isinstance(histories, (str, bytes)) or not isinstance(histories, Sequence):
        raise TypeError("histories must be a sequence of key sequences or a [B, L] array")
    rows: list[Any] = []
    for b, h in enumerate(histories):
        if isinstance(h, (str, bytes)):
            raise TypeError(f"histories[{b}] must be a sequence of keys, got a string")
        if isinstance(h, Tensor):
            h = h.detach().cpu().numpy()
        rows.append(h if isinstance(h, np.ndarray) else list(h))
    flat: Any
    if rows and all(
        isinstance(h, np.ndarray)
        and h.dtype.kind == "i"
        and h.ndim in (1, 2)
        and h.shape[1:] == rows[0].shape[1:]
        for h in rows
    ):
        # integer ids [n] or integer tuple keys [n, m]: vectorised lookups
        flat = np.concatenate(rows).astype(np.int64)
    else:
        flat = [k for h in rows for k in (h.tolist() if isinstance(h, np.ndarray) else h)]
    lengths = np.fromiter((len(h) for h in rows), dtype=np.int64, count=len(rows))
    row_of = np.repeat(np.arange(len(rows)), lengths)
    try:
        key_rows = store.rows(flat) if len(flat) else np.zeros(0, dtype=np.int64)
    except TypeError:  # name the history and position of the bad key (it said "keys[i]")
        for i in range(len(flat)):
            b = int(row_of[i])
            canonical_key(_raw_key(flat, i), f"histories[{b}][{i - int(lengths[:b].sum())}]")
        raise
    found = key_rows >= 0
    if missing == "error" and not found.all():
        pos = np.flatnonzero(~found)
        first = int(pos[0])
        start = int(lengths[: row_of[first]].sum())
        missing_keys = [_key_at(flat, i) for i in pos]
        raise MissingKeyError(
            f"{len(pos)} history key(s) not in the store, e.g. histories[{row_of[first]}]"
            f"[{first - start}] = {missing_keys[0]!r}; pass missing='skip' or 'zeros'",
            missing_keys,
            pos.tolist(),
        )
    keep = found if missing == "skip" else np.ones(len(flat), dtype=bool)
    # position of each kept event counted from the end of its row (0 = most recent)
    kept_per_row = np.bincount(row_of[keep], minlength=len(rows))
    rank_from_end = np.zeros(len(flat), dtype=np.int64)
    if keep.any():
        csum = np.cumsum(keep[::-1])[::-1]  # kept events at or after i, over the whole list
        ends = np.cumsum(lengths)  # exclusive end index of each row
        after_row = np.zeros(len(rows), dtype=np.int64)
        nonempty = ends < len(flat)
        after_row[nonempty] = csum[ends[nonempty]]
        rank_from_end = csum - after_row[row_of] - 1
    if max_len is not None:
        keep = keep & (rank_from_end < max_len)
    n_kept = np.minimum(kept_per_row, max_len) if max_len is not None else kept_per_row
    length = int(max(1, n_kept.max(initial=0)))
    pos_in_row = n_kept[row_of] - 1 - rank_from_end  # left-aligned, oldest first
    idx = np.flatnonzero(keep)
    emb = torch.from_numpy(store.take_rows(key_rows[idx]))
    if dtype is not None:
        emb = emb.to(dtype)
    out_dtype = emb.dtype
    values = torch.zeros(len(rows), length, store.dim, dtype=out_dtype)
    mask = torch.zeros(len(rows), length, dtype=torch.bool)
    r = torch.from_numpy(row_of[idx])
    p = torch.from_numpy(pos_in_row[idx])
    values[r, p] = emb
    mask[r, p] = True
    dev = device if device is not None else "cpu"
    return HistoryBatch(values.to(dev), mask.to(dev))


def _raw_key(flat: Any, i: int) -> Any:
    """The key at position ``i`` of a flat key list or key array, as given."""
    key = flat[i]
    return key.tolist() if isinstance(key, np.ndarray) else key


def _key_at(flat: Any, i: int) -> Any:
    """The canonical key at position ``i`` of a flat key list or key array ``[n]`` / ``[n, m]``."""
    key = flat[i]
    return canonical_key(key.tolist() if isinstance(key, np.ndarray) else key)


def recency_rank(mask: Tensor) -> Tensor:
    """Recency rank of each position: 0 for the last valid event of a row, 1 for the one
    before, ...; computed from the mask alone, so it works for left- or right-padding.

    Args:
        mask: ``[B, L]`` bool.

    Returns:
        ``[B, L]`` int64 (values at padded positions are meaningless).
    """
    m = mask.to(torch.int64)
    return torch.flip(torch.cumsum(torch.flip(m, dims=[-1]), dim=-1), dims=[-1]) - 1


def _check_mask(mask: Tensor, shape: tuple[int, int]) -> Tensor:
    if not isinstance(mask, Tensor):
        raise TypeError(f"mask must be a tensor, got {type(mask).__name__}")
    if tuple(mask.shape) != shape:
        raise ValueError(
            f"mask must have shape {list(shape)} (values.shape[:2]), got {tuple(mask.shape)}"
        )
    return as_bool_mask(mask)


class HistoryEncoder(nn.Module):
    r"""Pools a padded history ``[B, L, d]`` with a mask ``[B, L]`` into ``[B, out_dim]``.

    * ``pooling="mean"``: masked mean :math:`\sum_l m_l x_l / \sum_l m_l`, followed by a linear
      map if ``out_dim != dim``.
    * ``pooling="attention"``: attention with a learned query per head (as in pooling by
      multi-head attention, Lee et al., ICML 2019). Keys :math:`k_l = W_k (x_l + p_{r_l})`
      and values :math:`v_l = W_v x_l` are split into ``num_heads`` heads of width
      ``dim / num_heads``; head ``h`` scores :math:`s_{hl} = q_h^\top k_{hl} / \sqrt{d_h}
      - \gamma_h \log(1 + a_l)`, softmax over valid positions, and the heads' weighted values
      are concatenated and mapped by :math:`W_o` to ``out_dim``. :math:`p_r` is an optional
      learned embedding of the recency rank :math:`r_l` (0 = most recent valid event);
      :math:`\gamma_h = \mathrm{softplus}(\cdot) \ge 0` an optional learned recency decay per
      head, applied to event ages :math:`a_l` (passed to :meth:`forward`, e.g. days since the
      event) or, without ages, to the recency rank.

    Padded positions never influence the output (their values are zeroed before any
    arithmetic, so even NaN padding is harmless). Rows without any valid event get the
    ``empty`` vector: learned (initialised at zero) or fixed zeros.

    Args:
        dim: input width ``d``.
        pooling: ``"mean"`` or ``"attention"``.
        out_dim: output width (default ``dim``).
        num_heads: attention heads; must divide ``dim``.
        max_positions: size of the learned recency-rank embedding table (attention only);
            ranks beyond it share the last entry. ``None`` disables it.
        recency_bias: learn a per-head decay of attention with age (attention only).
        empty: ``"learned"`` or ``"zeros"``: output for rows without valid events.
        dropout: dropout on the attention weights.
        seed: seed (or ``torch.Generator``) of the initialisation.

    Raises:
        TypeError: ``recency_bias`` is not a bool.
    """

    def __init__(
        self,
        dim: int,
        pooling: str = "mean",
        *,
        out_dim: int | None = None,
        num_heads: int = 1,
        max_positions: int | None = None,
        recency_bias: bool = False,
        empty: str = "learned",
        dropout: float = 0.0,
        seed: int | torch.Generator | None = None,
    ) -> None:
        super().__init__()
        self.dim = check_positive_int(dim, "dim")
        self.pooling = check_choice(pooling, "pooling", ("mean", "attention"))
        self.out_dim = self.dim if out_dim is None else check_positive_int(out_dim, "out_dim")
        self.num_heads = check_positive_int(num_heads, "num_heads")
        if self.dim % self.num_heads:
            raise ValueError(f"num_heads = {num_heads} must divide dim = {dim}")
        check_choice(empty, "empty", ("learned", "zeros"))
        if not check_real(dropout, "dropout") < 1.0:  # a str failed in float() unnamed
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        recency_bias = check_bool(recency_bias, "recency_bias")  # bool("no") was True
        if self.pooling == "mean" and (max_positions is not None or recency_bias or num_heads != 1):
            raise ValueError(
                "num_heads, max_positions and recency_bias apply to pooling='attention' only"
            )
        self.recency_bias = recency_bias
        self.max_positions = (
            None if max_positions is None else check_positive_int(max_positions, "max_positions")
        )
        gen = torch_generator(seed) if seed is not None else None
        d, h = self.dim, self.num_heads
        self.head_dim = d // h

        def linear(n_in: int, n_out: int) -> nn.Linear:
            lin = nn.Linear(n_in, n_out)
            bound = n_in**-0.5
            with torch.no_grad():
                lin.weight.uniform_(-bound, bound, generator=gen)
                lin.bias.uniform_(-bound, bound, generator=gen)
            return lin

        if self.pooling == "attention":
            self.key = linear(d, d)
            self.value = linear(d, d)
            self.out = linear(d, self.out_dim)
            self.query = nn.Parameter(torch.randn(h, self.head_dim, generator=gen))
            self.position = None
            if self.max_positions is not None:
                self.position = nn.Parameter(
                    0.02 * torch.randn(self.max_positions, d, generator=gen)
                )
            if self.recency_bias:
                # softplus(raw) = 0.1 at start: a mild preference for recent events
                self.decay_raw = nn.Parameter(torch.full((h,), math.log(math.expm1(0.1))))
            self.attn_dropout = nn.Dropout(float(dropout))
        else:
            self.out = linear(d, self.out_dim) if self.out_dim != d else nn.Identity()
        if empty == "learned":
            self.empty = nn.Parameter(torch.zeros(self.out_dim))
        else:
            self.register_buffer("empty", torch.zeros(self.out_dim))

    def forward(
        self,
        values: Tensor,
        mask: Tensor,
        ages: Tensor | None = None,
        *,
        return_weights: bool = False,
    ) -> Tensor | tuple[Tensor, Tensor]:
        """Pools histories.

        Args:
            values: ``[B, L, dim]`` embeddings (padded positions arbitrary).
            mask: ``[B, L]`` bool, ``True`` at valid events.
            ages: optional ``[B, L]`` non-negative ages of the events (for ``recency_bias``);
                without them the recency rank is used.
            return_weights: also return the attention weights ``[B, heads, L]`` (zeros at
                padded positions and for empty rows; uniform ``1/count`` for mean pooling).

        Returns:
            ``[B, out_dim]`` pooled vectors (and the weights if asked).
        """
        if not isinstance(values, Tensor) or values.dim() != 3 or values.shape[-1] != self.dim:
            shape = tuple(values.shape) if isinstance(values, Tensor) else type(values).__name__
            raise ValueError(f"values must have shape [B, L, {self.dim}], got {shape}")
        b, n, d = values.shape
        mask = _check_mask(mask, (b, n)).to(values.device)
        x = values.masked_fill(~mask.unsqueeze(-1), 0.0)
        count = mask.sum(-1)
        has_any = count > 0
        if self.pooling == "mean":
            weights = mask.to(x.dtype) / count.clamp_min(1).unsqueeze(-1).to(x.dtype)
            pooled = self.out(torch.einsum("bl,bld->bd", weights, x))
            weights = weights.unsqueeze(1)
        else:
            pooled, weights = self._attend(x, mask, ages)
        out = torch.where(has_any.unsqueeze(-1), pooled, self.empty.to(pooled.dtype))
        return (out, weights) if return_weights else out

    def _attend(self, x: Tensor, mask: Tensor, ages: Tensor | None) -> tuple[Tensor, Tensor]:
        b, n, d = x.shape
        h, dh = self.num_heads, self.head_dim
        rank = recency_rank(mask).clamp_min(0)
        k_in = x
        if self.position is not None:
            pos = self.position[rank.clamp_max(self.max_positions - 1)]
            k_in = x + pos.masked_fill(~mask.unsqueeze(-1), 0.0)
        k = self.key(k_in).view(b, n, h, dh)
        v = self.value(x).view(b, n, h, dh)
        scores = torch.einsum("blhe,he->bhl", k, self.query.to(k.dtype)) / math.sqrt(dh)
        if self.recency_bias:
            if ages is None:
                age = rank.to(x.dtype)
            else:
                if not isinstance(ages, Tensor) or tuple(ages.shape) != (b, n):
                    got = tuple(ages.shape) if isinstance(ages, Tensor) else type(ages).__name__
                    raise ValueError(f"ages must have shape [{b}, {n}], got {got}")
                age = ages.to(device=x.device, dtype=x.dtype).masked_fill(~mask, 0.0)
                if not bool(torch.isfinite(age).all()) or bool((age < 0).any()):
                    raise ValueError("ages must be finite and non-negative at valid positions")
            decay = F.softplus(self.decay_raw).to(x.dtype)
            scores = scores - decay.view(1, h, 1) * torch.log1p(age).unsqueeze(1)
        elif ages is not None:
            raise ValueError("ages are only used with recency_bias=True")
        valid = mask.unsqueeze(1)
        scores = scores.masked_fill(~valid, torch.finfo(scores.dtype).min)
        weights = torch.softmax(scores, dim=-1) * valid  # exact zeros at padding / empty rows
        weights = self.attn_dropout(weights)
        pooled = torch.einsum("bhl,blhe->bhe", weights, v).reshape(b, d)
        return self.out(pooled), weights
