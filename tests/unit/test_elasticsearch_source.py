"""The Elasticsearch log source against a local HTTP server that replays Elasticsearch 8 response
bodies and records every request, so the tests assert the exact requests: the timestamp probe, the
terms aggregation, PIT open / search_after pages / PIT close, the fetch by ids, errors and partial
shard failures. No Elasticsearch server can run here (no JVM distribution is reachable); with
ES_URL set, `test_against_a_real_cluster` runs the same source against a real one."""

from __future__ import annotations

import json
import os
import threading
import uuid
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, urlsplit

import pytest

from flywheel.adapters.elasticsearch import BLUEPRINT_MAPPING, ElasticsearchLogSource, ElasticsearchSourceError
from flywheel.curation import CurationSettings, curate_stream

T = 1795514400  # 2026-11-24T10:00:00Z, epoch seconds as the blueprint logs them
START, END = datetime(2026, 11, 24, tzinfo=timezone.utc), datetime(2026, 11, 25, tzinfo=timezone.utc)
PIT_1 = "46ToAwMDaWR5BXV1aWQxAgZub2RlXzEAAAAAAAAAAAEBYQADaWR6BXV1aWQyKgZub2RlXzIAAAAAAAAAAAwBYgACBXV1aWQyAAAFdXVpZDEAAQltYXRjaF9hbGw_gAAAAA=="
PIT_2 = "46ToAwMDaWR5BXV1aWQxAgZub2RlXzEAAAAAAAAAAAEBYQADaWR6BXV1aWQyKgZub2RlXzIAAAAAAAAAAAwBYgACBXV1aWQyAAAFdXVpZDEAAgltYXRjaF9hbGw_gAAAAA=="
SHARDS_OK = {"total": 1, "successful": 1, "skipped": 0, "failed": 0}


def doc(i: int, workload: str = "tool_router", text: str | None = None) -> dict:
    """A blueprint document: integer epoch seconds, OpenAI request/response objects."""
    return {"timestamp": T + i, "workload_id": workload, "client_id": "aiva-1",
            "request": {"model": "prod", "messages": [{"role": "user", "content": text or f"question {i}"}]},
            "response": {"id": f"chatcmpl-{i}", "object": "chat.completion", "created": T + i,
                         "choices": [{"index": 0, "message": {"role": "assistant", "content": f"answer {i}"},
                                      "finish_reason": "stop"}],
                         "usage": {"prompt_tokens": 9, "completion_tokens": 3, "total_tokens": 12}}}


def hit(i: int, **kw) -> dict:
    # What ES 8 returns for a search with sort [timestamp asc, _shard_doc asc]: the date sort value
    # is the stored long (the blueprint's seconds, read as epoch_millis), then the shard doc.
    return {"_index": "flywheel", "_id": f"doc-{i}", "_score": None, "_source": doc(i, **kw), "sort": [T + i, i]}


def search_body(hits: list[dict], pit: str | None = None, shards: dict | None = None, **extra) -> dict:
    body = {"took": 3, "timed_out": False, "_shards": shards or SHARDS_OK,
            "hits": {"max_score": None, "hits": hits}, **extra}
    if pit:
        body["pit_id"] = pit
    return body


class Replay:
    """A scripted Elasticsearch: each request must match the next expected (method, path) and gets
    the recorded response; every request is kept with its parsed body and headers."""

    def __init__(self) -> None:
        self.script: list[tuple[str, str, int, dict]] = []
        self.requests: list[dict] = []
        replay = self

        class Handler(BaseHTTPRequestHandler):
            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                url = urlsplit(self.path)
                try:
                    parsed = json.loads(raw) if raw else None
                except ValueError:  # NDJSON (_bulk)
                    parsed = None
                replay.requests.append({"method": self.command, "path": url.path, "query": parse_qs(url.query),
                                        "body": parsed, "raw": raw, "headers": dict(self.headers)})
                if not replay.script:
                    status, body = 500, {"error": "unexpected request"}
                else:
                    method, path, status, body = replay.script.pop(0)
                    if (method, path) != (self.command, url.path):
                        status, body = 500, {"error": f"expected {method} {path}, got {self.command} {url.path}"}
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/vnd.elasticsearch+json;compatible-with=8")
                self.send_header("X-Elastic-Product", "Elasticsearch")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_DELETE = do_PUT = _serve

            def log_message(self, *args) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def expect(self, method: str, path: str, body: dict, status: int = 200) -> None:
        self.script.append((method, path, status, body))

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def es():
    replay = Replay()
    yield replay
    replay.close()


