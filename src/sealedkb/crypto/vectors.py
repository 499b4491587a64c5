"""Distance-comparison-preserving encryption of embeddings (DCPE, docs/DESIGN.md §4).

Scheme (Scale-And-Perturb, Fuchsbauer, Ghosal, Hauke, O'Neill, SCN 2022, with a
key-derived rotation in front)::

    R = orthogonal matrix from the namespace's vector data key
        (HKDF-SHA256 -> 256-bit seed -> PCG64 -> Gaussian d x d -> QR, sign-fixed)
    c = s * R.x + lambda,   lambda uniform in the ball of radius s * beta / 4

with ``s = 1``: embeddings are unit vectors and pgvector ranks by cosine, so the
scale would cancel anyway; what protects the vector is the secret rotation and
the noise. The rotation preserves inner products exactly (R is orthogonal), so
cosine(c, R.q) differs from cosine(x, q) by at most about beta/4; search encrypts
queries too (``encrypt``: fresh noise each, so repeated queries are not linkable),
which doubles that bound. The search over-fetches ``k x oversample``
candidates on the ciphertexts and re-ranks them by exact cosine on the sealed
exact embeddings, which gives back exact order.

Noise is fresh per vector and drawn from a CSPRNG (AES-256-CTR keystream under a
fresh key from the OS CSPRNG, see :func:`random_bytes`), so two encryptions of
one vector differ and noise cannot be predicted or replayed.
What leaks is stated in docs/SEARCH.md: approximate distances between entries
of one namespace (the larger beta, the less precise).
"""

from __future__ import annotations

import os
import threading

import numpy as np
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from numpy.typing import NDArray

from sealedkb.crypto.kdf import hkdf

ROTATION_INFO = b"sealedkb/v1/dcpe-rotation"
DEFAULT_BETA = 1.0
NOISE_BATCH = 256


def rotation_matrix(key: bytes, dim: int) -> NDArray[np.float64]:
    """The secret orthogonal d x d matrix of a vector data key (deterministic)."""
    seed = hkdf(key, ROTATION_INFO + b"|" + str(dim).encode(), length=32)
    rng = np.random.Generator(np.random.PCG64(int.from_bytes(seed, "big")))
    g = rng.standard_normal((dim, dim))
    q, r = np.linalg.qr(g)
    # Sign-fix so the factorisation is unique (Q is then Haar-distributed).
    q *= np.sign(np.diag(r))
    return np.ascontiguousarray(q)


def random_bytes(n: int) -> bytes:
    """``n`` bytes of CSPRNG output: the AES-256-CTR keystream under a fresh 256-bit
    key from the OS CSPRNG (used once, so the zero counter block is never reused).

    The noise of a batch of vectors needs ~400 KB of randomness; this produces it
    ~5x faster than ``os.urandom`` and is as unpredictable as its key.
    """
    enc = Cipher(algorithms.AES(os.urandom(32)), modes.CTR(bytes(16))).encryptor()
    return enc.update(bytes(n)) + enc.finalize()


def _uniform(n: int) -> NDArray[np.float32]:
    """``n`` uniforms in (0, 1] from CSPRNG output (24 bits each: float32 precision)."""
    raw = np.frombuffer(random_bytes(4 * n), dtype=np.uint32) >> np.uint32(8)
    return (raw.astype(np.float32) + np.float32(1.0)) * np.float32(1.0 / (1 << 24))


def ball_noise(n: int, dim: int, radius: float) -> NDArray[np.float32]:
    """``n`` points uniform in the d-ball of ``radius``, from fresh CSPRNG output.

    Direction: ``dim`` standard normals (Box-Muller) normalised; radius:
    ``radius * U^(1/d)``. Computed in float32 (the ciphertexts are float32, and
    numpy's float32 log/cos/sin are vectorised: ~15x faster than float64).
    """
    half = (dim + 1) // 2
    u = _uniform(n * (2 * half + 1)).reshape(n, 2 * half + 1)
    r = np.sqrt(np.float32(-2.0) * np.log(u[:, :half]))
    theta = np.float32(2.0 * np.pi) * u[:, half : 2 * half]
    direction = np.concatenate([r * np.cos(theta), r * np.sin(theta)], axis=1)[:, :dim]
    direction /= np.linalg.norm(direction, axis=1, keepdims=True)
    scale = np.float32(radius) * u[:, -1] ** np.float32(1.0 / dim)
    return np.asarray(direction * scale[:, None], dtype=np.float32)


class VectorCipher:
    """DCPE under one vector data key. Thread-safe (immutable after construction)."""

    def __init__(self, key: bytes, dim: int, beta: float = DEFAULT_BETA) -> None:
        if dim < 2 or beta < 0:
            raise ValueError("dimension must be >= 2 and beta >= 0")
        self.dim = dim
        self.beta = beta
        # float32: pgvector stores float32, and a 384 x 384 float32 matvec is ~10 µs.
        self._rt = rotation_matrix(key, dim).T.astype(np.float32)
        # Noise is drawn NOISE_BATCH vectors at a time (one keystream, vectorised
        # float32 maths) and every row is used once: a few µs a vector.
        self._lock = threading.Lock()
        self._pool = np.empty((0, dim), dtype=np.float32)

    def rotate(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """R.x for each row of ``x`` (no noise: search perturbs queries with ``encrypt``)."""
        return np.asarray(np.atleast_2d(x).astype(np.float32, copy=False) @ self._rt)

    def encrypt(self, x: NDArray[np.float32]) -> NDArray[np.float32]:
        """DCPE ciphertexts of the rows of ``x`` (unit vectors): R.x + noise."""
        rx = self.rotate(x)
        if self.beta == 0:
            return rx
        return rx + self._noise(rx.shape[0])

    def _noise(self, n: int) -> NDArray[np.float32]:
        if n > NOISE_BATCH:
            return ball_noise(n, self.dim, self.beta / 4.0)
        with self._lock:
            if len(self._pool) < n:
                fresh = ball_noise(NOISE_BATCH, self.dim, self.beta / 4.0)
                self._pool = np.concatenate([self._pool, fresh])
            out, self._pool = self._pool[:n], self._pool[n:]
        return out
