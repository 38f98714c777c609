"""The embedded log store: the ``production_logs`` table of the flywheel's PostgreSQL.

``import_file`` is what ``flywheel logs import`` runs: JSONL (plain, ``.gz`` or a binary stream
such as stdin) read as bytes, each line validated, redacted (unless raw storage was chosen) and
stored once. A file is identified by the sha256 of its (decompressed) content, never by its name:
the very same content imported again is recognised before anything is parsed, and a corrected file
is new content whose records are stored (records it shares with the earlier file are already
there and are counted as such). Lines that cannot be used are quarantined at stage ``ingest``,
with the reason and a message that names the file, the line and the fix.

``PostgresLogSource`` is the log source of a flywheel run (the production alternative is
``flywheel.adapters.elasticsearch``): discovery counts, curation's scan and its fetch by id.
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import tempfile
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import IO, Any

from flywheel.adapters import postgres as store
from flywheel.ingest import StoredRecord, prepare_batch
from flywheel.records import DEFAULT_MAX_BYTES, RawLine, Rejection, iter_jsonl_lines

GZIP_MAGIC = b"\x1f\x8b"


@dataclass(frozen=True)
class SourceItem:
    """One record as a log source returns it: the key to fetch it again, a reference a person can
    follow, the record (text or decoded), and whether it was stored redacted."""

    fetch_key: Any
    ref: str
    data: Any
    redacted: bool = False


class PostgresLogSource:
    """The ``production_logs`` table as a log source."""

    name = "postgres"

    def __init__(self, conn, *, batch: int = 2000) -> None:
        self.conn = conn
        self.batch = batch

    def count_by_workload(self, start: datetime, end: datetime) -> dict[str, int]:
        """Usable records per workload in [start, end): distinct normalized requests."""
        rows = store.fetch_all(self.conn, "count_by_workload", {"start": start, "end": end})
        return {r["workload_id"]: int(r["n"]) for r in rows}

    def scan(self, workload_id: str, start: datetime, end: datetime) -> Iterator[SourceItem]:
        """Every record of one workload in [start, end), oldest first, streamed in batches."""
        # A server-side cursor (psycopg2 and psycopg 3 alike): rows arrive in batches, never all at once.
        cur = self.conn.cursor(name="scan_workload_logs")
        try:
            cur.itersize = self.batch
            cur.execute(store.queries()["scan_workload_logs"], {"workload_id": workload_id, "start": start, "end": end})
            for row_id, ref, raw, redacted in cur:
                yield SourceItem(row_id, ref, raw, redacted)
        finally:
            cur.close()
            self.conn.commit()

    def fetch(self, keys: list[Any]) -> Iterator[SourceItem]:
        """The records of these row ids (any order)."""
        for i in range(0, len(keys), self.batch):
            chunk = [int(k) for k in keys[i:i + self.batch]]
            with store.transaction(self.conn) as cur:
                cur.execute(store.queries()["fetch_logs_by_id"], {"ids": chunk})
                rows = cur.fetchall()
            for row_id, ref, raw, redacted in rows:
                yield SourceItem(row_id, ref, raw, redacted)


# ---------------------------------------------------------------- import

@dataclass
class ImportReport:
    """What one import did; ``lines == blank + stored + already_stored + quarantined``."""

    name: str
    content_sha256: str = ""
    lines: int = 0
    blank: int = 0
    stored: int = 0
    already_stored: int = 0
    quarantined: int = 0
    reasons: Counter = field(default_factory=Counter)
    pii: Counter = field(default_factory=Counter)
    redacted: bool = True
    same_as: str | None = None  # the earlier import of the very same content, if any

    def check(self) -> None:
        assert self.lines == self.blank + self.stored + self.already_stored + self.quarantined, \
            "import counts do not add up"

    def summary(self) -> str:
        if self.same_as:
            return f"{self.name}: the very same content was already imported ({self.same_as}); nothing new stored"
        reasons = ", ".join(f"{r} {n}" for r, n in sorted(self.reasons.items())) or "none"
        pii = ", ".join(f"{e} {n}" for e, n in sorted(self.pii.items())) or "none"
        return (f"{self.name}: {self.lines} lines: {self.stored} stored ({'redacted' if self.redacted else 'RAW'}), "
                f"{self.already_stored} already stored, {self.quarantined} quarantined ({reasons}), "
                f"{self.blank} blank; PII replaced: {pii}")

    def to_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["reasons"], d["pii"] = dict(self.reasons), dict(self.pii)
        return d


def _sha256_of(opener: Callable[[], IO[bytes]]) -> str:
    h = hashlib.sha256()
    with opener() as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _opener(path: Path) -> Callable[[], IO[bytes]]:
    """Opens the file's content: decompressed when it is gzip (by its magic bytes, not its name)."""
    with path.open("rb") as fh:
        gz = fh.read(2) == GZIP_MAGIC
    return (lambda: gzip.open(path, "rb")) if gz else (lambda: path.open("rb"))


