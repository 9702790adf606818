"""Foundation model (FM) and vertical model (VM) for click-through prediction.

Both are DLRMs (Naumov et al., "Deep Learning Recommendation Model for Personalization and
Recommendation Systems", 2019): every sparse feature becomes an embedding vector, the
interaction layer takes all pairwise dot products of those vectors, and a top MLP maps the dot
products and the concatenated vectors to a logit.

* :class:`FoundationModel` -- large and strong: full id tables for the users and items of its
  training period, every side field, the genre block, dense history statistics and a sequence
  encoder over the user's recent events (item embedding + the event's label, attention pooling
  with recency ranks, :class:`~probrec.backbone.history.HistoryEncoder`), plus masked means of
  the liked and the disliked items, and the item's recent events (user embedding + label,
  masked mean). Its *event embedding* ``[B, embed_dim]`` is what LoopFM
  stores: by default the concatenation of three intermediate representations -- the item
  embedding, the sequence encoder's output and the last hidden layer of the top MLP
  (``stored="item+sequence+hidden"``); ``stored="hidden"`` keeps the last hidden layer only.
* :class:`VerticalModel` -- small: hashed id embeddings (the hashing trick, Weinberger et al.
  2009; Chen et al., "Compressing Neural Networks with the Hashing Trick", ICML 2015), so ids
  never seen need no table growth; mean-pooled histories of its own hashed embeddings with the
  events' labels (the user's earlier items, the item's earlier users);
  optionally LoopFM inputs -- the user's and the item's histories of *stored* FM event
  embeddings, each with its event label, pooled by history encoders (Jiang et al., "LoopFM",
  2026) -- and optionally ExFM's auxiliary head (Liang et al., "External Large Foundation
  Model", 2025), a second logit trained on the FM's predictions and unused at serving.
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import Tensor, nn

from probrec.backbone.history import HistoryEncoder
from probrec.backbone.mlp import MLPEncoder, hidden_widths
from probrec.checks import all_finite, check_choice, check_positive_int, check_seed
from probrec.seeding import seeded_rng, torch_generator

__all__ = [
    "FoundationModel",
    "HashedEmbedding",
    "VerticalModel",
    "dot_interaction",
    "evaluating",
    "module_device",
    "robust_std",
]

_HASH_PRIME = 2_147_483_647  # 2^31 - 1


def _seeded(seed: int) -> contextlib.AbstractContextManager[None]:
    """torch's default initialisers draw from the CPU's global generator: seed a private copy
    (the generators of every accelerator are left alone)."""
    return seeded_rng(check_seed(seed))


def robust_std(values: Tensor) -> Tensor:
    """Per-column standard deviations of ``values [n, d]`` for standardising later inputs: a
    column that (nearly) does not vary over ``values`` (spread below 1% of the median column's)
    gets the median column's spread instead of its own, so that a later, ordinary value of it
    does not become a huge input (all columns constant: 1).

    Returns:
        ``[d]``, positive.

    Raises:
        ValueError: ``values`` is not ``[n >= 2, d]`` (one row has no spread: NaN), or holds
            NaN or inf (its spread would be NaN).
    """
    if values.dim() != 2 or len(values) < 2:
        raise ValueError(f"values must have shape [n >= 2, d], got {list(values.shape)}")
    if not bool(torch.isfinite(values).all()):
        raise ValueError("values contains NaN or infinite values")
    std = values.std(0)
    typical = float(std.median())
    typical = typical if typical > 1e-6 else 1.0
    return torch.where(std < 1e-2 * typical, torch.full_like(std, typical), std)


def module_device(module: nn.Module) -> torch.device:
    """The device of ``module``'s first parameter (or buffer); the CPU for a module with none."""
    first = next(itertools.chain(module.parameters(), module.buffers()), None)
    return torch.device("cpu") if first is None else first.device


@contextlib.contextmanager
def evaluating(model: nn.Module) -> Iterator[nn.Module]:
    """``model`` in evaluation mode inside the block, its own mode restored after (a prediction
    made mid-training must not leave dropout or batch statistics switched off)."""
    was = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was)


