"""Where captured records go: the flywheel's PostgreSQL, or an Elasticsearch index.

Both store each record once (keyed by its content hash), so a retried batch never duplicates.
"""

from __future__ import annotations

import json
import threading
from typing import Any


class PostgresSink:
    """The ``production_logs`` table of the flywheel's database (the embedded default's log store).

    The schema is the flywheel's (``include/sql/migrations``, applied by every flywheel run and by
    ``flywheel up``): the application's database user needs INSERT on ``production_logs`` only.
    """

    def __init__(self, dsn: str, *, source: str | None = None) -> None:
        self.dsn = dsn
        self.source = source
        self._conn = None
        self._lock = threading.Lock()

    def _connection(self):
        if self._conn is None or getattr(self._conn, "closed", False):
            import psycopg2

            self._conn = psycopg2.connect(self.dsn)
        return self._conn

    def write(self, records: list) -> tuple[int, int]:
        from flywheel.adapters.postgres_logs import store_prepared

        with self._lock:
            try:
                return store_prepared(self._connection(), records, source=self.source or "capture")
            except Exception:
                # A broken connection is replaced on the next batch.
                if self._conn is not None:
                    try:
                        self._conn.close()
                    except Exception:
                        pass
                self._conn = None
                raise

    def close(self) -> None:
        if self._conn is not None:
            self._conn.close()


class ElasticsearchSink:
    """An index in the NVIDIA blueprint's document format: ``timestamp`` in integer epoch seconds
    (as the blueprint writes it), ``workload_id``, ``client_id``, ``request``, ``response``.

    ``client`` is an ``elasticsearch.Elasticsearch`` or a URL. Documents are created with the
    record's content hash as ``_id``: a record sent twice is stored once.
    """

    def __init__(self, client: Any, index: str = "flywheel") -> None:
        if isinstance(client, str):
            from elasticsearch import Elasticsearch

            client = Elasticsearch(client)
        self.client = client
        self.index = index

    @staticmethod
    def document(record) -> dict[str, Any]:
        doc = json.loads(record.document)
        doc["timestamp"] = int(record.timestamp.timestamp())
        return {k: doc[k] for k in ("timestamp", "workload_id", "client_id", "request", "response")}

    def write(self, records: list) -> tuple[int, int]:
        operations: list[dict[str, Any]] = []
        for record in records:
            operations.append({"create": {"_index": self.index, "_id": record.record_hash}})
            operations.append(self.document(record))
        response = self.client.bulk(operations=operations)
        body = response.body if hasattr(response, "body") else response
        stored = already = failed = 0
        reasons = []
        for item in body.get("items", []):
            result = item.get("create") or {}
            status = int(result.get("status", 500))
            if 200 <= status < 300:
                stored += 1
            elif status == 409:  # version_conflict_engine_exception: this _id exists
                already += 1
            else:
                failed += 1
                reasons.append((result.get("error") or {}).get("type", str(status)))
        if failed:
            raise RuntimeError(f"{failed} of {len(records)} documents were refused: {sorted(set(reasons))}")
        return stored, already
