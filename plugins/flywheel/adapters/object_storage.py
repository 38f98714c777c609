"""Artifacts (datasets, trainer inputs, adapters, predictions, metrics) in object storage.

The root is ``FLYWHEEL_ARTIFACTS``: a ``file://`` folder in the embedded default, ``s3://bucket/prefix``
in production (any scheme Airflow's ObjectStoragePath has a filesystem for), with its credentials
from the Airflow connection ``FLYWHEEL_ARTIFACTS_CONN_ID`` (default ``flywheel_artifacts``; an
``aws`` connection: login/password = key/secret, extra ``endpoint_url`` and ``region_name``).

Layout (every key below the root):

    runs/<run>/datasets/<sha256>.jsonl          a workload's curated dataset
    runs/<run>/inputs/<sha256>.jsonl            what a GPU job reads (eval prompts, train, val)
    runs/<run>/experiments/<experiment>/        what a GPU job writes: predictions.jsonl (last),
                                                metrics.json, adapter/
    cache/experiments/<fingerprint>.json        the completed output of a job fingerprint

Run-scoped: two runs that overlap on the same workload never write the same key. Content-addressed:
a file's name is the hash of its bytes, an experiment's folder the hash of everything that
determines its result, so a retried task finds what it wrote before, and a later run that would
compute the same result copies it (``cache/``) instead of recomputing it. Untrusted names (run ids,
workload ids) never reach a key unhashed.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import uuid
from pathlib import Path
from typing import Any

from airflow.sdk import ObjectStoragePath

from flywheel.records import dumps_jsonl, read_jsonl_text

ARTIFACTS_CONN_ID = "flywheel_artifacts"
PREDICTIONS = "predictions.jsonl"  # the trainer writes it last: its presence means the job finished
METRICS = "metrics.json"
_UNSAFE = re.compile(r"[^A-Za-z0-9_.-]+")
_LOCAL = ("file", "local", "")


def conn_id() -> str:
    return os.environ.get("FLYWHEEL_ARTIFACTS_CONN_ID", ARTIFACTS_CONN_ID)


def root_uri() -> str:
    root = os.environ.get("FLYWHEEL_ARTIFACTS")
    if not root:
        home = Path(os.environ.get("FLYWHEEL_HOME", ".flywheel")).resolve()
        root = f"file://{home}/artifacts"
    return root.rstrip("/")


def path(uri: str) -> ObjectStoragePath:
    """The store's view of a URI: remote schemes get the artifacts connection's credentials."""
    p = ObjectStoragePath(uri)
    if p.protocol in _LOCAL:
        return p
    return ObjectStoragePath(uri, conn_id=conn_id())


def artifact_root() -> ObjectStoragePath:
    return path(root_uri())


def uri_of(p: ObjectStoragePath) -> str:
    """A plain URI (no connection id in it): what XCom, the database and the trainer carry."""
    return f"{p.protocol}://{p.path}" if p.protocol not in _LOCAL else f"file://{p.path}"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def safe_key(raw: str, max_len: int = 48) -> str:
    """A key segment from an untrusted name: readable prefix + hash (unique, no '/' or '..')."""
    readable = _UNSAFE.sub("_", raw)[:max_len].strip("_.-") or "x"
    return f"{readable}-{sha256(raw.encode())[:12]}"


def run_prefix(run_key: str) -> str:
    return f"runs/{safe_key(run_key, 80)}"


def _write_atomic(target: ObjectStoragePath, data: bytes) -> None:
    if target.protocol in _LOCAL:
        # Readers never see a half-written file: write beside it, then rename.
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        tmp.write_bytes(data)
        tmp.rename(target)
    else:
        target.write_bytes(data)  # an object store PUT is atomic: an object is whole or absent


def put_content(kind: str, data: bytes, suffix: str, root: ObjectStoragePath | None = None, *, run_key: str) -> str:
    """Store ``data`` once under ``<root>/runs/<run>/<kind>/<sha256><suffix>``; return its URI."""
    root = root or artifact_root()
    target = root / run_prefix(run_key) / kind / f"{sha256(data)}{suffix}"
    if not target.exists():
        _write_atomic(target, data)
    return uri_of(target)


def jsonl_bytes(rows: list[dict[str, Any]]) -> bytes:
    return dumps_jsonl(rows).encode("utf-8")


def put_jsonl(kind: str, rows: list[dict[str, Any]], root: ObjectStoragePath | None = None, *, run_key: str) -> str:
    return put_content(kind, jsonl_bytes(rows), ".jsonl", run_key=run_key, root=root)


def read_text(uri: str) -> str:
    return path(uri).read_text(encoding="utf-8")


def read_bytes(uri: str) -> bytes:
    return path(uri).read_bytes()


def read_jsonl(uri: str) -> list[dict[str, Any]]:
    # Split on "\n" only: str.splitlines() would also split inside a record at U+2028, U+0085...
    return read_jsonl_text(read_bytes(uri))


class JsonlWriter:
    """Rows streamed to a local spill file, then stored once under their content hash, like
    ``put_jsonl`` but without holding the rows in memory::

        with JsonlWriter("datasets", run_key=plan["run_key"]) as out:
            for row in rows:
                out.write(row)
        uri = out.uri
    """

    def __init__(self, kind: str, root: ObjectStoragePath | None = None, *, run_key: str) -> None:
        self.kind, self.root, self.run_key = kind, root, run_key
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
        self._file.close()
        try:
            if exc_type is None:
                root = self.root or artifact_root()
                target = root / run_prefix(self.run_key) / self.kind / f"{self._hash.hexdigest()}.jsonl"
                if not target.exists():
                    _upload_atomic(self._file.name, target)
                self.uri = uri_of(target)
        finally:
            os.unlink(self._file.name)


def _upload_atomic(local_file: str, target: ObjectStoragePath) -> None:
    if target.protocol in _LOCAL:
        import shutil

        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.parent / f".{target.name}.tmp-{uuid.uuid4().hex}"
        with open(local_file, "rb") as src, tmp.open("wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        tmp.rename(target)
    else:
        target.fs.put_file(local_file, target.path)  # one PUT (or multipart upload): whole or absent


def read_json(uri: str) -> Any:
    return json.loads(read_text(uri))


def write_json(uri: str, obj: Any) -> None:
    _write_atomic(path(uri), (json.dumps(obj, sort_keys=True, indent=1) + "\n").encode())


def exists(uri: str) -> bool:
    return path(uri).exists()


# --- experiments: run-scoped outputs, reused across runs by fingerprint --------------------------

def experiment_uri(run_key: str, experiment_key: str, root: ObjectStoragePath | None = None) -> str:
    """The folder one experiment of one run writes (never shared with another run)."""
    root = root or artifact_root()
    return uri_of(root / run_prefix(run_key) / "experiments" / safe_key(experiment_key, 60))


def is_complete(output_uri: str) -> bool:
    return exists(f"{output_uri}/{PREDICTIONS}") and exists(f"{output_uri}/{METRICS}")


def _cache_entry(fingerprint: str, root: ObjectStoragePath | None = None) -> ObjectStoragePath:
    return (root or artifact_root()) / "cache" / "experiments" / f"{fingerprint}.json"


def remember_output(fingerprint: str, output_uri: str, root: ObjectStoragePath | None = None) -> None:
    """Record a completed job output so a later run with the same fingerprint can reuse it."""
    entry = _cache_entry(fingerprint, root)
    _write_atomic(entry, (json.dumps({"output_uri": output_uri}) + "\n").encode())


def reuse_output(fingerprint: str, output_uri: str, root: ObjectStoragePath | None = None) -> str | None:
    """Fill ``output_uri`` from an earlier run's identical job; returns where it came from, or
    None when there is nothing (complete) to reuse. The copy keeps the run's outputs its own: a
    deployment points at them even after the other run's artifacts are cleaned up."""
    if is_complete(output_uri):
        return output_uri  # this run wrote it already (a retried task)
    entry = _cache_entry(fingerprint, root)
    if not entry.exists():
        return None
    source = json.loads(entry.read_text(encoding="utf-8"))["output_uri"]
    if source == output_uri or not is_complete(source):
        return None
    copy_tree(source, output_uri)
    return source


