"""Embedders: the Protocol, the cache, the hashing test embedder and the real MiniLM
model (loaded once per test session; only short texts are embedded)."""

from __future__ import annotations

import numpy as np
import pytest

from sealedkb.embed import Embedder, load_embedder
from sealedkb.embed import minilm as minilm_mod
from sealedkb.embed.cache import CachingEmbedder
from sealedkb.embed.hashing import HashingEmbedder
from sealedkb.embed.minilm import MiniLMEmbedder
from sealedkb.errors import ConfigError, EmbeddingError


@pytest.fixture(scope="session")
def minilm() -> MiniLMEmbedder:
    e = MiniLMEmbedder()
    e.load()
    return e


def test_embedders_implement_the_protocol(minilm: MiniLMEmbedder) -> None:
    for e in (HashingEmbedder(), minilm, CachingEmbedder(HashingEmbedder())):
        assert isinstance(e, Embedder)
        assert e.dim == 384 and e.model_id


def test_load_embedder_names() -> None:
    assert load_embedder("none") is None
    assert load_embedder("hash") is not None
    with pytest.raises(ConfigError):
        load_embedder("gpt")


def test_hashing_embedder_is_deterministic_and_unit_length() -> None:
    e = HashingEmbedder()
    v = e.embed(["python scripts run", "running python scripts", "cats on mats", ""])
    assert v.shape == (4, 384) and v.dtype == np.float32
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-6)
    assert np.array_equal(
        v, e.embed(["python scripts run", "running python scripts", "cats on mats", ""])
    )
    assert v[0] @ v[1] > 0.5 > abs(v[0] @ v[2])


def test_cache_serves_repeats_without_the_model() -> None:
    inner = HashingEmbedder()
    calls: list[int] = []
    orig = inner.embed

    def counting(texts):  # type: ignore[no-untyped-def]
        calls.append(len(texts))
        return orig(texts)

    inner.embed = counting  # type: ignore[method-assign]
    c = CachingEmbedder(inner, max_entries=2)
    a = c.embed(["one", "two"])
    b = c.embed(["two", "one"])
    assert calls == [2] and np.array_equal(a[::-1], b)
    c.embed(["three"])  # evicts "two", the least recently used
    c.embed(["one"])  # still cached
    c.embed(["two"])  # embedded again
    assert calls == [2, 1, 1]
    assert c.hits == 3 and c.misses == 4
    assert not any(isinstance(k, str) for k in c._cache)  # keyed hashes, not texts


def test_minilm_vectors(minilm: MiniLMEmbedder) -> None:
    texts = [
        "How do I make a Python script executable on Unix?",
        "To make a script executable, add a shebang line and chmod +x",
        "The cat sat on the mat",
    ]
    v = minilm.embed(texts)
    assert v.shape == (3, 384)
    assert np.allclose(np.linalg.norm(v, axis=1), 1, atol=1e-5)
    sim = v @ v.T
    # all-MiniLM-L6-v2 reference values (sentence-transformers): 0.596 and 0.033
    assert sim[0, 1] == pytest.approx(0.596, abs=0.01)
    assert abs(sim[0, 2]) < 0.1
    # batching by length must not change results or order
    one = np.stack([minilm.embed([t])[0] for t in texts])
    assert np.allclose(v, one, atol=1e-4)


def test_minilm_truncates_at_the_model_limit(minilm: MiniLMEmbedder) -> None:
    long = "word " * 2000  # ~2,000 tokens, far past 256
    tail = long + " completely different ending about volcanoes"
    a, b = minilm.embed([long, tail])
    assert np.allclose(a, b, atol=1e-5)  # everything after token 256 is cut


def test_minilm_checksum_mismatch_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(minilm_mod, "MODEL_SHA256", "0" * 64)
    with pytest.raises(EmbeddingError, match="sha256"):
        minilm_mod.model_files()
