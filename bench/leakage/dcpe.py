"""DCPE β and over-fetch with perturbed queries: recall@10 against exact plaintext search.

Numpy, exact search on the ciphertexts (the HNSW end-to-end run is bench_vectors.py):
for each β and over-fetch, the top ``k x oversample`` ciphertexts by cosine to the
*perturbed* query ``R.q + λ`` (fresh noise per query, as SearchEngine sends it), re-ranked
by exact cosine, against the exact top 10 on the plaintext vectors.
"""

from __future__ import annotations

import numpy as np
from numpy.typing import NDArray

from sealedkb.crypto.vectors import VectorCipher

F32 = NDArray[np.float32]
K = 10


def sweep(
    data: F32,
    queries: F32,
    betas: tuple[float, ...],
    oversamples: tuple[int, ...],
    *,
    query_noise: bool = True,
    key: bytes = b"\x07" * 32,
) -> list[dict[str, float]]:
    data = data / np.linalg.norm(data, axis=1, keepdims=True)
    queries = queries / np.linalg.norm(queries, axis=1, keepdims=True)
    truth = np.argsort(-(queries @ data.T), axis=1)[:, :K]
    out = []
    for beta in betas:
        cipher = VectorCipher(key, data.shape[1], beta)
        c = cipher.encrypt(data)
        cn = c / np.linalg.norm(c, axis=1, keepdims=True)
        q = cipher.encrypt(queries) if query_noise else cipher.rotate(queries)
        order = np.argsort(-(q @ cn.T), axis=1)
        row: dict[str, float] = {
            "beta": beta,
            "mean_cos_ciphertext_plaintext": round(
                float(np.mean(np.sum(cn * cipher.rotate(data), axis=1))), 3
            ),
        }
        for o in oversamples:
            cand = order[:, : K * o]
            hits = 0
            for qi in range(len(queries)):
                ids = cand[qi]
                exact = ids[np.argsort(-(data[ids] @ queries[qi]))[:K]]
                hits += len(set(exact.tolist()) & set(truth[qi].tolist()))
            row[f"recall@10_x{o}"] = round(hits / (K * len(queries)), 4)
        out.append(row)
    return out
