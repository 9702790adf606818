"""Feature backbones: MLP encoders (optionally in geometric parameterization), frozen
foundation-model embedding stores, history encoders over stored embeddings, text embeddings.

* :class:`MLPEncoder`, :class:`GmPLinear` -- ``[..., in_dim] -> [..., out_dim]`` encoders;
  GmP after Chen & Ge (NeurIPS 2024).
* :class:`EmbeddingStore` -- keys to frozen vectors, saved and memory-mapped, batched lookup
  on any device (LoopFM-style transfer of foundation-model embeddings).
* :class:`HistoryEncoder`, :func:`build_history_batch` -- padded histories of stored
  embeddings with a mask -> one vector (mean or attention pooling).
* :class:`TextEmbedder` -- all-MiniLM-L6-v2 sentence embeddings, offline, cached on disk
  (extra ``text``; sentence-transformers is imported only when a text must be embedded).
"""

from probrec.backbone.gmp import (
    GmPLinear,
    cartesian_to_hyperspherical,
    hyperspherical_to_cartesian,
)
from probrec.backbone.history import HistoryBatch, HistoryEncoder, build_history_batch, recency_rank
from probrec.backbone.mlp import ACTIVATIONS, MLPEncoder, hidden_widths
from probrec.backbone.store import (
    EmbeddingStore,
    EmbeddingStoreWriter,
    MissingKeyError,
    canonical_key,
)
from probrec.backbone.text import MINILM_DIM, MINILM_ID, TextEmbedder

__all__ = [
    "ACTIVATIONS",
    "MINILM_DIM",
    "MINILM_ID",
    "EmbeddingStore",
    "EmbeddingStoreWriter",
    "GmPLinear",
    "HistoryBatch",
    "HistoryEncoder",
    "hidden_widths",
    "MLPEncoder",
    "MissingKeyError",
    "TextEmbedder",
    "build_history_batch",
    "canonical_key",
    "cartesian_to_hyperspherical",
    "hyperspherical_to_cartesian",
    "recency_rank",
]