def _source(es: Replay, **kw) -> ElasticsearchLogSource:
    from elasticsearch import Elasticsearch

    return ElasticsearchLogSource(Elasticsearch(es.url, request_timeout=5, max_retries=0), "flywheel", **kw)


def _expect_probe(es: Replay, value=T + 99) -> None:
    es.expect("POST", "/flywheel/_search", search_body([{"_index": "flywheel", "_id": "doc-99", "_score": None,
                                                          "_source": {"timestamp": value}, "sort": [value]}]))


RANGE_SECONDS = {"range": {"timestamp": {"gte": 1795478400, "lt": 1795564800, "format": "epoch_millis"}}}


def test_discovery_is_one_terms_aggregation_in_the_documents_unit(es):
    _expect_probe(es)
    es.expect("POST", "/flywheel/_search", search_body([], aggregations={"workloads": {
        "doc_count_error_upper_bound": 0, "sum_other_doc_count": 0,
        "buckets": [{"key": "tool_router", "doc_count": 812}, {"key": "support_qa", "doc_count": 44}]}}))
    counts = _source(es).count_by_workload(START, END)
    assert counts == {"tool_router": 812, "support_qa": 44}
    probe, agg = es.requests
    assert probe["body"] == {"size": 1, "sort": [{"timestamp": "desc"}], "_source": ["timestamp"],
                             "track_total_hits": False}
    assert agg["body"] == {"size": 0, "track_total_hits": False, "query": {"bool": {"filter": [RANGE_SECONDS]}},
                           "aggs": {"workloads": {"terms": {"field": "workload_id", "size": 10000}}}}


@pytest.mark.parametrize("value, expected", [
    ((T + 5) * 1000, {"gte": 1795478400000, "lt": 1795564800000, "format": "epoch_millis"}),
    ("2026-11-24T10:00:05Z", {"gte": "2026-11-24T00:00:00+00:00", "lt": "2026-11-25T00:00:00+00:00",
                              "format": "strict_date_optional_time"}),
])
def test_time_bounds_follow_the_documents(es, value, expected):
    _expect_probe(es, value)
    assert _source(es).time_bounds(START, END) == {"range": {"timestamp": expected}}


def test_scan_pages_with_a_point_in_time_and_search_after_then_closes_it(es):
    _expect_probe(es)
    es.expect("POST", "/flywheel/_pit", {"id": PIT_1, "_shards": SHARDS_OK})
    es.expect("POST", "/_search", search_body([hit(0), hit(1)], pit=PIT_1))
    es.expect("POST", "/_search", search_body([hit(2)], pit=PIT_2))  # ES may hand back a new PIT id
    es.expect("DELETE", "/_pit", {"succeeded": True, "num_freed": 1})
    items = list(_source(es, page_size=2).scan("tool_router", START, END))
    assert [i.fetch_key for i in items] == ["doc-0", "doc-1", "doc-2"]
    assert items[0].ref == "flywheel/doc-0" and items[0].data == doc(0) and not items[0].redacted
    _, open_pit, page1, page2, close = es.requests
    assert open_pit["query"] == {"keep_alive": ["5m"]}
    query = {"bool": {"filter": [{"term": {"workload_id": "tool_router"}}, RANGE_SECONDS]}}
    sort = [{"timestamp": "asc"}, {"_shard_doc": "asc"}]
    assert page1["body"] == {"size": 2, "query": query, "pit": {"id": PIT_1, "keep_alive": "5m"}, "sort": sort,
                             "track_total_hits": False}
    assert page2["body"] == {"size": 2, "query": query, "pit": {"id": PIT_1, "keep_alive": "5m"}, "sort": sort,
                             "track_total_hits": False, "search_after": [T + 1, 1]}
    assert close["body"] == {"id": PIT_2}
    assert not any("from" in (r["body"] or {}) or "scroll" in r["query"] for r in es.requests)


def test_a_full_last_page_asks_once_more(es):
    _expect_probe(es)
    es.expect("POST", "/flywheel/_pit", {"id": PIT_1, "_shards": SHARDS_OK})
    es.expect("POST", "/_search", search_body([hit(0), hit(1)], pit=PIT_1))
    es.expect("POST", "/_search", search_body([], pit=PIT_1))
    es.expect("DELETE", "/_pit", {"succeeded": True, "num_freed": 1})
    assert len(list(_source(es, page_size=2).scan("tool_router", START, END))) == 2
    assert es.requests[3]["body"]["search_after"] == [T + 1, 1] and not es.script


