"""The GPUs of this machine, as the local backend and the embedded stack see them (no torch import)."""

from __future__ import annotations

import os
from pathlib import Path

NVIDIA_DRIVER_GPUS = Path("/proc/driver/nvidia/gpus")


def visible_gpus() -> list[str]:
    """Device ids the jobs may use: CUDA_VISIBLE_DEVICES when it is set (empty or -1: none),
    otherwise one per GPU the NVIDIA driver knows (none without the driver)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        ids = [d.strip() for d in visible.split(",") if d.strip()]
        return [] if ids[:1] == ["-1"] else ids
    if NVIDIA_DRIVER_GPUS.is_dir():
        return [str(i) for i in range(sum(1 for _ in NVIDIA_DRIVER_GPUS.iterdir()))]
    return []


def cpu_threads_env(slots: int | None = None) -> dict[str, str]:
    """On a machine without GPUs the pool's slots share the CPU cores: each trainer gets its share
    of threads, so that concurrent jobs do not oversubscribe the cores and slow each other down."""
    if visible_gpus():
        return {}
    slots = slots or int(os.environ.get("FLYWHEEL_GPU_SLOTS") or 1)
    threads = max(1, len(os.sched_getaffinity(0)) // max(1, slots))
    return {"OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads)}