class HashedEmbedding(nn.Module):
    r"""Embedding of arbitrary integer ids through a fixed table of ``buckets`` rows.

    Row of id :math:`x`: :math:`h(x) = ((a \cdot (x \bmod p) + b) \bmod p) \bmod m`, a
    Carter-Wegman universal hash with :math:`p = 2^{31} - 1` and seeded :math:`a, b`; distinct
    ids may share a row (the hashing trick). Ids never seen in training still get a row.

    Args:
        buckets: ``m``, table rows.
        dim: embedding width.
        seed: seed of the hash constants and of the initialisation.
    """

    def __init__(self, buckets: int, dim: int, *, seed: int = 0) -> None:
        super().__init__()
        self.buckets = check_positive_int(buckets, "buckets")
        self.dim = check_positive_int(dim, "dim")
        gen = torch_generator(seed)
        ab = torch.randint(1, _HASH_PRIME, (2,), generator=gen, dtype=torch.int64)
        self.register_buffer("a", ab[0].clone(), persistent=True)
        self.register_buffer("b", ab[1].clone(), persistent=True)
        self.table = nn.Embedding(self.buckets, self.dim)
        with torch.no_grad():
            self.table.weight.normal_(0.0, 0.05, generator=gen)

    def bucket(self, ids: Tensor) -> Tensor:
        """Table rows of ``ids`` (any shape, int64, may be negative)."""
        if ids.dtype != torch.int64:
            raise TypeError(f"ids must be int64, got {ids.dtype}")
        x = torch.remainder(ids, _HASH_PRIME)  # in [0, p): a * x < 2^62, no overflow
        return torch.remainder(torch.remainder(self.a * x + self.b, _HASH_PRIME), self.buckets)

    def forward(self, ids: Tensor) -> Tensor:
        """``[...] -> [..., dim]``."""
        return self.table(self.bucket(ids))


def dot_interaction(vectors: Tensor) -> Tensor:
    """DLRM interaction: all pairwise dot products of ``[B, F, e]`` -> ``[B, F (F - 1) / 2]``."""
    if vectors.dim() != 3:
        raise ValueError(f"vectors must be [B, F, e], got {list(vectors.shape)}")
    f = vectors.shape[1]
    gram = torch.bmm(vectors, vectors.transpose(1, 2))
    iu = torch.triu_indices(f, f, offset=1, device=vectors.device)
    return gram[:, iu[0], iu[1]]


def _masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    w = mask.to(x.dtype)
    return torch.einsum("bl,ble->be", w, x) / w.sum(-1, keepdim=True).clamp_min(1.0)


def _dense_stats(batch: dict[str, Tensor]) -> Tensor:
    """``[B, 2]``: log(1 + history length) and the history's positive rate."""
    return torch.stack([torch.log1p(batch["hist_count"]), batch["hist_pos_rate"]], dim=-1)


class _Top(nn.Module):
    """Top MLP over ``[dots, concatenated vectors]`` -> hidden representation -> logit."""

    def __init__(
        self, n_vec: int, emb: int, hidden: Sequence[int], seed: int, dropout: float = 0.0
    ) -> None:
        super().__init__()
        in_dim = n_vec * (n_vec - 1) // 2 + n_vec * emb
        self.mlp = MLPEncoder(
            in_dim, hidden=hidden_widths(hidden), dropout=dropout, sparse_input=False, seed=seed
        )
        self.logit = nn.Linear(hidden[-1], 1)

    def forward(self, vectors: Tensor) -> tuple[Tensor, Tensor]:
        z = torch.cat([dot_interaction(vectors), vectors.flatten(1)], dim=-1)
        h = self.mlp(z)
        return h, self.logit(h).squeeze(-1)


def check_vocabulary(model: nn.Module, table: Any) -> None:
    """Checks that a :class:`FoundationModel` has an embedding row for every dense user and item
    id of ``table`` (:class:`~probrec.recsys.features.EventTable`); other models pass.

    Once per call, from the table's largest ids (computed when it is built), not per batch: an
    id past the model's rows was torch's "index out of range" at the first batch (a
    device-side assert on a GPU).

    Raises:
        ValueError: naming the ids and the rows.
    """
    if not isinstance(model, FoundationModel):
        return
    for name, emb in (("user", model.user), ("item", model.item)):
        top = table.fm_id_max[name]
        if top >= emb.num_embeddings:
            raise ValueError(
                f"the table's dense {name} ids reach {top} but the FoundationModel has "
                f"{emb.num_embeddings} rows (n_{name}s must be at least {top + 1}: the ids "
                "of the FM period plus the out-of-vocabulary row 0)"
            )


