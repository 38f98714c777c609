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
    data = "".join(json.dumps(r, sort_keys=True, ensure_ascii=False) + "\n" for r in rows).encode()
    return put_content(kind, data, ".jsonl", root)


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    text = ObjectStoragePath(uri).read_text(encoding="utf-8")
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def local_path(uri: str) -> Path:
    """The local file behind a ``file://`` URI (the local GPU backend runs on this machine)."""
    p = ObjectStoragePath(uri)
    if p.protocol not in ("file", "local", ""):
        raise ValueError(
            f"{uri} is not on the local file system; the local backend needs FLYWHEEL_ARTIFACTS=file://..."
        )
    return Path(p.path)
