"""The REST client the CLI and the tests use: reads survive a momentary server error, writes are
never sent twice."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from flywheel_local.api import AirflowAPI


class _Flaky(BaseHTTPRequestHandler):
    """Answers the token request, then 500 to the first `failures` GETs and to every PATCH."""

    failures = 2
    seen: list[str] = []

    def log_message(self, *args) -> None:
        pass

    def _send(self, status: int, obj: dict) -> None:
        body = json.dumps(obj).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self._send(201, {"access_token": "token"})

    def do_GET(self) -> None:
        type(self).seen.append("GET")
        if type(self).seen.count("GET") <= type(self).failures:
            self._send(500, {"detail": {"reason": "Database error"}})
        else:
            self._send(200, {"dag_run_id": "r", "state": "running"})

    def do_PATCH(self) -> None:
        type(self).seen.append("PATCH")
        self._send(500, {"detail": {"reason": "Database error"}})


@pytest.fixture
def flaky():
    _Flaky.seen = []
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Flaky)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_read_is_retried_after_server_errors(flaky):
    api = AirflowAPI(flaky, "admin", "secret")
    assert api.dag_run("d", "r") == {"dag_run_id": "r", "state": "running"}
    assert _Flaky.seen == ["GET", "GET", "GET"]


def test_a_write_is_sent_once_and_its_error_is_clear(flaky):
    api = AirflowAPI(flaky, "admin", "secret")
    with pytest.raises(RuntimeError, match=r"PATCH .*/api/v2/dags/d -> 500: .*Database error"):
        api.unpause("d")
    assert _Flaky.seen == ["PATCH"]
