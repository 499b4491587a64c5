"""Embedding models behind one small Protocol.

The default is all-MiniLM-L6-v2 (384-d) run locally with onnxruntime and
tokenizers (:mod:`sealedkb.embed.minilm`): offline, no PyTorch. Another model
(an OpenAI-compatible HTTP endpoint, sentence-transformers) is a class with
``model_id``, ``dim`` and ``embed``; every stored vector records the model id
and dimension, so a model change is detected and ``sealedkb reembed`` redoes
the vectors.
"""

from __future__ import annotations

from sealedkb.embed.base import Embedder
from sealedkb.errors import ConfigError

__all__ = ["EMBEDDER_NAMES", "Embedder", "load_embedder"]


EMBEDDER_NAMES = ("minilm", "hash", "none")


def load_embedder(name: str, *, cache_size: int = 4096) -> Embedder | None:
    """The embedder a setting names (``none``: store no vectors), wrapped in a cache."""
    from sealedkb.embed.cache import CachingEmbedder

    inner: Embedder
    if name == "none":
        return None
    if name == "minilm":
        from sealedkb.embed.minilm import MiniLMEmbedder

        inner = MiniLMEmbedder()
    elif name == "hash":
        from sealedkb.embed.hashing import HashingEmbedder

        inner = HashingEmbedder()
    else:
        raise ConfigError(
            f"unknown embedder; expected one of: {', '.join(EMBEDDER_NAMES)}", field="embedder"
        )
    return CachingEmbedder(inner, max_entries=cache_size)
