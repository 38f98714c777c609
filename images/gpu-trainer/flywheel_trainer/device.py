"""Where a job runs. `runtime()` is the one place that decides device, dtype and generation backend."""

from __future__ import annotations

import fcntl
import importlib.util
import os
import random
import time
from dataclasses import dataclass
from pathlib import Path

# Set by the local backend for a CPU job: a folder with one locked file per running CPU job of this
# machine, and the cores they share (flywheel_operators.devices.cpu_share).
CPU_SHARE_DIR_ENV = "FLYWHEEL_CPU_SHARE_DIR"
CPU_SHARE_CORES_ENV = "FLYWHEEL_CPU_SHARE_CORES"


@dataclass(frozen=True)
class Runtime:
    device: str  # "cuda" or "cpu"
    dtype: str  # "bfloat16" on a GPU that supports it, else "float32" (fp16 would need loss scaling)
    gpu_count: int
    backend: str  # generation backend: "vllm" or "transformers"

    @property
    def torch_dtype(self):
        import torch

        return getattr(torch, self.dtype)


def cpu_threads() -> int:
    """The cores this process may use (cgroup/affinity aware), capped by OMP_NUM_THREADS when set."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    limit = os.environ.get("OMP_NUM_THREADS", "")
    return max(1, min(cores, int(limit))) if limit.isdigit() and int(limit) > 0 else cores


class CpuShare:
    """A CPU job's fair share of the machine's cores, followed while it runs.

    Several CPU jobs of the local backend share the cores: each gets ``cores // running jobs``
    threads, and as the others start and end it takes more or fewer (``torch.set_num_threads``
    between steps), so the last job running alone uses every core instead of one. The running jobs
    are the files in the share folder that some process holds a lock on (a crashed job's file is
    unlocked: it does not count). Threads change only between steps; float sums may then round
    differently from a run at a fixed thread count.
    """

    def __init__(self, directory: Path, cores: int, *, every_seconds: float = 2.0) -> None:
        self.directory, self.cores, self.every = directory, max(1, cores), every_seconds
        self.threads: int | None = None
        self._checked = 0.0

    @classmethod
    def from_env(cls) -> "CpuShare | None":
        directory, cores = os.environ.get(CPU_SHARE_DIR_ENV), os.environ.get(CPU_SHARE_CORES_ENV, "")
        if not directory or not cores.isdigit() or not Path(directory).is_dir():
            return None
        return cls(Path(directory), int(cores))

    def running(self) -> int:
        count = 0
        for path in self.directory.glob("*.lock"):
            try:
                with open(path, "rb") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        count += 1  # held: a running job
                        continue
                    fcntl.flock(fh, fcntl.LOCK_UN)  # nobody holds it: a job that ended without cleaning up
            except OSError:
                continue
        return max(1, count)

    def adjust(self, *, force: bool = False) -> int:
        """Set this process's torch threads to its share now (at most every ``every_seconds``)."""
        now = time.monotonic()
        if self.threads is not None and not force and now - self._checked < self.every:
            return self.threads
        self._checked = now
        threads = max(1, self.cores // self.running())
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
        return threads


_SHARE: CpuShare | None = None


def cpu_share() -> CpuShare | None:
    """This job's CpuShare when the local backend gave it one (None on a GPU or in a pod)."""
    return _SHARE


def runtime() -> Runtime:
    import torch

    if torch.cuda.is_available():
        dtype = "bfloat16" if torch.cuda.is_bf16_supported() else "float32"
        # vLLM is optional: the image has it, a GPU box that only pip-installed this package may not.
        backend = "vllm" if importlib.util.find_spec("vllm") is not None else "transformers"
        return Runtime("cuda", dtype, torch.cuda.device_count(), backend)
    # More threads than cores only adds contention (the embedded stack runs on 2 cores).
    torch.set_num_threads(cpu_threads())
    global _SHARE
    _SHARE = CpuShare.from_env()
    if _SHARE is not None:
        _SHARE.adjust(force=True)
    return Runtime("cpu", "float32", 0, "transformers")


def seed_everything(seed: int) -> None:
    import torch

    random.seed(seed)
    torch.manual_seed(seed)  # seeds CUDA too
