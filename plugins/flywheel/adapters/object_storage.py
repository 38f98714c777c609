"""Artifacts (datasets, trainer inputs, adapters, predictions) in object storage.

Addressed by content hash so that a retried or re-run task finds what already exists instead of
recomputing it. The root is ``FLYWHEEL_ARTIFACTS``: a ``file://`` folder in the embedded default,
``s3://bucket/prefix`` (or any fsspec scheme with an Airflow connection) in production.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from flywheel.records import dumps_jsonl, read_jsonl_text


def artifact_root() -> ObjectStoragePath:
    root = os.environ.get("FLYWHEEL_ARTIFACTS")
    if not root:
        home = Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")).resolve()
        root = f"file://{home}/artifacts"
    return ObjectStoragePath(root)


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def put_content(kind: str, data: bytes, suffix: str, root: ObjectStoragePath | None = None) -> str:
    """Store ``data`` under ``<root>/<kind>/<sha256><suffix>`` once; return its URI."""
    root = root or artifact_root()
    path = root / kind / f"{sha256(data)}{suffix}"
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
        tmp.write_bytes(data)
        tmp.rename(path)  # readers never see a half-written artifact
    return str(path)


def put_jsonl(kind: str, rows: list[dict[str, Any]], root: ObjectStoragePath | None = None) -> str:
    return put_content(kind, dumps_jsonl(rows).encode("utf-8"), ".jsonl", root)


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines() would also split inside a record at U+2028, U+0085...
    return read_jsonl_text(ObjectStoragePath(uri).read_bytes())


class JsonlWriter:
    """Rows streamed to a local spill file, then stored once under their content hash, like
    ``put_jsonl`` but without holding the rows in memory::

        with JsonlWriter("datasets") as out:
            for row in rows:
                out.write(row)
        uri = out.uri
    """

    def __init__(self, kind: str, root: ObjectStoragePath | None = None) -> None:
        self.kind, self.root = kind, root
        self.uri: str | None = None
        self.rows = 0

    def __enter__(self) -> JsonlWriter:
        import tempfile

        self._hash = hashlib.sha256()
        self._file = tempfile.NamedTemporaryFile("wb", prefix="flywheel-jsonl-", suffix=".jsonl", delete=False)
        return self

    def write(self, row: dict[str, Any]) -> None:
        data = dumps_jsonl([row]).encode("utf-8")
        self._hash.update(data)
        self._file.write(data)
        self.rows += 1

    def __exit__(self, exc_type, *exc) -> None:
        import shutil

        self._file.close()
        try:
            if exc_type is None:
                root = self.root or artifact_root()
                path = root / self.kind / f"{self._hash.hexdigest()}.jsonl"
                if not path.exists():
                    path.parent.mkdir(parents=True, exist_ok=True)
                    tmp = path.parent / f".{path.name}.tmp-{os.getpid()}"
                    with open(self._file.name, "rb") as src, tmp.open("wb") as dst:
                        shutil.copyfileobj(src, dst, 1 << 20)
                    tmp.rename(path)  # readers never see a half-written artifact
                self.uri = str(path)
        finally:
            os.unlink(self._file.name)


def local_path(uri: str) -> Path:
    """The local file behind a ``file://`` URI (the local GPU backend runs on this machine)."""
    p = ObjectStoragePath(uri)
    if p.protocol not in ("file", "local", ""):
        raise ValueError(
            f"{uri} is not on the local file system; the local backend needs FLYWHEEL_ARTIFACTS=file://..."
        )
    return Path(p.path)
