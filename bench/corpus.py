"""Shared by the search benchmarks: the real corpus and cached MiniLM embeddings.

Corpus: the Python 3.11 documentation from Debian's ``python3.11-doc`` package
(HTML under /usr/share/doc/python3.11/html), chunked by sealedkb's own importer
(sealedkb.ingest.importer.iter_chunks: the same parsing and chunking ``sealedkb
import`` does). Nobody on this project wrote it.

Embeddings of chunk texts are cached in bench/.cache/ (gitignored), keyed by the
sha256 of the exact text the service embeds, so the ~6 minutes of MiniLM
inference for ~7,000 chunks on 2 cores is paid once per machine.
"""

from __future__ import annotations

import atexit
import hashlib
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
from numpy.typing import NDArray

from sealedkb.embed.minilm import MODEL_ID, MiniLMEmbedder
from sealedkb.ingest.importer import Chunk, iter_chunks
from sealedkb.search.engine import embedding_text

DOC_ROOT = Path("/usr/share/doc/python3.11/html")
CACHE = Path(__file__).resolve().parent / ".cache"
SECTIONS = ("faq", "tutorial", "howto", "library", "reference", "c-api", "using", "extending")


def ensure_python_doc() -> Path:
    """The HTML docs; installs Debian's python3.11-doc if missing (needs root + apt)."""
    if (DOC_ROOT / "faq" / "programming.html").exists():
        return DOC_ROOT
    print(
        "bench: the corpus is Debian's python3.11-doc package and it is not installed;"
        " running: apt-get update && apt-get install -y python3.11-doc",
        file=sys.stderr,
    )
    if shutil.which("apt-get") is None:
        sys.exit("bench: apt-get not found: install python3.11-doc (Debian) by hand")
    try:
        subprocess.run(["apt-get", "update", "-qq"], check=True)
        subprocess.run(["apt-get", "install", "-y", "-qq", "python3.11-doc"], check=True)
    except (subprocess.CalledProcessError, OSError) as exc:
        sys.exit(f"bench: installing python3.11-doc failed ({exc}); install it by hand (root)")
    return DOC_ROOT


def doc_chunks(sections: Sequence[str] = SECTIONS) -> list[Chunk]:
    """The corpus as the recorded figures were made: chunks titled by page and own
    heading, without overlap (``sealedkb import`` now adds the section path and an
    overlap; bench/bench_quality.py --chunking measures that), so their cached vectors
    and the figures in docs/ stay comparable."""
    root = ensure_python_doc()
    out: list[Chunk] = []
    for sec in sections:
        out.extend(
            c
            for _path, c in iter_chunks([root / sec], with_path=False, overlap=0)
            if not c.source.endswith("index.html")
        )
    return out


def text_key(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


class EmbeddingCache:
    """sha256(text) -> MiniLM vector, persisted as one .npz file per model."""

    def __init__(self, name: str = "minilm") -> None:
        self.path = CACHE / f"{name}-{MODEL_ID.replace('/', '_')}.npz"
        self.table: dict[str, NDArray[np.float32]] = {}
        if self.path.exists():
            data = np.load(self.path)
            for k, v in zip(data["keys"], data["vectors"], strict=True):
                self.table[str(k)] = v
        self.embedder = MiniLMEmbedder()
        self.dirty = False
        atexit.register(self.save)
        self.seconds = 0.0
        self.embedded = 0

    def save(self) -> None:
        """Merge with what is on disk (another bench may have added vectors), then
        replace atomically."""
        if not self.dirty:
            return
        CACHE.mkdir(parents=True, exist_ok=True)
        if self.path.exists():
            data = np.load(self.path)
            for k, v in zip(data["keys"], data["vectors"], strict=True):
                self.table.setdefault(str(k), v)
        keys = np.array(list(self.table), dtype="U64")
        vecs = np.stack(list(self.table.values())) if self.table else np.zeros((0, 384))
        tmp = self.path.with_name(f"{self.path.stem}.{os.getpid()}.tmp.npz")
        np.savez(tmp, keys=keys, vectors=vecs.astype(np.float32))
        tmp.replace(self.path)
        self.dirty = False

    def vectors(self, texts: Sequence[str], *, label: str = "texts") -> NDArray[np.float32]:
        keys = [text_key(t) for t in texts]
        missing = sorted(
            {k: t for k, t in zip(keys, texts, strict=True) if k not in self.table}.items()
        )
        if len(missing) > 1:
            print(f"bench: embedding {len(missing)} {label} with MiniLM...", file=sys.stderr)
        if missing:
            t0 = time.perf_counter()
            step = 256
            for i in range(0, len(missing), step):
                part = missing[i : i + step]
                vecs = self.embedder.embed([t for _k, t in part])
                for (k, _t), v in zip(part, vecs, strict=True):
                    self.table[k] = v
                self.dirty = True
                if len(part) >= 16:
                    self.save()
                done = min(i + step, len(missing))
                rate = done / (time.perf_counter() - t0)
                if len(missing) > 1:
                    print(f"  {done}/{len(missing)} ({rate:.1f}/s)", file=sys.stderr)
            self.seconds += time.perf_counter() - t0
            self.embedded += len(missing)
        return np.stack([self.table[k] for k in keys])


class LookupEmbedder:
    """An Embedder (sealedkb.embed Protocol) that answers from precomputed vectors and
    falls back to the real model: benchmarks supply the same embeddings to both modes."""

    def __init__(self, cache: EmbeddingCache) -> None:
        self.cache = cache

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def dim(self) -> int:
        return 384

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        return self.cache.vectors(texts, label="texts")


def chunk_texts(chunks: Sequence[Chunk]) -> list[str]:
    return [embedding_text(c.title, c.content) for c in chunks]


if __name__ == "__main__":
    # Precompute: python bench/corpus.py [sections...]
    secs = sys.argv[1:] or list(SECTIONS)
    cs = doc_chunks(secs)
    cache = EmbeddingCache()
    v = cache.vectors(chunk_texts(cs), label="chunks")
    print(f"{len(cs)} chunks, vectors {v.shape}, cache {cache.path}")
