"""DCPE properties (docs/DESIGN.md §4): exact rotation, bounded noise, fresh randomness."""

from __future__ import annotations

import numpy as np
import pytest

from sealedkb.crypto.vectors import VectorCipher, ball_noise, rotation_matrix

KEY = bytes(range(32))


def unit(n: int, d: int = 384, seed: int = 1) -> np.ndarray:
    x = np.random.default_rng(seed).standard_normal((n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def cos(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    return np.sum(a * b, axis=1) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def test_rotation_is_orthogonal_and_key_derived() -> None:
    r = rotation_matrix(KEY, 384)
    assert np.allclose(r @ r.T, np.eye(384), atol=1e-10)
    assert np.array_equal(r, rotation_matrix(KEY, 384))  # deterministic per key
    assert not np.allclose(r, rotation_matrix(bytes(32), 384))  # another key, another R
    assert rotation_matrix(KEY, 16).shape == (16, 16)


def test_rotation_preserves_cosine_exactly() -> None:
    c = VectorCipher(KEY, 384, beta=1.0)
    x, q = unit(200, seed=1), unit(200, seed=2)
    rx, rq = c.rotate(x), c.rotate(q)
    assert np.max(np.abs(cos(rx, rq) - cos(x, q))) < 1e-5  # float32 arithmetic only
    assert np.max(np.abs(np.linalg.norm(rx, axis=1) - 1)) < 1e-5
    # and it is not the identity: the ciphertext does not resemble the plaintext
    assert np.max(np.abs(cos(rx, x))) < 0.3


@pytest.mark.parametrize("beta", [0.5, 1.0, 2.5, 4.0])
def test_noise_is_bounded_by_beta_over_4(beta: float) -> None:
    c = VectorCipher(KEY, 384, beta=beta)
    x = unit(500)
    dist = np.linalg.norm(c.encrypt(x) - c.rotate(x), axis=1)
    assert np.all(dist <= beta / 4 * (1 + 1e-5))
    # uniform in the ball: in 384 dimensions nearly all mass lies near the surface
    assert np.median(dist) > 0.99 * beta / 4


def test_each_encryption_draws_fresh_noise() -> None:
    c = VectorCipher(KEY, 384, beta=1.0)
    x = unit(1)
    a, b = c.encrypt(x), c.encrypt(x)
    assert not np.allclose(a, b)
    n1, n2 = ball_noise(2, 384, 1.0)
    assert not np.allclose(n1, n2)


def test_cosine_is_approximately_preserved_and_queries_are_not_perturbed() -> None:
    c = VectorCipher(KEY, 384, beta=1.0)
    x, q = unit(300, seed=3), unit(300, seed=4)
    assert np.array_equal(c.rotate(q), c.rotate(q))  # queries: deterministic, no noise
    err = np.abs(cos(c.encrypt(x), c.rotate(q)) - cos(x, q))
    assert np.max(err) < 0.25 + 1e-6  # |noise| <= beta/4 on unit vectors
    # and a ciphertext stays close to its own rotated plaintext (what search needs)
    assert np.mean(cos(c.encrypt(x), c.rotate(x))) > 0.95


def test_beta_zero_is_rotation_only_and_bad_parameters_fail() -> None:
    c = VectorCipher(KEY, 8, beta=0.0)
    x = unit(3, d=8)
    assert np.allclose(c.encrypt(x), c.rotate(x))
    with pytest.raises(ValueError):
        VectorCipher(KEY, 1)
    with pytest.raises(ValueError):
        VectorCipher(KEY, 8, beta=-1)