def spool_stdin(stream: IO[bytes], directory: Path | None = None) -> Path:
    """Standard input copied to a temporary file (it can be read only once; the content hash
    must be known before anything is stored)."""
    fd, name = tempfile.mkstemp(prefix="flywheel-stdin-", suffix=".jsonl", dir=directory)
    with os.fdopen(fd, "wb") as out:
        shutil.copyfileobj(stream, out, 1 << 20)
    return Path(name)


def _batches(lines: Iterable[RawLine], source: str, size: int) -> Iterator[list[tuple[str, RawLine]]]:
    batch: list[tuple[str, RawLine]] = []
    for line in lines:
        batch.append((f"{source}:{line.number}", line))
        if len(batch) >= size:
            yield batch
            batch = []
    if batch:
        yield batch


def import_file(
    conn, path: Path, *, name: str | None = None, redact: bool = True, max_bytes: int = DEFAULT_MAX_BYTES,
    workers: int = 1, batch: int = 500, progress: Callable[[int], None] | None = None,
) -> ImportReport:
    """Import one JSONL file (plain or gzip) into ``production_logs``; see the module docstring.

    ``progress`` is called with the number of bytes read so far (of the decompressed content).
    ``workers`` > 1 validates and redacts in that many processes (Presidio is the slow part).
    """
    path = Path(path)
    name = name or path.name
    opener = _opener(path)
    digest = _sha256_of(opener)
    report = ImportReport(name=name, content_sha256=digest, redacted=redact)
    earlier = store.fetch_all(conn, "find_import", {"content_sha256": digest})
    if earlier:
        e = earlier[0]
        report.same_as = f"import #{e['id']} of {e['name']} on {e['imported_at']:%Y-%m-%d %H:%M} UTC, {e['stored']} stored"
        with opener() as fh:
            for line in iter_jsonl_lines(fh, max_bytes=max_bytes):
                report.lines += 1
                if line.blank:
                    report.blank += 1
                else:
                    report.already_stored += 1
        report.check()
        return report
    import_id = store.fetch_all(conn, "insert_import", {"content_sha256": digest, "name": name, "redacted": redact})[0]["id"]
    # The stored source names the content, so two different files of the same name never collide.
    source = f"{name}@{digest[:12]}"
    pool = ProcessPoolExecutor(max_workers=workers) if workers > 1 else None
    try:
        with opener() as fh:
            counted = _CountingReader(fh, progress)
            lines = iter_jsonl_lines(counted, max_bytes=max_bytes)
            blank_counter = _Blank(report)
            batches = _batches(blank_counter.filter(lines), source, batch)
            if pool is None:
                results = (prepare_batch(b, redact, max_bytes) for b in batches)
            else:
                results = _ordered_map(pool, batches, redact, max_bytes, workers)
            for prepared in results:
                _store_batch(conn, prepared, report, import_id, source)
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    report.lines = report.blank + report.stored + report.already_stored + report.quarantined
    report.check()
    store.execute(conn, "finish_import", {
        "id": import_id, "lines": report.lines, "blank": report.blank, "stored": report.stored,
        "already_stored": report.already_stored, "quarantined": report.quarantined,
        "reasons": dict(report.reasons), "pii": dict(report.pii),
    })
    return report