def test_partial_shard_failures_stop_the_scan_and_the_pit_is_still_closed(es):
    _expect_probe(es)
    es.expect("POST", "/flywheel/_pit", {"id": PIT_1, "_shards": SHARDS_OK})
    es.expect("POST", "/_search", search_body([hit(0), hit(1)], pit=PIT_1))
    es.expect("POST", "/_search", search_body([hit(2)], pit=PIT_1, shards={
        "total": 2, "successful": 1, "skipped": 0, "failed": 1, "failures": [{
            "shard": 1, "index": "flywheel", "node": "dZ1EHlmERzKH8Hk9bJ_KXg",
            "reason": {"type": "node_not_connected_exception", "reason": "[es-2][10.0.3.12:9300] Node not connected"}}]}))
    es.expect("DELETE", "/_pit", {"succeeded": True, "num_freed": 1})
    with pytest.raises(ElasticsearchSourceError, match="1 of 2 shards failed.*node_not_connected_exception"):
        list(_source(es, page_size=2).scan("tool_router", START, END))
    assert es.requests[-1]["method"] == "DELETE" and es.requests[-1]["body"] == {"id": PIT_1}


def test_a_timed_out_search_stops_the_run(es):
    _expect_probe(es)
    es.expect("POST", "/flywheel/_search", {**search_body([]), "timed_out": True})
    with pytest.raises(ElasticsearchSourceError, match="timed out"):
        _source(es).count_by_workload(START, END)


def test_errors_are_raised_with_elasticsearchs_reason(es):
    from elasticsearch import NotFoundError

    es.expect("POST", "/flywheel/_search", {"error": {
        "root_cause": [{"type": "index_not_found_exception", "reason": "no such index [flywheel]",
                        "index_uuid": "_na_", "resource.type": "index_or_alias", "resource.id": "flywheel",
                        "index": "flywheel"}],
        "type": "index_not_found_exception", "reason": "no such index [flywheel]", "index_uuid": "_na_",
        "resource.type": "index_or_alias", "resource.id": "flywheel", "index": "flywheel"}, "status": 404}, status=404)
    with pytest.raises(NotFoundError, match="index_not_found_exception"):
        _source(es).count_by_workload(START, END)


def test_fetch_by_ids_in_chunks(es):
    es.expect("POST", "/flywheel/_search", search_body([hit(3), hit(1)]))
    es.expect("POST", "/flywheel/_search", search_body([hit(5)]))
    items = list(_source(es, page_size=2).fetch(["doc-1", "doc-3", "doc-5"]))
    assert sorted(i.fetch_key for i in items) == ["doc-1", "doc-3", "doc-5"]
    assert [r["body"] for r in es.requests] == [
        {"size": 2, "query": {"ids": {"values": ["doc-1", "doc-3"]}}, "track_total_hits": False},
        {"size": 1, "query": {"ids": {"values": ["doc-5"]}}, "track_total_hits": False}]


def test_curation_from_elasticsearch_redacts_as_it_reads(es):
    """Scan (PIT pages), plan, fetch the kept ones, redact: the dataset holds no raw PII."""
    n = 30
    hits = [hit(i, text=f"question {i}: mail me at user{i}@example.com") for i in range(n)]
    _expect_probe(es)
    es.expect("POST", "/flywheel/_pit", {"id": PIT_1, "_shards": SHARDS_OK})
    es.expect("POST", "/_search", search_body(hits[:20], pit=PIT_1))
    es.expect("POST", "/_search", search_body(hits[20:], pit=PIT_1))
    es.expect("DELETE", "/_pit", {"succeeded": True, "num_freed": 1})
    by_id = {h["_id"]: h for h in hits}
    source = _source(es, page_size=20)
    original_fetch = source.fetch

    def fetch(keys):
        # Script the replies of the fetch the source is about to make, in its own chunks.
        for i in range(0, len(keys), 20):
            es.expect("POST", "/flywheel/_search", search_body([by_id[k] for k in keys[i:i + 20]]))
        return original_fetch(keys)

    rows, rejections = [], []
    result = curate_stream(source.scan("tool_router", START, END), fetch,
                           CurationSettings(eval_size=4, min_train=5, min_class_size=1),
                           on_rejection=rejections.append, on_row=rows.append)
    assert result.usable and result.n_in == n and not rejections and len(rows) == n
    assert result.pii["email"] == n
    text = json.dumps(rows)
    assert "@example.com" not in text and "<EMAIL_1>" in text
    assert {r["id"] for r in rows} == {f"flywheel/doc-{i}" for i in range(n)}
    assert all(r["timestamp"].startswith("2026-11-24T10:00") for r in rows)


