"""The embedder Protocol (kept apart from the package's loader, so the cache and the
models import it without importing the loader back)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Protocol, runtime_checkable

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

__all__ = ["Embedder"]


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into unit-length float32 vectors of ``dim`` dimensions.

    ``embed`` returns an array of shape (len(texts), dim), rows L2-normalised,
    in input order; it raises :class:`sealedkb.errors.EmbeddingError` on failure.
    """

    @property
    def model_id(self) -> str: ...

    @property
    def dim(self) -> int: ...

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]: ...