def _field_vectors(fields: nn.ModuleList, batch: dict[str, Tensor]) -> list[Tensor]:
    """Embeddings of the side fields, ``len(fields)`` of ``[B, e]``.

    Raises:
        ValueError: ``batch["fields"]`` does not hold one column per field (extra columns were
            ignored, missing ones an IndexError).
    """
    if not len(fields):
        return []
    f = batch["fields"]
    if f.dim() != 2 or f.shape[1] != len(fields):
        raise ValueError(
            f"batch['fields'] must be [B, {len(fields)}] (one column per field cardinality), "
            f"got {list(f.shape)}"
        )
    return [emb(f[:, j]) for j, emb in enumerate(fields)]


class FoundationModel(nn.Module):
    """The large DLRM with a sequence encoder (see the module docstring).

    Args:
        n_users: rows of the user table (FM vocabulary, row 0 = unseen users).
        n_items: rows of the item table.
        field_cardinalities: table sizes of the side fields.
        n_multi_hot: width of the multi-hot block (0 if none).
        emb_dim: embedding width ``e``.
        hidden: top-MLP widths; the last is the stored event-embedding width.
        max_history: ``L`` (recency-rank table size of the sequence encoder).
        heads: attention heads of the sequence encoder.
        dropout: dropout after each top-MLP hidden layer.
        stored: what :meth:`forward` returns as the event embedding: ``"hidden"`` (last
            top-MLP hidden layer, width ``hidden[-1]``) or ``"item+sequence+hidden"`` (item
            embedding, sequence-encoder output and that layer, width ``2 e + hidden[-1]``).
        seed: initialisation seed.
    """

    def __init__(
        self,
        n_users: int,
        n_items: int,
        field_cardinalities: Sequence[int],
        n_multi_hot: int = 0,
        *,
        emb_dim: int = 32,
        hidden: Sequence[int] = (256, 128, 64),
        max_history: int = 50,
        heads: int = 2,
        dropout: float = 0.0,
        stored: str = "item+sequence+hidden",
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.dropout = float(dropout)
        self.stored = check_choice(stored, "stored", ("hidden", "item+sequence+hidden"))
        check_positive_int(n_users, "n_users")  # -1 failed inside torch, 0 was accepted
        check_positive_int(n_items, "n_items")
        for i, c in enumerate(field_cardinalities):
            check_positive_int(c, f"field_cardinalities[{i}]")
        with _seeded(seed):
            e = check_positive_int(emb_dim, "emb_dim")
            self.user = nn.Embedding(n_users, e)
            self.item = nn.Embedding(n_items, e)
            self.fields = nn.ModuleList(nn.Embedding(c, e) for c in field_cardinalities)
            self.genre = nn.Linear(n_multi_hot, e) if n_multi_hot else None
            self.label_emb = nn.Embedding(2, e)
            self.dense = nn.Linear(2, e)
            self.seq = HistoryEncoder(
                e, "attention", num_heads=heads, max_positions=max_history, seed=seed
            )
            for emb in (self.user, self.item, *self.fields, self.label_emb):
                nn.init.normal_(emb.weight, 0.0, 0.05)
            n_vec = 2 + len(self.fields) + (1 if self.genre is not None else 0) + 1 + 4
            self.top = _Top(n_vec, e, hidden, seed, self.dropout)
            self._seq_pos = n_vec - 4  # position of the sequence-encoder output in vectors()
            self.embed_dim = int(hidden[-1]) + (2 * e if self.stored != "hidden" else 0)

    def vectors(self, batch: dict[str, Tensor]) -> Tensor:
        """Sparse-feature vectors ``[B, F, e]`` that enter the interaction layer."""
        vec = [self.user(batch["fm_user"]), self.item(batch["fm_item"])]
        vec += _field_vectors(self.fields, batch)
        if self.genre is not None:
            vec.append(self.genre(batch["multi_hot"]))
        vec.append(self.dense(_dense_stats(batch)))
        mask, lab = batch["hist_mask"], batch["hist_label"]
        hist_item = self.item(batch["hist_fm_item"])
        seq_in = hist_item + self.label_emb(lab.long())
        vec.append(self.seq(seq_in, mask))
        vec.append(_masked_mean(hist_item, mask & (lab > 0.5)))
        vec.append(_masked_mean(hist_item, mask & (lab < 0.5)))
        item_side = self.user(batch["ihist_fm_user"]) + self.label_emb(batch["ihist_label"].long())
        vec.append(_masked_mean(item_side, batch["ihist_mask"]))
        return torch.stack(vec, dim=1)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Returns ``(event embedding [B, embed_dim], logit [B])``."""
        vec = self.vectors(batch)
        h, logit = self.top(vec)
        if self.stored == "hidden":
            return h, logit
        return torch.cat([vec[:, 1], vec[:, self._seq_pos], h], dim=-1), logit


class VerticalModel(nn.Module):
    """The small DLRM with hashed ids, optional LoopFM inputs and ExFM auxiliary head.

    LoopFM inputs are passed in the batch as ``fm_hist [B, L, d]`` / ``fm_ihist [B, K, d]``
    (stored FM embeddings of the user's and the item's earlier events, read from the store)
    with the masks and labels of :meth:`~probrec.recsys.features.EventTable.batch`.

    Args:
        field_cardinalities: cardinalities of the side fields (hashed into at most
            ``field_buckets`` rows each).
        n_multi_hot: width of the multi-hot block.
        emb_dim: embedding width.
        hidden: top-MLP widths.
        user_buckets: hashed user-table rows.
        item_buckets: hashed item-table rows.
        field_buckets: cap on the rows of each side-field table.
        fm_dim: width ``d`` of the stored FM embeddings; ``None`` = no LoopFM inputs.
        max_history: ``L`` (recency-rank table of the LoopFM user-history encoder).
        aux_head: add ExFM's auxiliary head.
        item_history: add the mean over the item's earlier events of (hashed user embedding +
            label embedding) -- the item-side counterpart of the own user history, so that
            LoopFM's gain is measured against a VM with the same history structure.
        seed: initialisation and hashing seed.
    """

    def __init__(
        self,
        field_cardinalities: Sequence[int],
        n_multi_hot: int = 0,
        *,
        emb_dim: int = 16,
        hidden: Sequence[int] = (64, 32),
        user_buckets: int = 1024,
        item_buckets: int = 2048,
        field_buckets: int = 64,
        fm_dim: int | None = None,
        max_history: int = 50,
        aux_head: bool = False,
        item_history: bool = True,
        seed: int = 0,
    ) -> None:
        super().__init__()
        self.item_history = bool(item_history)
        with _seeded(seed):
            e = check_positive_int(emb_dim, "emb_dim")
            self.user = HashedEmbedding(user_buckets, e, seed=seed)
            self.item = HashedEmbedding(item_buckets, e, seed=seed + 1)
            self.fields = nn.ModuleList(
                HashedEmbedding(min(c, field_buckets), e, seed=seed + 2 + j)
                for j, c in enumerate(field_cardinalities)
            )
            self.genre = nn.Linear(n_multi_hot, e) if n_multi_hot else None
            self.dense = nn.Linear(2, e)
            self.label_emb = nn.Embedding(2, e)
            nn.init.normal_(self.label_emb.weight, 0.0, 0.05)
            self.fm_dim = fm_dim
            n_vec = 2 + len(self.fields) + (1 if self.genre is not None else 0) + 2
            n_vec += int(self.item_history)
            if fm_dim is not None:
                d = check_positive_int(fm_dim, "fm_dim")
                # per-dimension standardisation of the stored vectors (set_fm_scaling); the stored
                # blocks (item embedding, sequence output, hidden layer) differ in scale by 5x
                self.register_buffer("fm_mean", torch.zeros(d))
                self.register_buffer("fm_std", torch.ones(d))
                self.fm_label = nn.Embedding(2, d)
                nn.init.normal_(self.fm_label.weight, 0.0, 0.05)
                self.fm_user_seq = HistoryEncoder(
                    d, "attention", out_dim=e, num_heads=2, max_positions=max_history, seed=seed
                )
                self.fm_item_seq = HistoryEncoder(d, "mean", out_dim=e, seed=seed + 1)
                n_vec += 2
            self.top = _Top(n_vec, e, hidden, seed)
            self.aux = nn.Linear(hidden[-1], 1) if aux_head else None

    def vectors(self, batch: dict[str, Tensor]) -> Tensor:
        """Sparse-feature vectors ``[B, F, e]`` that enter the interaction layer."""
        vec = [self.user(batch["user"]), self.item(batch["item"])]
        vec += _field_vectors(self.fields, batch)
        if self.genre is not None:
            vec.append(self.genre(batch["multi_hot"]))
        vec.append(self.dense(_dense_stats(batch)))
        own = self.item(batch["hist_item"]) + self.label_emb(batch["hist_label"].long())
        vec.append(_masked_mean(own, batch["hist_mask"]))
        if self.item_history:
            own = self.user(batch["ihist_user"]) + self.label_emb(batch["ihist_label"].long())
            vec.append(_masked_mean(own, batch["ihist_mask"]))
        if self.fm_dim is not None:
            for key, mask in (("fm_hist", "hist_mask"), ("fm_ihist", "ihist_mask")):
                if key not in batch:
                    raise ValueError(f"this VerticalModel uses LoopFM inputs: batch needs {key!r}")
                # another width failed inside a broadcast; [1, L, d] or [B, 1, d] broadcast
                # one history to every event
                v, want = batch[key], (*batch[mask].shape, self.fm_dim)
                if tuple(v.shape) != want:
                    raise ValueError(
                        f"batch[{key!r}] must be {list(want)} stored FM vectors (the shape of "
                        f"batch[{mask!r}] and the FM width), got {list(v.shape)}"
                    )
            u = self._scale(batch["fm_hist"]) + self.fm_label(batch["hist_label"].long())
            vec.append(self.fm_user_seq(u, batch["hist_mask"]))
            i = self._scale(batch["fm_ihist"]) + self.fm_label(batch["ihist_label"].long())
            vec.append(self.fm_item_seq(i, batch["ihist_mask"]))
        return torch.stack(vec, dim=1)

    def _scale(self, x: Tensor) -> Tensor:  # float64 stores: cast (they failed in a Linear)
        return (x.to(self.fm_mean.dtype) - self.fm_mean) / self.fm_std

    @torch.no_grad()
    def set_fm_scaling(self, vectors: Tensor) -> None:
        """Standardises the stored FM inputs per dimension with the mean and standard deviation
        of ``vectors [n, d]`` (e.g. the stored embeddings of the VM's training events).

        A dimension that (nearly) does not vary over ``vectors`` -- a ReLU of the FM that is
        dead on those events but not on later ones -- is scaled by the median dimension's
        standard deviation instead of its own: dividing by its own (clamped at 1e-6) turned a
        later event's ordinary value into an input of 1e4-1e6 and the VM's predictions into
        noise (log loss 12 against 0.69 on a small synthetic log; on MovieLens-100k 7-12 of
        the 96 stored dimensions are constant over the VM's training events).
        """
        if self.fm_dim is None:
            raise ValueError("this VerticalModel has no LoopFM inputs")
        if vectors.dim() != 2 or vectors.shape[1] != self.fm_dim or len(vectors) < 2:
            raise ValueError(
                f"vectors must have shape [n >= 2, {self.fm_dim}], got {tuple(vectors.shape)}"
            )
        if not all_finite(vectors):  # an all-NaN input stored a NaN mean
            raise ValueError("vectors contains non-finite values")
        self.fm_mean.copy_(vectors.mean(0))
        self.fm_std.copy_(robust_std(vectors))

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor, Tensor | None]:
        """Returns ``(hidden [B, hidden[-1]], logit [B], auxiliary logit [B] or None)``."""
        h, logit = self.top(self.vectors(batch))
        return h, logit, None if self.aux is None else self.aux(h).squeeze(-1)
