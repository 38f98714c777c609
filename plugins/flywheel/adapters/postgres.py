"""PostgreSQL persistence of the flywheel: migrations, named queries and idempotent writes.

Functions take a DB-API connection: psycopg 3 inside Airflow tasks (what PostgresHook returns for
the ``flywheel_db`` connection), psycopg2 in the CLI and tests; only what both drivers share is
used (explicit commit/rollback, JSON passed as text). SQL lives in include/sql, never in
f-strings: every value is a bound parameter.
"""

from __future__ import annotations

import hashlib
import json
import re
from datetime import datetime, timezone
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

from flywheel.config import PROJECT_ROOT
from flywheel.deploy import comment_of, decision_outcome, reviewer_name

SQL_DIR = PROJECT_ROOT / "include" / "sql"
MIGRATIONS_DIR = SQL_DIR / "migrations"
_MIGRATION_NAME = re.compile(r"^(\d{4})_[a-z0-9_]+\.sql$")
# Any constant works: it only has to be the same for every process that migrates this database.
_MIGRATION_LOCK = 7_404_211


class MigrationError(RuntimeError):
    pass


@lru_cache(maxsize=1)
def queries() -> dict[str, str]:
    """The named queries of include/sql/queries.sql (``-- name: x`` sections)."""
    text = (SQL_DIR / "queries.sql").read_text(encoding="utf-8")
    out: dict[str, str] = {}
    for chunk in re.split(r"^-- name: ", text, flags=re.M)[1:]:
        name, _, body = chunk.partition("\n")
        out[name.strip()] = body.strip().rstrip(";")
    return out


def migrations(directory: Path = MIGRATIONS_DIR) -> list[tuple[int, str, str]]:
    found = []
    for path in sorted(directory.iterdir()):
        m = _MIGRATION_NAME.match(path.name)
        if m:
            found.append((int(m.group(1)), path.name, path.read_text(encoding="utf-8")))
    versions = [v for v, _, _ in found]
    duplicates = sorted({v for v in versions if versions.count(v) > 1})
    if duplicates:
        raise MigrationError(f"migrations in {directory} share the number(s) {duplicates}; give each its own")
    # Numbers need not be contiguous (work that lands in parallel takes its own range); they order
    # the files, and each is applied once.
    return found


def migrate(conn, directory: Path = MIGRATIONS_DIR) -> list[str]:
    """Apply the migrations not applied yet, each once, in order; returns the names applied.

    A migration that was edited after it was applied is an error (its checksum is recorded), so a
    database never silently diverges from the files. Concurrent callers serialise on an advisory lock.
    """
    applied_now = []
    with transaction(conn) as cur:
        cur.execute("SELECT pg_advisory_xact_lock(%s)", (_MIGRATION_LOCK,))
        cur.execute(
            "CREATE TABLE IF NOT EXISTS schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL,"
            " checksum TEXT NOT NULL, applied_at TIMESTAMPTZ NOT NULL DEFAULT now())"
        )
        cur.execute("SELECT version, name, checksum FROM schema_migrations")
        done = {v: (n, c) for v, n, c in cur.fetchall()}
        for version, name, sql in migrations(directory):
            checksum = hashlib.sha256(sql.encode()).hexdigest()
            if version in done:
                if done[version][1] != checksum:
                    raise MigrationError(
                        f"migration {name} changed after it was applied; add a new numbered migration instead"
                    )
                continue
            cur.execute(sql)
            cur.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES (%s, %s, %s)",
                (version, name, checksum),
            )
            applied_now.append(name)
    return applied_now


def _adapt(params: dict[str, Any]) -> dict[str, Any]:
    # JSON goes as text (cast by PostgreSQL to jsonb): the same with psycopg2 and psycopg 3.
    return {k: dumps(v) if isinstance(v, (dict, list)) else v for k, v in params.items()}


def _rows(cur) -> list[dict[str, Any]]:
    if cur.description is None:
        return []
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]


@contextmanager
def transaction(conn) -> Iterator[Any]:
    """A cursor whose statements commit together, or roll back together on an error."""
    cur = conn.cursor()
    try:
        yield cur
        conn.commit()
    except BaseException:
        conn.rollback()
        raise
    finally:
        cur.close()


def execute(conn, name: str, params: dict[str, Any] | None = None) -> None:
    with transaction(conn) as cur:
        cur.execute(queries()[name], _adapt(params or {}))


def execute_many(conn, name: str, rows: Iterable[dict[str, Any]]) -> int:
    """Run one named statement for many rows in a single transaction."""
    n = 0
    with transaction(conn) as cur:
        sql = queries()[name]
        for row in rows:
            cur.execute(sql, _adapt(row))
            n += 1
    return n


def fetch_all(conn, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    with transaction(conn) as cur:
        return run_query(cur, name, params)


def run_query(cur, name: str, params: dict[str, Any] | None = None) -> list[dict[str, Any]]:
    """A named query on an open cursor (for several statements in one transaction)."""
    cur.execute(queries()[name], _adapt(params or {}))
    return _rows(cur)


def advisory_lock(cur, key: str) -> None:
    """Serialise writers of one key (e.g. a workload's deployments) until the transaction ends."""
    cur.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (key,))


def dumps(obj: Any) -> str:
    return json.dumps(obj, sort_keys=True, ensure_ascii=False)


# --- review decisions -----------------------------------------------------------------------

def record_decision(conn, *, run_key: str, winner: dict[str, Any], decision: dict[str, Any],
                    evidence_hash: str | None = None) -> dict[str, Any]:
    """Append the decision on one review request (approved, rejected or timeout) and return it.

    Append-only: a retried task finds the decision already recorded and returns that one; the
    table refuses updates and deletes. Deploying an approved one is flywheel.adapters.deployments'.
    """
    outcome = decision_outcome(decision)
    key = {k: winner[k] for k in ("workload_id", "candidate", "strategy")}
    reviewer = reviewer_name(decision.get("responded_by_user")) if outcome != "timeout" else None
    decided_at = decision.get("responded_at") or datetime.now(timezone.utc)
    with transaction(conn) as cur:
        run_query(cur, "insert_review_decision", {
            "run_key": run_key, **key, "outcome": outcome, "reviewer": reviewer,
            "comment": comment_of(decision), "evidence_hash": evidence_hash, "detail": None,
            "decided_at": decided_at,
        })
        recorded = [r for r in run_query(cur, "review_decisions", {"run_key": run_key, "workload_id": key["workload_id"]})
                    if r["candidate"] == key["candidate"] and r["strategy"] == key["strategy"] and r["outcome"] != "refused"]
    first = recorded[0]
    return {"decision": first["outcome"], "reviewer": first["reviewer"] or "timeout", **key}