def test_the_source_comes_from_an_airflow_connection_and_speaks_es8(es, monkeypatch):
    monkeypatch.setenv("AIRFLOW_CONN_ES_REPLAY", json.dumps({
        "conn_type": "elasticsearch", "host": "127.0.0.1", "port": int(es.url.rsplit(":", 1)[1]), "schema": "http",
        "login": "flywheel", "password": "s3cret", "extra": {"request_timeout": 5}}))
    monkeypatch.setenv("AIRFLOW__ELASTICSEARCH__ES_COMPAT_WITH", "8")
    source = ElasticsearchLogSource.from_connection("es_replay", "flywheel")
    _expect_probe(es)
    es.expect("POST", "/flywheel/_search", search_body([], aggregations={"workloads": {
        "doc_count_error_upper_bound": 0, "sum_other_doc_count": 0, "buckets": []}}))
    assert source.count_by_workload(START, END) == {}
    headers = {k.lower(): v for k, v in es.requests[0]["headers"].items()}
    assert headers["authorization"].startswith("Basic ")
    assert "compatible-with=8" in headers["accept"]


def test_the_capture_clients_elasticsearch_sink_writes_blueprint_documents_once(es):
    from elasticsearch import Elasticsearch

    from flywheel.ingest import prepare_obj
    from flywheel_capture import ElasticsearchSink

    records = [prepare_obj(f"c:{i}", {**doc(i, text=f"mail me at u{i}@example.com"), "timestamp": T + i + 0.5})
               for i in range(3)]
    es.expect("PUT", "/_bulk", {"errors": True, "took": 12, "items": [
        {"create": {"_index": "flywheel", "_id": records[0].record_hash, "_version": 1, "result": "created",
                    "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 0, "_primary_term": 1,
                    "status": 201}},
        {"create": {"_index": "flywheel", "_id": records[1].record_hash, "status": 409, "error": {
            "type": "version_conflict_engine_exception",
            "reason": f"[{records[1].record_hash}]: version conflict, document already exists (current version [1])",
            "index_uuid": "aAsFqTI0Tc2W0LCWgPNrOA", "shard": "0", "index": "flywheel"}}},
        {"create": {"_index": "flywheel", "_id": records[2].record_hash, "_version": 1, "result": "created",
                    "_shards": {"total": 2, "successful": 1, "failed": 0}, "_seq_no": 1, "_primary_term": 1,
                    "status": 201}}]})
    sink = ElasticsearchSink(Elasticsearch(es.url, request_timeout=5, max_retries=0), "flywheel")
    assert sink.write(records) == (2, 1)
    lines = [json.loads(line) for line in es.requests[0]["raw"].decode().strip().split("\n")]
    assert lines[0] == {"create": {"_index": "flywheel", "_id": records[0].record_hash}}
    assert lines[1]["timestamp"] == T and set(lines[1]) == {"timestamp", "workload_id", "client_id", "request",
                                                            "response"}  # the blueprint's strict mapping
    assert lines[1]["request"]["messages"][0]["content"] == "mail me at <EMAIL_1>"
    es.expect("PUT", "/_bulk", {"errors": True, "took": 3, "items": [{"create": {
        "_index": "flywheel", "_id": "x", "status": 400, "error": {"type": "strict_dynamic_mapping_exception",
                                                                   "reason": "mapping set to strict"}}}]})
    with pytest.raises(RuntimeError, match="strict_dynamic_mapping_exception"):
        sink.write(records[:1])


# ---------------------------------------------------------------- a real cluster

@pytest.mark.skipif(not os.environ.get("ES_URL"), reason="ES_URL is not set: no Elasticsearch cluster to test against "
                    "(none can run on this machine); set ES_URL=http://host:9200 to run this test")
def test_against_a_real_cluster():
    from elasticsearch import Elasticsearch

    client = Elasticsearch(os.environ["ES_URL"], request_timeout=30)
    index = f"flywheel-test-{uuid.uuid4().hex[:8]}"
    client.indices.create(index=index, mappings=BLUEPRINT_MAPPING)
    try:
        for i in range(25):
            client.index(index=index, id=f"d{i}", document=doc(i, workload="tool_router" if i % 5 else "support_qa"))
        client.indices.refresh(index=index)
        source = ElasticsearchLogSource(client, index, page_size=7)
        assert source.timestamp_unit() == "seconds"
        assert source.count_by_workload(START, END) == {"tool_router": 20, "support_qa": 5}
        items = list(source.scan("tool_router", START, END))
        assert [i.data["timestamp"] for i in items] == sorted(i.data["timestamp"] for i in items)
        assert len(items) == 20
        assert {i.fetch_key for i in source.fetch([items[0].fetch_key, items[-1].fetch_key])} == {
            items[0].fetch_key, items[-1].fetch_key}
    finally:
        client.indices.delete(index=index)
