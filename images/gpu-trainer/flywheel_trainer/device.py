"""Where a job runs. `runtime()` is the one place that decides device, dtype and generation backend."""

from __future__ import annotations

import fcntl
import importlib.util
import json
import math
import os
import random
import resource
import time
from dataclasses import dataclass
from pathlib import Path

# Set by the local backend for a CPU job: a folder with one locked file per running CPU job of this
# machine, the cores they share, and this job's own file (flywheel_operators.devices.cpu_share).
CPU_SHARE_DIR_ENV = "FLYWHEEL_CPU_SHARE_DIR"
CPU_SHARE_CORES_ENV = "FLYWHEEL_CPU_SHARE_CORES"
CPU_SHARE_FILE_ENV = "FLYWHEEL_CPU_SHARE_FILE"
WORK_SUFFIX = ".work"  # next to a job's file: its remaining CPU-seconds, as the job estimates them
# Linux gives each nice level about 1.25x less CPU weight than the one before (sched_prio_to_weight).
NICE_STEP = 1.25
# At most this much lower priority (weight 335 against 1024): a job about to end (little work left)
# must still get through its last steps and its predictions while longer jobs train.
MAX_NICE = 5


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


def relative_nice(mine: float, largest: float) -> int:
    """The nice value that gives a job CPU weight in proportion to its remaining work, next to the
    job with the most work left (nice 0): half of it is nice 3 (1.25 ** 3 = 1.95), at most MAX_NICE."""
    if largest <= 0 or mine >= largest:
        return 0
    if mine <= 0:
        return MAX_NICE
    return min(MAX_NICE, round(math.log(largest / mine) / math.log(NICE_STEP)))


def work_file(registration: Path) -> Path:
    """Where the job registered as ``registration`` says how much work it has left."""
    return registration.with_name(registration.name + WORK_SUFFIX)


def _process_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)  # every thread of this process
    return usage.ru_utime + usage.ru_stime


def _renice(nice: int) -> None:
    """Lower this process's priority to ``nice``: every thread (on Linux a nice value belongs to a
    thread, and torch's worker threads exist already) and, when the process leads its own session
    (the local backend starts each job so), the session's autogroup. With autogroups on (most Linux
    desktops and VMs) the scheduler shares the CPU between sessions first and weighs nice values only
    within one, so a job in its own session is slowed down only by its autogroup's nice value."""
    try:
        tids = [int(t) for t in os.listdir("/proc/self/task")]
    except OSError:  # not on Linux
        tids = [0]
    for tid in tids:
        try:
            os.setpriority(os.PRIO_PROCESS, tid, nice)
        except OSError:
            pass  # a thread that just ended
    if os.getsid(0) == os.getpid():  # never the autogroup of a session this job merely belongs to
        try:
            with open("/proc/self/autogroup", "w") as fh:
                fh.write(str(nice))
        except OSError:
            pass  # no autogroups (kernel without them): the threads' nice values are what counts


