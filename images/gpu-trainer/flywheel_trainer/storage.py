"""The job's inputs and outputs as URIs, through fsspec: a local path, ``file://``, ``s3://``, ``gs://``...

No Airflow here (the trainer image has none): credentials come the standard way of each
filesystem, e.g. AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY / AWS_ENDPOINT_URL for s3://, which the
flywheel's backends set from an Airflow connection or a Kubernetes secret.

Every error names the spec field (and, for the model, the flywheel config key) and the URI.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from flywheel_trainer.spec import SpecError

CACHE_ENV = "FLYWHEEL_MODEL_CACHE"
_COMPLETE = ".flywheel-complete"


def _fs(uri: str):
    import fsspec

    try:
        return fsspec.core.url_to_fs(uri)
    except (ImportError, ValueError) as exc:  # an unknown scheme, or its filesystem package is missing
        raise SpecError(f"cannot open {uri!r}: {exc}") from exc


def is_local(uri: str) -> bool:
    return "://" not in uri or uri.startswith("file://")


def local_path(uri: str) -> Path:
    return Path(uri[len("file://"):] if uri.startswith("file://") else uri)


def join(uri: str, name: str) -> str:
    return uri.rstrip("/") + "/" + name


def read_text(uri: str, *, field: str) -> str:
    fs, path = _fs(uri)
    try:
        with fs.open(path, "r", encoding="utf-8") as fh:
            return fh.read()
    except FileNotFoundError:
        raise SpecError(f"spec field '{field}': {uri} does not exist; fix the URI or create it first") from None
    except (OSError, PermissionError) as exc:
        raise SpecError(f"spec field '{field}': cannot read {uri} ({type(exc).__name__}: {exc})") from exc


def read_jsonl(uri: str, *, field: str) -> list[dict[str, Any]]:
    """The JSON objects of a JSONL input, one per non-empty line."""
    rows = []
    # Split on "\n" only: str.splitlines() also splits inside a record at U+2028, U+0085, a bare CR...
    for n, line in enumerate(read_text(uri, field=field).split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"spec field '{field}': line {n} of {uri} is not valid JSON ({exc})") from exc
        if not isinstance(row, dict):
            raise SpecError(f"spec field '{field}': line {n} of {uri} is not a JSON object")
        rows.append(row)
    return rows


def exists(uri: str) -> bool:
    fs, path = _fs(uri)
    return fs.exists(path)


def model_dir(uri: str, *, candidate: str, cache_dir: str | Path | None = None) -> Path:
    """A local directory holding the model: the path itself, or an object-storage prefix copied
    once into the model cache (``FLYWHEEL_MODEL_CACHE``, default ``~/.cache/flywheel/models``)."""
    where = f"spec field 'model_uri' (candidates.{candidate}.model_path in the flywheel config)"
    if is_local(uri):
        path = local_path(uri)
        if not path.is_dir():
            raise SpecError(f"{where}: {path} does not exist or is not a directory; build or mount the model there")
        if not (path / "config.json").is_file():
            raise SpecError(f"{where}: {path} has no config.json; point it at a directory written by "
                            "save_pretrained (a Hugging Face model directory)")
        return path
    fs, remote = _fs(uri)
    cache = Path(cache_dir or os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "flywheel" / "models")
    target = cache / hashlib.sha256(uri.rstrip("/").encode()).hexdigest()[:24]
    if (target / _COMPLETE).is_file():
        return target
    try:
        if not fs.isfile(remote.rstrip("/") + "/config.json"):
            raise SpecError(f"{where}: {uri} has no config.json; point it at the prefix of a Hugging Face "
                            "model directory")
        cache.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=".download-", dir=cache))
        fs.get(remote.rstrip("/") + "/", str(staging) + "/", recursive=True)
    except SpecError:
        raise
    except (OSError, PermissionError) as exc:
        raise SpecError(f"{where}: cannot read {uri} ({type(exc).__name__}: {exc})") from exc
    (staging / _COMPLETE).write_text(uri + "\n")
    try:
        os.replace(staging, target)  # another job copying the same model at once: the first wins
    except OSError:
        shutil.rmtree(staging, ignore_errors=True)
    print(f"model {uri} copied to the local cache {target}", flush=True)
    return target


class Output:
    """The job's output location. Files are written to a local directory (the output itself when
    it is local) and published to the output URI; ``predictions.jsonl`` is published last, so its
    presence means the job finished."""

    def __init__(self, uri: str, *, work_root: str | Path | None = None) -> None:
        self.uri = uri.rstrip("/")
        if is_local(uri):
            self.local = local_path(uri)
            self.remote = False
        else:
            root = Path(work_root or os.environ.get("FLYWHEEL_TRAINER_WORKDIR") or tempfile.gettempdir())
            self.local = root / "flywheel-jobs" / hashlib.sha256(self.uri.encode()).hexdigest()[:24]
            self.remote = True
        try:
            self.local.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SpecError(f"spec field 'output_uri': cannot create {self.local} ({exc})") from exc

    def path(self, name: str) -> Path:
        return self.local / name

    def uri_of(self, name: str) -> str:
        return join(self.uri, name)

    def write_text(self, name: str, text: str) -> None:
        """Write (atomically, by rename) and publish one file."""
        path = self.local / name
        tmp = path.with_name(path.name + ".tmp")
        tmp.write_text(text, encoding="utf-8")
        os.replace(tmp, path)
        self.publish(name)

    def publish(self, name: str) -> None:
        """Copy a local file or directory to the output URI (nothing to do when it is local)."""
        if not self.remote:
            return
        fs, remote = _fs(self.uri_of(name))
        local = self.local / name
        try:
            if local.is_dir():
                fs.put(str(local) + "/", remote.rstrip("/") + "/", recursive=True)
            else:
                fs.put_file(str(local), remote)
        except (OSError, PermissionError) as exc:
            raise SpecError(f"spec field 'output_uri': cannot write {self.uri_of(name)} ({exc})") from exc

    def fetch(self, name: str) -> bool:
        """Copy a file or directory from the output URI to the local directory, if it is there."""
        if not self.remote:
            return (self.local / name).exists()
        fs, remote = _fs(self.uri_of(name))
        if not fs.exists(remote):
            return False
        (self.local / name).parent.mkdir(parents=True, exist_ok=True)  # a fresh machine has none of it
        if fs.isdir(remote):
            fs.get(remote.rstrip("/") + "/", str(self.local / name) + "/", recursive=True)
        else:
            fs.get_file(remote, str(self.local / name))
        return True

    def remove(self, name: str) -> None:
        (self.local / name).unlink(missing_ok=True)
        if self.remote:
            fs, remote = _fs(self.uri_of(name))
            if fs.exists(remote):
                fs.rm(remote)

    def remove_tree(self, name: str) -> None:
        shutil.rmtree(self.local / name, ignore_errors=True)
        if self.remote:
            fs, remote = _fs(self.uri_of(name))
            if fs.exists(remote):
                fs.rm(remote, recursive=True)

    def remove_other_trees(self, parent: str, *, keep: set[str]) -> None:
        """Delete everything under ``parent`` at the output URI except the names in ``keep``."""
        if not self.remote:
            return
        fs, remote = _fs(self.uri_of(parent))
        for entry in fs.ls(remote, detail=False):
            if entry.rstrip("/").rsplit("/", 1)[-1] not in keep:
                fs.rm(entry, recursive=True)
