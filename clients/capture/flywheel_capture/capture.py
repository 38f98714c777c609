"""Capture every chat completion an application makes, without ever blocking or failing it.

``Capture.wrap(client)`` returns a copy of an ``openai.OpenAI`` (or ``AsyncOpenAI``) client whose
HTTP transport hands each successful, non-streamed ``POST …/chat/completions`` exchange to a
bounded queue; a background thread turns the exchanges into flywheel log records (validated and
redacted by the flywheel's own ``flywheel.ingest``, exactly like ``flywheel logs import``) and
writes them to a sink in batches. The application's call returns what the server returned, as if
nothing were there: a full queue drops the record (counted), a failing sink drops the batch
(counted, retried once), anything unexpected in the capture path is counted and swallowed.
"""

from __future__ import annotations

import atexit
import json
import logging
import queue
import threading
import time
from collections import Counter
from typing import Any, Protocol

import httpx

log = logging.getLogger("flywheel_capture")

# Per-call workload override: client.chat.completions.create(..., extra_headers={WORKLOAD_HEADER: "x"}).
# The header is removed before the request leaves the process.
WORKLOAD_HEADER = "x-flywheel-workload-id"


class Sink(Protocol):
    def write(self, records: list) -> tuple[int, int]:
        """Store prepared records (``flywheel.ingest.StoredRecord``); (stored, already stored)."""
        ...


class Capture:
    """The queue, the background writer and the counters (see the module docstring).

    ``workload_id`` and ``client_id`` are checked here, once, against the flywheel's rules: a
    wrong tag is a configuration error the application should see at start-up, not a record
    quietly quarantined later.
    """

    def __init__(self, sink: Sink, *, workload_id: str, client_id: str, redact: bool = True,
                 max_queue: int = 10_000, batch_size: int = 200, flush_interval_s: float = 1.0,
                 retry_delay_s: float = 1.0) -> None:
        from flywheel.records import CLIENT_ID, valid_workload_id

        if not valid_workload_id(workload_id):
            raise ValueError(f"workload_id {workload_id!r}: use 1-64 letters, digits, '_', '.', '-', starting with a "
                             "letter or digit (no '/', '..', spaces or quotes)")
        if not isinstance(client_id, str) or not CLIENT_ID.fullmatch(client_id):
            raise ValueError(f"client_id {client_id!r}: use 1-128 printable ASCII characters without spaces")
        self.sink = sink
        self.workload_id = workload_id
        self.client_id = client_id
        self.redact = redact
        self.batch_size = batch_size
        self.flush_interval_s = flush_interval_s
        self.retry_delay_s = retry_delay_s
        self._queue: queue.Queue = queue.Queue(maxsize=max_queue)
        self._counts: Counter = Counter()
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()
        self._seq = 0
        atexit.register(self.close, 5.0)

    # ---------------------------------------------------------------- wrapping

    def wrap(self, client):
        """A copy of an OpenAI client (sync or async) whose completions are captured."""
        import openai

        if isinstance(client, openai.AsyncOpenAI):
            transport = AsyncCaptureTransport(self, httpx.AsyncHTTPTransport())
            return client.with_options(http_client=httpx.AsyncClient(transport=transport))
        return client.with_options(http_client=httpx.Client(transport=CaptureTransport(self, httpx.HTTPTransport())))

    # ---------------------------------------------------------------- counters

    def _count(self, key: str, n: int = 1) -> None:
        with self._lock:
            self._counts[key] += n

    def stats(self) -> dict[str, int]:
        """captured, stored, already_stored, invalid, dropped_queue_full, dropped_sink_error,
        skipped_streaming, skipped_error_status, capture_errors, queued."""
        with self._lock:
            out = dict(self._counts)
        out["queued"] = self._queue.qsize()
        return out

    # ---------------------------------------------------------------- the hot path

    def observe(self, request: httpx.Request, response: httpx.Response, workload_id: str | None) -> None:
        """Called by the transport after the exchange; must be cheap and must never raise."""
        try:
            if request.method != "POST" or not request.url.path.rstrip("/").endswith("/chat/completions"):
                return
            body = json.loads(request.content or b"{}")
            if body.get("stream"):
                self._count("skipped_streaming")  # a streamed answer is assembled by the app, not here
                return
            if not 200 <= response.status_code < 300:
                self._count("skipped_error_status")
                return
            record = {"timestamp": time.time(), "workload_id": workload_id or self.workload_id,
                      "client_id": self.client_id, "request": body, "response": json.loads(response.content)}
            self._ensure_worker()
            self._queue.put_nowait(record)
            self._count("captured")
        except queue.Full:
            self._count("dropped_queue_full")
        except Exception:  # never the application's problem
            self._count("capture_errors")

    # ---------------------------------------------------------------- the background writer

    def _ensure_worker(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            with self._lock:
                if self._thread is None or not self._thread.is_alive():
                    self._stop.clear()
                    self._thread = threading.Thread(target=self._run, name="flywheel-capture", daemon=True)
                    self._thread.start()

    def _run(self) -> None:
        while not (self._stop.is_set() and self._queue.empty()):
            batch = []
            try:
                batch.append(self._queue.get(timeout=self.flush_interval_s))
                while len(batch) < self.batch_size:
                    batch.append(self._queue.get_nowait())
            except queue.Empty:
                pass
            if batch:
                try:
                    self._write(batch)
                finally:
                    for _ in batch:
                        self._queue.task_done()

    def _write(self, batch: list[dict[str, Any]]) -> None:
        from flywheel.ingest import prepare_obj
        from flywheel.records import Rejection

        prepared = []
        for record in batch:
            self._seq += 1
            try:
                item = prepare_obj(f"capture:{self.client_id}:{self._seq}", record, redact=self.redact)
            except Exception:
                self._count("capture_errors")
                continue
            if isinstance(item, Rejection):
                self._count("invalid")
                log.warning("captured record not stored: %s", item.detail)
            else:
                prepared.append(item)
        if not prepared:
            return
        for attempt in (1, 2):
            try:
                stored, already = self.sink.write(prepared)
            except Exception as exc:
                if attempt == 1:
                    time.sleep(self.retry_delay_s)
                    continue
                self._count("dropped_sink_error", len(prepared))
                log.warning("%d captured records dropped: the sink failed twice (%s)", len(prepared), exc)
                return
            self._count("stored", stored)
            self._count("already_stored", already)
            return

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until everything queued so far is written (or dropped); False on timeout."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return True

    def close(self, timeout: float = 10.0) -> None:
        """Flush and stop the writer (registered at exit)."""
        self.flush(timeout)
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)


