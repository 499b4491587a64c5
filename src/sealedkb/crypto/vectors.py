"""Distance-comparison-preserving encryption of embeddings (DCPE, DESIGN.md §4).

Scheme (Scale-And-Perturb, Fuchsbauer, Ghosal, Hauke, O'Neill, SCN 2022, with a
key-derived rotation in front)::

    R = orthogonal matrix from the namespace's vector data key
        (HKDF-SHA256 -> 256-bit seed -> PCG64 -> Gaussian d x d -> QR, sign-fixed)
    c = s * R.x + lambda,   lambda uniform in the ball of radius s * beta / 4

with ``s = 1``: embeddings are unit vectors and pgvector ranks by cosine, so the
scale would cancel anyway; what protects the vector is the secret rotation and
the noise. The rotation preserves inner products exactly (R is orthogonal), so a
query is rotated but not perturbed (``R.q``), and cosine(c, R.q) differs from
cosine(x, q) by at most about beta/4. The search over-fetches ``k x oversample``
candidates on the ciphertexts and re-ranks them by exact cosine on the sealed
exact embeddings, which gives back exact order.

Noise is fresh per vector: each call seeds a generator from 256 bits of the OS
CSPRNG, so two encryptions of one vector differ and noise cannot be replayed.
What leaks is stated in docs/SEARCH.md: approximate distances between entries
of one namespace (the larger beta, the less precise).
"""

from __future__ import annotations

import os

import numpy as np
from numpy.typing import NDArray

from sealedkb.crypto.kdf import hkdf

ROTATION_INFO = b"sealedkb/v1/dcpe-rotation"
DEFAULT_BETA = 1.0


def rotation_matrix(key: bytes, dim: int) -> NDArray[np.float64]:
    """The secret orthogonal d x d matrix of a vector data key (deterministic)."""
    seed = hkdf(key, ROTATION_INFO + b"|" + str(dim).encode(), length=32)
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    g = rng.standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    # Sign-fix so the factorisation is unique (Q is then Haar-distributed).
    q *= np.sign(np.diag(r))
    return np.ascontiguousarray(q)


def ball_noise(n: int, dim: int, radius: float) -> NDArray[np.float64]:
    """``n`` points uniform in the d-ball of ``radius``, from fresh OS randomness."""
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(os.urandom(32), "big")))
    direction = rng.standard_normal((n, dim))
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    r = radius * rng.random(n) ** (1.0 / dim)
    return direction * r[:, None]


class VectorCipher:
    """DCPE under one vector data key. Thread-safe (immutable after construction)."""

    def __init__(self, key: bytes, dim: int, beta: float = DEFAULT_BETA) -> None:
        if dim < 2 or beta < 0:
            raise ValueError("dimension must be >= 2 and beta >= 0")
        self.dim = dim
        self.beta = beta
        # float32: pgvector stores float32, and a 384 x 384 float32 matvec is ~10 µs.
        self._rt = rotation_matrix(key, dim).T.astype(np.float32)

    def rotate(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """R.x for each row of ``x`` (queries are rotated, never perturbed)."""
        return np.asarray(np.atleast_2d(x).astype(np.float32, copy=False) @ self._rt)

    def encrypt(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """DCPE ciphertexts of the rows of ``x`` (unit vectors): R.x + noise."""
        rx = self.rotate(x)
        if self.beta == 0:
            return rx
        noise = ball_noise(rx.shape[0], self.dim, self.beta / 4.0)
        return (rx + noise).astype(np.float32)
