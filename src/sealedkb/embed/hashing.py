"""A deterministic, model-free embedder (feature hashing of word stems and bigrams).

For tests and machines where no model can be loaded: fast, reproducible, and
"semantic" only in the bag-of-words sense (texts sharing words are close). It
implements the same :class:`sealedkb.embed.Embedder` Protocol as the real model.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import Sequence

import numpy as np
from numpy.typing import NDArray

from sealedkb.search.text import TOKENIZER_V1, terms


class HashingEmbedder:
    def __init__(self, dim: int = 384) -> None:
        self._dim = dim

    @property
    def model_id(self) -> str:
        return f"hashing-v1-{self._dim}"

    @property
    def dim(self) -> int:
        return self._dim

    def _vector(self, text: str) -> NDArray[np.float32]:
        v = np.zeros(self._dim, dtype=np.float32)
        ts = terms(text, TOKENIZER_V1)  # pinned: its vectors must not change
        feats = ts + [a + " " + b for a, b in itertools.pairwise(ts)]
        for f in feats:
            h = hashlib.blake2b(f.encode(), digest_size=8).digest()
            idx = int.from_bytes(h[:4], "little") % self._dim
            v[idx] += 1.0 if h[4] & 1 else -1.0
        n = float(np.linalg.norm(v))
        if n == 0.0:
            v[0] = 1.0
            return v
        return v / n

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        if not texts:
            return np.zeros((0, self._dim), dtype=np.float32)
        return np.stack([self._vector(t) for t in texts])
