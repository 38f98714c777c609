"""From a raw log line to the record the log store keeps: validated, normalized, redacted.

Used by ``flywheel logs import`` and by the capture client, so both store exactly the same
shape: the record as :meth:`LogRecord.to_dict` writes it (ISO-8601 UTC timestamp, request and
response as objects, the client's ``client_id`` and any extra field kept), every string redacted
unless raw storage was chosen, plus the keys the store indexes — the record's content hash (a
record stored twice is stored once) and its normalized-request hash (discovery counts distinct
requests, i.e. records that survive dedup).

Pure functions over bytes and dicts: no database, no Airflow. :func:`prepare_batch` is what a
worker process runs when an import uses more than one core.
"""

from __future__ import annotations

import hashlib
import json
from collections import Counter
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from flywheel.curation import request_hash
from flywheel.pii import Redactor, redact_record
from flywheel.records import DEFAULT_MAX_BYTES, LogRecord, RawLine, Rejection, _rejection, parse_line, parse_obj


@dataclass(frozen=True)
class StoredRecord:
    """One record as the log store keeps it."""

    source_ref: str
    timestamp: datetime
    workload_id: str
    client_id: str
    document: str          # the record as canonical JSON text (redacted unless raw storage was chosen)
    record_hash: str       # sha256 of ``document``: the same record is stored once
    request_key: str       # normalized-request hash (flywheel.curation.request_hash)
    redacted: bool
    pii: dict[str, int]


def canonical_json(obj: Any) -> str:
    # ensure_ascii: U+2028/U+2029/U+0085 and every other non-ASCII character are escaped, so the
    # stored text is plain ASCII and no reader can mistake anything in it for a line end.
    return json.dumps(obj, sort_keys=True, ensure_ascii=True, separators=(",", ":"))


def store_record(record: LogRecord, *, redact: bool = True, redactor: Redactor | None = None) -> StoredRecord:
    """Redact (unless ``redact`` is False) and serialize one valid record for the store."""
    counts: Counter = Counter()
    if redact:
        record, counts = redact_record(record, redactor)
    document = canonical_json(record.to_dict())
    return StoredRecord(
        source_ref=record.source_id, timestamp=record.timestamp, workload_id=record.workload_id,
        client_id=record.client_id, document=document,
        record_hash=hashlib.sha256(document.encode("ascii")).hexdigest(),
        request_key=request_hash(record), redacted=redact, pii=dict(counts),
    )


def prepare_line(source_ref: str, line: RawLine | bytes | str, *, redact: bool = True,
                 redactor: Redactor | None = None, max_bytes: int = DEFAULT_MAX_BYTES) -> StoredRecord | Rejection:
    """Validate, redact and serialize one raw line, or say why it is quarantined."""
    if isinstance(line, RawLine):
        if line.oversize:
            return _rejection(source_ref, "too_large", "",
                              f"{line.oversize} bytes is over the {max_bytes}-byte limit; log attachments by "
                              "reference, or raise curation.max_record_bytes")
        line = line.data
    parsed = parse_line(source_ref, line, max_bytes=max_bytes)
    if isinstance(parsed, Rejection):
        return parsed
    return store_record(parsed, redact=redact, redactor=redactor)


def prepare_obj(source_ref: str, obj: Any, *, redact: bool = True, redactor: Redactor | None = None) -> StoredRecord | Rejection:
    """Like :func:`prepare_line` for a record that is already a dict (the capture client)."""
    parsed = parse_obj(source_ref, obj)
    if isinstance(parsed, Rejection):
        return parsed
    return store_record(parsed, redact=redact, redactor=redactor)


def prepare_batch(batch: list[tuple[str, RawLine]], redact: bool, max_bytes: int) -> list[StoredRecord | Rejection]:
    """A worker process's share of an import (the default Presidio redactor of that process)."""
    return [prepare_line(ref, line, redact=redact, max_bytes=max_bytes) for ref, line in batch]
