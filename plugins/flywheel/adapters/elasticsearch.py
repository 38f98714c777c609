"""Elasticsearch as the log source (``logs.source: elasticsearch``), the production alternative to
the ``production_logs`` table.

The index is the NVIDIA blueprint's: one document per call, ``{timestamp, workload_id, client_id,
request, response}``, ``workload_id``/``client_id`` as keywords, ``timestamp`` as a ``date`` (the
blueprint writes integer epoch *seconds* into it, which Elasticsearch's default date format reads as
epoch *milliseconds*; see :meth:`ElasticsearchLogSource.time_bounds`), request/response unmapped.

- discovery: one ``terms`` aggregation on ``workload_id`` over the run's data interval;
- curation's scan: a point in time (PIT) and ``search_after`` pages sorted by ``timestamp`` and
  ``_shard_doc``, streamed page by page (never ``from``/``size`` paging, never an unbounded
  scroll), the PIT closed at the end whatever happens;
- curation's fetch of the kept records: ``ids`` queries in chunks.

Every response is checked: a failed shard, a timed-out search or an error status stops the run with
the reason, because a silently partial read would be a silently different dataset. The client is
``elasticsearch-py`` from the provider's ``ElasticsearchPythonHook`` (credentials from an Airflow
connection); for an Elasticsearch 8 cluster set ``AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH=8`` (the
provider then pins the ``compatible-with`` header the 9.x client sends). Records are redacted by
curation as they are read (nothing raw is written anywhere).
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from datetime import datetime
from typing import Any

from flywheel.curation import SourceItem

log = logging.getLogger(__name__)

# The blueprint's index mapping (src/lib/integration/es_client.py of NVIDIA's Data Flywheel).
BLUEPRINT_MAPPING = {
    "dynamic": "strict",
    "properties": {
        "workload_id": {"type": "keyword"},
        "client_id": {"type": "keyword"},
        "timestamp": {"type": "date"},
        "request": {"type": "object", "dynamic": False, "properties": {}},
        "response": {"type": "object", "dynamic": False, "properties": {}},
    },
}
MAX_WORKLOADS = 10_000  # terms buckets in one discovery


class ElasticsearchSourceError(RuntimeError):
    """Elasticsearch answered with an error, a failed shard or a timeout; the message says which."""


def _check(response: Any, what: str) -> dict[str, Any]:
    body = response.body if hasattr(response, "body") else response
    if not isinstance(body, dict):
        raise ElasticsearchSourceError(f"{what}: unexpected response {body!r:.200}")
    if body.get("timed_out"):
        raise ElasticsearchSourceError(f"{what}: the search timed out; retry, or lower logs.elasticsearch.page_size")
    shards = body.get("_shards") or {}
    if shards.get("failed"):
        reasons = "; ".join(
            f"shard {f.get('shard')} of {f.get('index')}: {(f.get('reason') or {}).get('type')}: "
            f"{(f.get('reason') or {}).get('reason')}" for f in shards.get("failures") or [])
        raise ElasticsearchSourceError(
            f"{what}: {shards['failed']} of {shards.get('total')} shards failed ({reasons or 'no reason given'}); "
            "the result would be incomplete, so the run stops here")
    return body


class ElasticsearchLogSource:
    """An index of blueprint-format documents as a log source (see the module docstring)."""

    name = "elasticsearch"
    counts_usable = False  # a terms aggregation counts documents, not distinct valid requests

    def __init__(self, client, index: str, *, page_size: int = 1000, keep_alive: str = "5m",
                 timestamp_field: str = "timestamp") -> None:
        self.client = client
        self.index = index
        self.page_size = page_size
        self.keep_alive = keep_alive
        self.field = timestamp_field
        self._unit: str | None = None

    @classmethod
    def from_connection(cls, conn_id: str, index: str, **kwargs: Any) -> ElasticsearchLogSource:
        """The client of an Airflow connection (host, port, schema, login/password, extra: client
        options such as ``ca_certs`` or ``api_key``), through the provider's ElasticsearchPythonHook."""
        from airflow.providers.elasticsearch.hooks.elasticsearch import ElasticsearchPythonHook
        from airflow.sdk import BaseHook

        conn = BaseHook.get_connection(conn_id)
        scheme = conn.schema or "http"
        url = f"{scheme}://{conn.host}:{conn.port or 9200}"
        args = dict(conn.extra_dejson)
        if conn.login:
            args["basic_auth"] = (conn.login, conn.password or "")
        return cls(ElasticsearchPythonHook(hosts=[url], es_conn_args=args).get_conn, index, **kwargs)

    # ---------------------------------------------------------------- time

    def timestamp_unit(self) -> str:
        """How the documents spell their time: ``seconds`` or ``millis`` (numbers) or ``iso``.

        Read from the newest document. The blueprint writes epoch seconds into a ``date`` field,
        which Elasticsearch stores as if they were milliseconds (its default format is
        ``strict_date_optional_time||epoch_millis``); the range of a query must then be given in
        seconds too, or it would match nothing.
        """
        if self._unit is None:
            body = _check(self.client.search(index=self.index, size=1, sort=[{self.field: "desc"}],
                                             source=[self.field], track_total_hits=False),
                          "reading the newest document's timestamp")
            hits = body["hits"]["hits"]
            value = (hits[0].get("_source") or {}).get(self.field) if hits else None
            if isinstance(value, str) and value.strip().lstrip("-").replace(".", "", 1).isdigit():
                value = float(value)
            if isinstance(value, (int, float)) and not isinstance(value, bool):
                self._unit = "millis" if abs(value) >= 100_000_000_000 else "seconds"
            else:
                self._unit = "iso"
        return self._unit

    def time_bounds(self, start: datetime, end: datetime) -> dict[str, Any]:
        """The ``range`` clause of [start, end) in the documents' own unit."""
        unit = self.timestamp_unit()
        if unit == "iso":
            return {"range": {self.field: {"gte": start.isoformat(), "lt": end.isoformat(),
                                           "format": "strict_date_optional_time"}}}
        scale = 1000 if unit == "millis" else 1
        return {"range": {self.field: {"gte": int(start.timestamp() * scale), "lt": int(end.timestamp() * scale),
                                       "format": "epoch_millis"}}}

    # ---------------------------------------------------------------- the source

    def count_by_workload(self, start: datetime, end: datetime) -> dict[str, int]:
        """Documents per workload in [start, end): one terms aggregation."""
        body = _check(self.client.search(
            index=self.index, size=0, track_total_hits=False, query={"bool": {"filter": [self.time_bounds(start, end)]}},
            aggs={"workloads": {"terms": {"field": "workload_id", "size": MAX_WORKLOADS}}},
        ), "counting records per workload")
        agg = body["aggregations"]["workloads"]
        if agg.get("sum_other_doc_count"):
            log.warning("more than %d workloads in the window: %d documents of further workloads not counted",
                        MAX_WORKLOADS, agg["sum_other_doc_count"])
        return {b["key"]: int(b["doc_count"]) for b in agg["buckets"] if isinstance(b.get("key"), str)}

    def scan(self, workload_id: str, start: datetime, end: datetime) -> Iterator[SourceItem]:
        """Every document of one workload in [start, end), oldest first, a page at a time."""
        query = {"bool": {"filter": [{"term": {"workload_id": workload_id}}, self.time_bounds(start, end)]}}
        pit = _check(self.client.open_point_in_time(index=self.index, keep_alive=self.keep_alive),
                     "opening a point in time")["id"]
        try:
            after = None
            while True:
                kwargs: dict[str, Any] = {}
                if after is not None:
                    kwargs["search_after"] = after
                body = _check(self.client.search(
                    size=self.page_size, query=query, pit={"id": pit, "keep_alive": self.keep_alive},
                    sort=[{self.field: "asc"}, {"_shard_doc": "asc"}], track_total_hits=False, **kwargs,
                ), f"reading workload {workload_id}")
                pit = body.get("pit_id") or pit  # always continue with the newest PIT id
                hits = body["hits"]["hits"]
                for hit in hits:
                    yield SourceItem(hit["_id"], f"{hit.get('_index', self.index)}/{hit['_id']}", hit.get("_source"))
                if len(hits) < self.page_size:
                    return
                after = hits[-1]["sort"]
        finally:
            try:
                self.client.close_point_in_time(id=pit)
            except Exception as exc:  # the PIT expires on its own after keep_alive
                log.warning("could not close the point in time (%s); it expires after %s", exc, self.keep_alive)

    def fetch(self, keys: list[Any]) -> Iterator[SourceItem]:
        """The documents of these ids (curation's kept records), in chunks of ``page_size``."""
        for i in range(0, len(keys), self.page_size):
            chunk = [str(k) for k in keys[i:i + self.page_size]]
            body = _check(self.client.search(index=self.index, size=len(chunk), query={"ids": {"values": chunk}},
                                             track_total_hits=False), "fetching the kept records")
            for hit in body["hits"]["hits"]:
                yield SourceItem(hit["_id"], f"{hit.get('_index', self.index)}/{hit['_id']}", hit.get("_source"))
