"""An LRU cache in front of an embedder, keyed by a keyed hash of the text.

Embedding costs 5-50 ms a text; a query repeated or a chunk re-imported should
not pay it twice. Keys are HMACs under a per-process random key
(:class:`sealedkb.crypto.blind.TextHasher`), so the cache never holds text as
its keys and a key says nothing outside this process.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import TYPE_CHECKING

from sealedkb.crypto.blind import TextHasher
from sealedkb.embed.base import Embedder

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray


class CachingEmbedder:
    def __init__(self, inner: Embedder, *, max_entries: int = 4096) -> None:
        self.inner = inner
        self.max_entries = max_entries
        self._hash = TextHasher()
        self._lock = threading.Lock()
        self._cache: OrderedDict[bytes, NDArray[np.float32]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    @property
    def model_id(self) -> str:
        return self.inner.model_id

    @property
    def dim(self) -> int:
        return self.inner.dim

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        keys = [self._hash(t) for t in texts]
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        missing: list[int] = []
        with self._lock:
            for i, k in enumerate(keys):
                hit = self._cache.get(k)
                if hit is None:
                    missing.append(i)
                else:
                    self._cache.move_to_end(k)
                    out[i] = hit
            self.hits += len(texts) - len(missing)
            self.misses += len(missing)
        if missing:
            fresh = self.inner.embed([texts[i] for i in missing])
            with self._lock:
                for j, i in enumerate(missing):
                    out[i] = fresh[j]
                    self._cache[keys[i]] = fresh[j].copy()
                    if len(self._cache) > self.max_entries:
                        self._cache.popitem(last=False)
        return out