def _ordered_map(pool: ProcessPoolExecutor, batches: Iterator[list], redact: bool, max_bytes: int,
                 workers: int) -> Iterator[list]:
    """Batches processed by the pool, results in input order, at most 2 x workers in flight."""
    from collections import deque

    pending: deque = deque()
    for b in batches:
        pending.append(pool.submit(prepare_batch, b, redact, max_bytes))
        if len(pending) >= 2 * workers:
            yield pending.popleft().result()
    while pending:
        yield pending.popleft().result()


class _CountingReader:
    """Passes reads through and reports how many bytes were read (for the progress bar)."""

    def __init__(self, fh: IO[bytes], progress: Callable[[int], None] | None) -> None:
        self.fh, self.progress, self.n = fh, progress, 0

    def readline(self, size: int = -1) -> bytes:
        data = self.fh.readline(size)
        self.n += len(data)
        if self.progress is not None:
            self.progress(self.n)
        return data


class _Blank:
    """Counts whitespace-only lines and passes the others on."""

    def __init__(self, report: ImportReport) -> None:
        self.report = report

    def filter(self, lines: Iterable[RawLine]) -> Iterator[RawLine]:
        for line in lines:
            if line.blank:
                self.report.blank += 1
            else:
                yield line


def _store_batch(conn, prepared: list[StoredRecord | Rejection], report: ImportReport, import_id: int,
                 source: str) -> None:
    quarantine = []
    with store.transaction(conn) as cur:
        sql = store.queries()["insert_log"]
        for item in prepared:
            if isinstance(item, Rejection):
                report.quarantined += 1
                report.reasons[item.reason] += 1
                quarantine.append({"run_key": None, "stage": "ingest", "source_ref": item.source_id,
                                   "workload_id": None, "reason": item.reason, "field": item.field,
                                   "detail": item.detail})
                continue
            cur.execute(sql, {
                "source": source, "line_no": int(item.source_ref.rsplit(":", 1)[1]), "ts": item.timestamp,
                "workload_id": item.workload_id, "client_id": item.client_id, "raw": item.document,
                "record_hash": item.record_hash, "request_key": item.request_key, "redacted": item.redacted,
                "import_id": import_id,
            })
            if cur.fetchone() is None:
                report.already_stored += 1
            else:
                report.stored += 1
                report.pii.update(item.pii)
        sql = store.queries()["insert_quarantine"]
        for row in quarantine:
            cur.execute(sql, row)


def store_prepared(conn, items: Iterable[StoredRecord], *, source: str = "capture") -> tuple[int, int]:
    """Store records prepared elsewhere (the capture client); returns (stored, already stored)."""
    stored = already = 0
    with store.transaction(conn) as cur:
        sql = store.queries()["insert_log"]
        for item in items:
            cur.execute(sql, {
                "source": source, "line_no": None, "ts": item.timestamp, "workload_id": item.workload_id,
                "client_id": item.client_id, "raw": item.document, "record_hash": item.record_hash,
                "request_key": item.request_key, "redacted": item.redacted, "import_id": None,
            })
            if cur.fetchone() is None:
                already += 1
            else:
                stored += 1
    return stored, already


def purge_raw(conn, retention_days: int, *, now: datetime | None = None) -> int:
    """Delete raw (unredacted) records stored more than ``retention_days`` ago; returns how many."""
    before = (now or datetime.now(timezone.utc)) - timedelta(days=retention_days)
    with store.transaction(conn) as cur:
        cur.execute(store.queries()["purge_raw_logs"], {"before": before})
        return cur.rowcount


def import_lines(conn, lines: Iterable[str], path: Path, *, name: str | None = None, **kwargs: Any) -> ImportReport:
    """Write text lines to ``path`` (one per line) and import that file (tests, the demo)."""
    path.write_bytes(b"".join(line.encode("utf-8", "surrogatepass") + b"\n" for line in lines))
    return import_file(conn, path, name=name, **kwargs)


def loads_document(document: Any) -> Any:
    """A stored record back as a dict (``raw`` holds its canonical JSON text)."""
    return json.loads(document) if isinstance(document, str) else document