def copy_tree(source: str, target: str) -> int:
    """Copy every file under ``source`` to the same relative key under ``target`` (server-side
    within one store); ``predictions.jsonl`` last, as the trainer writes it, so a copy cut short
    never looks complete. Returns the number of files."""
    src, dst = path(source), path(target)
    files = sorted(src.fs.find(src.path), key=lambda f: (f.rsplit("/", 1)[-1] == PREDICTIONS, f))
    for f in files:
        rel = f[len(src.path.rstrip("/")):].lstrip("/")
        out = dst / rel
        if src.samestore(dst):
            dst.fs.makedirs(out.parent.path, exist_ok=True)
            src.fs.copy(f, out.path)
        else:
            _write_atomic(out, src.fs.cat_file(f))
    return len(files)


# --- credentials for processes that read the store themselves (the trainer) -----------------------

def trainer_env() -> dict[str, str]:
    """The standard AWS variables for the trainer (fsspec/s3fs read them), from the artifacts
    connection; nothing for a local root. A missing connection gives nothing: the trainer then uses
    its own default credential chain (e.g. a Kubernetes service account's role)."""
    if ObjectStoragePath(root_uri()).protocol in _LOCAL:
        return {}
    from airflow.providers.amazon.aws.hooks.s3 import S3Hook

    hook = S3Hook(aws_conn_id=conn_id())
    env: dict[str, str] = {}
    creds = hook.get_credentials()
    if creds.access_key:
        env["AWS_ACCESS_KEY_ID"] = creds.access_key
        env["AWS_SECRET_ACCESS_KEY"] = creds.secret_key
        if creds.token:
            env["AWS_SESSION_TOKEN"] = creds.token
    endpoint = hook.conn_config.get_service_endpoint_url(service_name="s3")
    if endpoint:
        env["AWS_ENDPOINT_URL"] = endpoint
    if hook.conn_region_name:
        env["AWS_DEFAULT_REGION"] = hook.conn_region_name
    return env
