"""The capture client against a local OpenAI-compatible server (flywheel_local.rule_judge, a real
HTTP server) and a real PostgreSQL: completions are logged with workload and client ids, redacted
before storage, and the application's calls are never blocked, changed or failed by the capture."""

from __future__ import annotations

import json
import threading
import time

import openai
import pytest

from flywheel_capture import WORKLOAD_HEADER, Capture, PostgresSink
from flywheel_local.rule_judge import RuleJudgeServer


@pytest.fixture
def server():
    with RuleJudgeServer() as srv:
        yield srv


def _dsn(conn) -> str:
    return conn.dsn if hasattr(conn, "dsn") else conn.info.dsn


def _logs(conn) -> list[dict]:
    with conn.cursor() as cur:
        cur.execute("SELECT workload_id, client_id, raw, redacted, source, line_no FROM production_logs ORDER BY id")
        names = [d[0] for d in cur.description]
        rows = [dict(zip(names, r)) for r in cur.fetchall()]
    conn.commit()
    return rows


class MemorySink:
    def __init__(self, fail: int = 0, delay_s: float = 0.0) -> None:
        self.records: list = []
        self.fail, self.delay_s = fail, delay_s

    def write(self, records):
        time.sleep(self.delay_s)
        if self.fail:
            self.fail -= 1
            raise ConnectionError("sink down")
        self.records.extend(records)
        return len(records), 0


def _ask(client, text: str, **kw):
    return client.chat.completions.create(model="prod-llm", messages=[{"role": "user", "content": text}], **kw)


def test_completions_are_stored_redacted_with_workload_and_client(server, flywheel_db):
    capture = Capture(PostgresSink(_dsn(flywheel_db)), workload_id="support_qa", client_id="web-checkout")
    client = capture.wrap(openai.OpenAI(base_url=server.base_url, api_key="test-key", max_retries=0))
    answer = _ask(client, "my email is anna@example.com, card 4111 1111 1111 1111, how do I reset my password?")
    assert answer.choices[0].message.content  # the application gets the server's answer
    _ask(client, "where is my order A-100234?", extra_headers={WORKLOAD_HEADER: "tool_router"})
    assert capture.flush(10)
    rows = _logs(flywheel_db)
    assert [(r["workload_id"], r["client_id"]) for r in rows] == [("support_qa", "web-checkout"),
                                                                  ("tool_router", "web-checkout")]
    assert all(r["redacted"] and r["source"] == "capture" and r["line_no"] is None for r in rows)
    first = json.loads(rows[0]["raw"])
    assert first["request"]["messages"][0]["content"] == (
        "my email is <EMAIL_1>, card <CARD_1>, how do I reset my password?")
    assert first["response"]["usage"]["prompt_tokens"] > 0 and first["response"]["choices"][0]["message"]["content"]
    assert "anna@example.com" not in rows[0]["raw"] and "4111" not in rows[0]["raw"]
    # The override header never left the process.
    assert server.completion_requests()[1]["messages"][0]["content"] == "where is my order A-100234?"
    assert capture.stats()["stored"] == 2 and capture.stats()["captured"] == 2
    capture.close()


def test_the_async_client_is_captured_too(server):
    import asyncio

    sink = MemorySink()
    capture = Capture(sink, workload_id="w", client_id="c")
    client = capture.wrap(openai.AsyncOpenAI(base_url=server.base_url, api_key="k", max_retries=0))

    async def go():
        return await client.chat.completions.create(model="m", messages=[{"role": "user", "content": "hi"}])

    assert asyncio.run(go()).choices[0].message.content
    assert capture.flush(10) and len(sink.records) == 1 and sink.records[0].workload_id == "w"


def test_a_slow_or_failing_sink_never_blocks_or_fails_the_call(server):
    sink = MemorySink(delay_s=2.0)  # each batch takes 2 s to store
    capture = Capture(sink, workload_id="w", client_id="c", max_queue=3, batch_size=1)
    client = capture.wrap(openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0))
    started = time.monotonic()
    for i in range(8):
        _ask(client, f"question {i}")
    assert time.monotonic() - started < 2.0  # eight calls, none waited for the sink
    stats = capture.stats()
    assert stats["captured"] + stats["dropped_queue_full"] == 8 and stats["dropped_queue_full"] >= 4

    down = Capture(MemorySink(fail=2), workload_id="w", client_id="c", retry_delay_s=0.01)
    client = down.wrap(openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0))
    assert _ask(client, "still answered").choices[0].message.content
    assert down.flush(10) and down.stats()["dropped_sink_error"] == 1


def test_server_errors_reach_the_app_unchanged_and_are_not_logged(server):
    sink = MemorySink()
    capture = Capture(sink, workload_id="w", client_id="c")
    client = capture.wrap(openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0))
    server.script.append(500)
    with pytest.raises(openai.InternalServerError):
        _ask(client, "boom")
    assert capture.flush(5) and sink.records == [] and capture.stats()["skipped_error_status"] == 1


def test_a_capture_bug_is_counted_not_raised(server, monkeypatch):
    capture = Capture(MemorySink(), workload_id="w", client_id="c")
    client = capture.wrap(openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0))
    monkeypatch.setattr(capture, "_ensure_worker", lambda: 1 / 0)
    assert _ask(client, "fine").choices[0].message.content
    assert capture.stats()["capture_errors"] == 1


def test_invalid_tags_are_refused_at_start_up():
    for workload in ("tool/router", "../x", "a b", "x" * 300):
        with pytest.raises(ValueError, match="workload_id"):
            Capture(MemorySink(), workload_id=workload, client_id="c")
    with pytest.raises(ValueError, match="client_id"):
        Capture(MemorySink(), workload_id="w", client_id="has space")


def test_many_threads_at_once(server):
    sink = MemorySink()
    capture = Capture(sink, workload_id="w", client_id="c", batch_size=16)
    client = capture.wrap(openai.OpenAI(base_url=server.base_url, api_key="k", max_retries=0))
    threads = [threading.Thread(target=lambda i=i: _ask(client, f"q{i} mail x{i}@example.com")) for i in range(24)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert capture.flush(20) and len(sink.records) == 24
    assert all("@example.com" not in r.document for r in sink.records)


def test_streamed_answers_pass_through_untouched_and_are_counted():
    import httpx

    from flywheel_capture import CaptureTransport

    sse = b'data: {"choices": [{"delta": {"content": "hi"}}]}\n\ndata: [DONE]\n\n'
    inner = httpx.MockTransport(lambda request: httpx.Response(200, content=sse,
                                                               headers={"content-type": "text/event-stream"}))
    capture = Capture(MemorySink(), workload_id="w", client_id="c")
    with httpx.Client(transport=CaptureTransport(capture, inner)) as http:
        with http.stream("POST", "http://llm/v1/chat/completions", json={"model": "m", "stream": True,
                                                                         "messages": [{"role": "user", "content": "x"}]}) as r:
            assert b"".join(r.iter_bytes()) == sse
    assert capture.stats()["skipped_streaming"] == 1 and not capture.stats().get("captured")
