"""Where production logs come from.

The embedded default keeps them in the ``production_logs`` table of the flywheel's PostgreSQL
(imported from JSONL); production reads an Elasticsearch index (a later issue adds that source
behind the same two methods). Records are stored raw: validation is curation's job, so a
malformed record is quarantined with its reason instead of being lost at the door.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from flywheel.adapters import postgres as store


class PostgresLogSource:
    """The ``production_logs`` table as a log store."""

    def __init__(self, conn) -> None:
        self.conn = conn

    def count_by_workload(self, start: datetime, end: datetime) -> dict[str, int]:
        rows = store.fetch_all(self.conn, "count_by_workload", {"start": start, "end": end})
        return {r["workload_id"]: int(r["n"]) for r in rows}

    def fetch(self, workload_id: str, start: datetime, end: datetime) -> Iterator[tuple[str, str]]:
        """(source_ref, raw line) of one workload in [start, end), oldest first, streamed."""
        # A server-side cursor (psycopg2 and psycopg 3 alike): rows arrive in batches, never all at once.
        cur = self.conn.cursor(name="fetch_workload_logs")
        try:
            cur.itersize = 2000
            cur.execute(store.queries()["fetch_workload_logs"],
                        {"workload_id": workload_id, "start": start, "end": end})
            yield from cur
        finally:
            cur.close()
            self.conn.commit()


@dataclass
class IngestReport:
    source: str
    lines: int = 0
    stored: int = 0           # routable: valid workload id and timestamp
    quarantined: int = 0      # stored raw too, but with no workload/timestamp to route it by
    reasons: dict[str, int] = field(default_factory=dict)

    def check(self) -> None:
        assert self.lines == self.stored + self.quarantined, "ingest counts do not add up"


def routing_fields(line: str) -> tuple[str | None, datetime | None, tuple[str, str, str] | None]:
    """(workload_id, timestamp, rejection) of a raw line; rejection = (reason, field, detail)."""
    from flywheel.records import parse_timestamp, valid_workload_id

    try:
        obj = json.loads(line)
    except (ValueError, RecursionError):
        return None, None, ("invalid_json", "", "the line is not valid JSON; log one JSON object per line")
    if not isinstance(obj, dict):
        return None, None, ("not_an_object", "", "a log record must be a JSON object")
    workload_id, ts = obj.get("workload_id"), obj.get("timestamp")
    if workload_id is None:
        return None, None, ("missing_field", "workload_id", "'workload_id' is required; tag every call in the logging client")
    if not valid_workload_id(workload_id):
        return None, None, ("invalid_workload_id", "workload_id",
                            "workload_id must match ^[A-Za-z0-9][A-Za-z0-9_.-]{0,63}$; fix the logging client's tag")
    parsed = parse_timestamp(ts)
    if parsed is None:
        return workload_id, None, ("invalid_timestamp", "timestamp",
                                   "timestamp must be an ISO-8601 date-time with a time zone")
    return workload_id, parsed, None


def ingest_jsonl(conn, path: Path, *, source: str | None = None, batch: int = 1000) -> IngestReport:
    """Import a JSONL file of production logs, idempotently (keyed by source + line number)."""
    source = source or path.name
    report = IngestReport(source=source)
    rows: list[dict] = []
    quarantine: list[dict] = []

    def flush() -> None:
        store.execute_many(conn, "insert_log", rows)
        store.execute_many(conn, "insert_quarantine", quarantine)
        rows.clear()
        quarantine.clear()

    with path.open(encoding="utf-8", errors="replace") as fh:
        for line_no, line in enumerate(fh, start=1):
            line = line.rstrip("\n")
            if not line.strip():
                continue
            report.lines += 1
            workload_id, ts, rejection = routing_fields(line)
            rows.append({"source": source, "line_no": line_no, "ts": ts,
                         "workload_id": workload_id if ts else None, "raw": line})
            if rejection:
                reason, fld, detail = rejection
                report.quarantined += 1
                report.reasons[reason] = report.reasons.get(reason, 0) + 1
                quarantine.append({"run_key": None, "stage": "ingest", "source_ref": f"{source}:{line_no}",
                                   "workload_id": None, "reason": reason, "field": fld,
                                   "detail": f"record {source}:{line_no}: {detail}"})
            else:
                report.stored += 1
            if len(rows) >= batch:
                flush()
    flush()
    report.check()
    return report


def ingest_lines(conn, lines: Iterable[str], path: Path, source: str | None = None) -> IngestReport:
    path.write_text("".join(l + "\n" for l in lines), encoding="utf-8")
    return ingest_jsonl(conn, path, source=source)