class CpuShare:
    """A CPU job's fair share of the machine's cores, followed while it runs.

    Several CPU jobs of the local backend share the cores: each gets ``cores // running jobs``
    threads, and as the others start and end it takes more or fewer (``torch.set_num_threads``
    between steps), so the last job running alone uses every core instead of one. The running jobs
    are the files in the share folder that some process holds a lock on (a crashed job's file is
    unlocked: it does not count). Threads change only between steps; float sums may then round
    differently from a run at a fixed thread count.

    A training job also says how much work it has left: the CPU-seconds its steps took so far,
    scaled to the steps it has still to do, written next to its own file. When more jobs than cores
    run, the one with the most work left keeps nice 0 and the others lower their priority in
    proportion (:func:`relative_nice`), so the jobs end together instead of the longest one running
    alone at the end on a core it cannot fill. Priority is only ever lowered, never raised again (an
    unprivileged process may not), and only once ``min_cpu_seconds`` of steps were measured.
    Scheduling priority changes no arithmetic.
    """

    def __init__(self, directory: Path, cores: int, *, own: Path | None = None, every_seconds: float = 2.0,
                 min_cpu_seconds: float = 10.0, cpu_seconds=_process_cpu_seconds) -> None:
        self.directory, self.cores, self.every = directory, max(1, cores), every_seconds
        self.own, self.min_cpu, self._cpu = own, min_cpu_seconds, cpu_seconds
        self.threads: int | None = None
        self.nice = 0
        self._checked = 0.0
        self._start: tuple[int, float] | None = None  # (step, CPU-seconds) when progress was first given

    @classmethod
    def from_env(cls) -> "CpuShare | None":
        directory, cores = os.environ.get(CPU_SHARE_DIR_ENV), os.environ.get(CPU_SHARE_CORES_ENV, "")
        if not directory or not cores.isdigit() or not Path(directory).is_dir():
            return None
        own = os.environ.get(CPU_SHARE_FILE_ENV)
        return cls(Path(directory), int(cores), own=Path(own) if own else None)

    def held(self) -> list[Path]:
        """The files of the running jobs (this one's included)."""
        out = []
        for path in sorted(self.directory.glob("*.lock")):
            try:
                with open(path, "rb") as fh:
                    try:
                        fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    except BlockingIOError:
                        out.append(path)  # held: a running job
                        continue
                    fcntl.flock(fh, fcntl.LOCK_UN)  # nobody holds it: a job that ended without cleaning up
            except OSError:
                continue
        return out

    def running(self) -> int:
        return max(1, len(self.held()))

    def _estimate(self, progress: tuple[int, int]) -> float | None:
        done, total = progress
        now = self._cpu()
        if self._start is None:
            self._start = (done, now)
            return None
        steps, used = done - self._start[0], now - self._start[1]
        if steps <= 0 or used < self.min_cpu:
            return None
        return used / steps * max(0, total - done)

    def _publish(self, remaining: float) -> None:
        if self.own is None:
            return
        work = work_file(self.own)
        tmp = work.with_name(work.name + ".tmp")
        try:
            tmp.write_text(json.dumps({"remaining_cpu_seconds": round(remaining, 3)}))
            os.replace(tmp, work)  # readers see the old estimate or the new one, never half of one
        except OSError:
            pass

    def _others_remaining(self, running: list[Path]) -> list[float]:
        out = []
        for path in running:
            if self.own is not None and path == self.own:
                continue
            try:
                value = json.loads(work_file(path).read_text())["remaining_cpu_seconds"]
            except (OSError, ValueError, KeyError, TypeError):
                continue  # a job that has not estimated yet (or never will: evaluation only)
            if isinstance(value, (int, float)) and math.isfinite(value) and value >= 0:
                out.append(float(value))
        return out

    def adjust(self, *, force: bool = False, progress: tuple[int, int] | None = None) -> int:
        """Set this process's torch threads to its share now (at most every ``every_seconds``);
        ``progress`` = (steps done, steps in all) of a training job, for its priority."""
        now = time.monotonic()
        if self.threads is not None and not force and now - self._checked < self.every:
            return self.threads
        self._checked = now
        running = self.held()
        threads = max(1, self.cores // max(1, len(running)))
        if threads != self.threads:
            import torch

            torch.set_num_threads(threads)
            self.threads = threads
        remaining = self._estimate(progress) if progress is not None else None
        if remaining is not None:
            self._publish(remaining)
            if len(running) > self.cores:  # the cores are contended: share them by the work left
                largest = max([remaining, *self._others_remaining(running)])
                nice = relative_nice(remaining, largest)
                if nice > self.nice and largest >= self.min_cpu:  # nothing to gain at the very end
                    _renice(nice)
                    self.nice = nice
                    print(f"cpu share: {len(running)} jobs on {self.cores} cores; about {remaining:.0f} CPU-s of "
                          f"work left against {largest:.0f} for the longest job: nice {nice}", flush=True)
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
