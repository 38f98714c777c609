"""What the domain needs of a sentence-embedding model (ICL example selection, the similarity scorer).

The implementation that runs a real model (all-MiniLM-L6-v2 on CPU) is an adapter:
``flywheel.adapters.embeddings.LocalMiniLM``. The domain only sees this protocol, so it never
imports torch.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Embedder(Protocol):
    """Turns texts into L2-normalised float32 vectors, one row per text."""

    name: str

    def embed(self, texts: list[str]) -> np.ndarray:
        """Shape (len(texts), d); an empty list gives shape (0, d)."""
        ...