class CaptureTransport(httpx.BaseTransport):
    """An httpx transport that passes requests through and shows each exchange to a Capture."""

    def __init__(self, capture: Capture, inner: httpx.BaseTransport) -> None:
        self.capture, self.inner = capture, inner

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        workload = request.headers.pop(WORKLOAD_HEADER, None)
        response = self.inner.handle_request(request)
        if request.method == "POST" and request.url.path.rstrip("/").endswith("/chat/completions"):
            try:
                if not _is_streamed(request):
                    response.read()  # the client reads it anyway; httpx keeps the bytes
            except Exception:
                self.capture._count("capture_errors")
                return response
            self.capture.observe(request, response, workload)
        return response

    def close(self) -> None:
        self.inner.close()


class AsyncCaptureTransport(httpx.AsyncBaseTransport):
    def __init__(self, capture: Capture, inner: httpx.AsyncBaseTransport) -> None:
        self.capture, self.inner = capture, inner

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        workload = request.headers.pop(WORKLOAD_HEADER, None)
        response = await self.inner.handle_async_request(request)
        if request.method == "POST" and request.url.path.rstrip("/").endswith("/chat/completions"):
            try:
                if not _is_streamed(request):
                    await response.aread()
            except Exception:
                self.capture._count("capture_errors")
                return response
            self.capture.observe(request, response, workload)
        return response

    async def aclose(self) -> None:
        await self.inner.aclose()


def _is_streamed(request: httpx.Request) -> bool:
    try:
        return bool(json.loads(request.content or b"{}").get("stream"))
    except Exception:
        return True  # unknown: leave the body alone
