"""The GPUs of this machine and the trainer's environment, as the local backend and the embedded stack
see them (no torch or Airflow import)."""

from __future__ import annotations

import fcntl
import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

# Read by the trainer (flywheel_trainer.device.CpuShare; the names are repeated there, which imports
# nothing of this package).
CPU_SHARE_DIR_ENV = "FLYWHEEL_CPU_SHARE_DIR"
CPU_SHARE_CORES_ENV = "FLYWHEEL_CPU_SHARE_CORES"
CPU_SHARE_FILE_ENV = "FLYWHEEL_CPU_SHARE_FILE"  # this job's own registration in that folder
CPU_SHARE_WORK_SUFFIX = ".work"  # beside a registration: the work its job has left (WORK_SUFFIX there)
# A warm trainer server's socket (flywheel_trainer.warm; the embedded stack starts one on a machine
# without GPUs): CPU jobs are forked from it instead of starting a fresh interpreter. Set empty: off.
WARM_SOCKET_ENV = "FLYWHEEL_TRAINER_WARM_SOCKET"

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


@contextmanager
def cpu_share(directory: Path) -> Iterator[dict[str, str]]:
    """Register a running CPU job for as long as the block lasts (a file locked by this process):
    the trainer counts the jobs registered in ``directory`` and takes ``cores // jobs`` threads,
    following them as they start and end, and publishes its remaining work next to its own file
    (``<file>.work``) so that the jobs share the cores in proportion to it. Yields the trainer's
    environment for it."""
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / f"job-{os.getpid()}-{uuid.uuid4().hex[:8]}.lock"
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield {CPU_SHARE_DIR_ENV: str(directory), CPU_SHARE_CORES_ENV: str(len(os.sched_getaffinity(0))),
                   CPU_SHARE_FILE_ENV: str(path)}
        finally:
            path.unlink(missing_ok=True)
            path.with_name(path.name + CPU_SHARE_WORK_SUFFIX).unlink(missing_ok=True)


# What the trainer process inherits from the worker, nothing else: no Airflow configuration, JWT
# or API secrets, no database URLs, no connections. Object-storage credentials are added
# explicitly (the standard AWS variables, from the artifacts connection).
TRAINER_ENV_ALLOWLIST = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV",
    "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
    "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
    "XDG_CACHE_HOME", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
    CPU_SHARE_DIR_ENV, CPU_SHARE_CORES_ENV, CPU_SHARE_FILE_ENV,
)


def trainer_environment(base: dict[str, str] | None = None, *, extra: dict[str, str] | None = None) -> dict[str, str]:
    base = dict(os.environ if base is None else base)
    env = {k: base[k] for k in TRAINER_ENV_ALLOWLIST if k in base}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env
