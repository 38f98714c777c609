"""The ``local`` backend: the trainer entrypoint as a subprocess on this machine.

It is the embedded default (no cluster); the job still runs under the ``flywheel_gpu`` pool, so
concurrent runs share the machine's GPU slots the same way they share a Kubernetes GPU pool. The
pool bounds how many jobs run; which GPUs a job gets is decided here: ``job.gpus`` free devices,
claimed with a lock file each and handed to the trainer as ``CUDA_VISIBLE_DEVICES``.
"""

from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any, Iterator

from airflow.sdk import BaseOperator
from airflow.sdk.exceptions import AirflowFailException

from flywheel.adapters import object_storage
from flywheel.gpu_job import GpuJob
from flywheel_operators.devices import cpu_threads_env, visible_gpus

SPEC_ERROR_EXIT = 2  # the trainer's exit status for an invalid spec or input: retrying cannot help

# What the trainer process inherits from the worker, nothing else: no Airflow configuration, JWT
# or API secrets, no database URLs, no connections. Object-storage credentials are added
# explicitly (the standard AWS variables, from the artifacts connection).
TRAINER_ENV_ALLOWLIST = (
    "PATH", "HOME", "USER", "LOGNAME", "LANG", "LC_ALL", "LC_CTYPE", "TZ", "TMPDIR", "VIRTUAL_ENV",
    "PYTHONPATH", "LD_LIBRARY_PATH", "CUDA_HOME", "SSL_CERT_FILE", "REQUESTS_CA_BUNDLE",
    "HF_HOME", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_DATASETS_OFFLINE", "TOKENIZERS_PARALLELISM",
    "XDG_CACHE_HOME", "OMP_NUM_THREADS", "OMP_WAIT_POLICY", "MKL_NUM_THREADS",
)


def trainer_environment(base: dict[str, str] | None = None, *, extra: dict[str, str] | None = None) -> dict[str, str]:
    base = dict(os.environ if base is None else base)
    env = {k: base[k] for k in TRAINER_ENV_ALLOWLIST if k in base}
    env.update({"PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1"})
    env.update(extra or {})
    return env


def gpu_lock_dir() -> Path:
    return Path(os.environ.get("FLYWHEEL_GPU_LOCK_DIR") or Path(tempfile.gettempdir()) / "flywheel-gpu-locks")


@contextmanager
def claim_gpus(count: int, *, devices: list[str] | None = None, lock_dir: Path | None = None,
               poll: float = 2.0, log=None) -> Iterator[list[str]]:
    """Claim ``count`` free devices (a lock file each, released when the block ends or the process
    dies); waits while fewer are free. No devices on this machine: yields [] (a CPU job)."""
    devices = visible_gpus() if devices is None else devices
    if not devices or count <= 0:
        yield []
        return
    if count > len(devices):
        raise AirflowFailException(f"the job asks for {count} GPUs; this machine has {len(devices)} ({devices})")
    lock_dir = lock_dir or gpu_lock_dir()
    lock_dir.mkdir(parents=True, exist_ok=True)
    waited = False
    while True:
        with ExitStack() as held:
            claimed = []
            for device in devices:
                fh = held.enter_context(open(lock_dir / f"gpu-{device}.lock", "w"))
                try:
                    fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    continue  # held by another job; the file closes with the stack
                claimed.append(device)
                if len(claimed) == count:
                    yield claimed
                    return
        if not waited and log is not None:
            log.info("waiting for %d free GPU(s) of %s (others are held by running jobs)", count, devices)
            waited = True
        time.sleep(poll)


class LocalGpuJobOperator(BaseOperator):
    """Run a ``GpuJob`` (a dict from XCom) with the trainer as a local subprocess.

    Returns the trainer's metrics plus wall seconds; the trainer leaves them in
    ``<output folder>/metrics.json`` beside the predictions, where every backend leaves them.
    """

    template_fields: Sequence[str] = ("job",)
    ui_color = "#ffd8a8"

    def __init__(
        self,
        *,
        job: dict[str, Any],
        python: str | None = None,
        entrypoint: Sequence[str] = ("-m", "flywheel_trainer"),
        kill_grace_seconds: float = 10.0,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.python = python or sys.executable
        # What the interpreter runs: the trainer; bench/parallel puts a job of known duration here.
        self.entrypoint = list(entrypoint)
        self.kill_grace_seconds = kill_grace_seconds
        self._proc: subprocess.Popen | None = None

    def execute(self, context: Any) -> dict[str, Any]:
        job = GpuJob.from_dict(self.job)
        context["job_label"] = job.name  # rendered by map_index_template
        return self.run_job(job)

    def run_job(self, job: GpuJob) -> dict[str, Any]:
        output = job.outputs["predictions"].rsplit("/", 1)[0]  # the folder the job writes
        if object_storage.is_complete(output):
            # This run's own output is complete: a retried task, or outputs of an identical earlier
            # job copied here when the experiment was prepared.
            self.log.info("The job's outputs are complete in %s: nothing to run", output)
            metrics = object_storage.read_json(f"{output}/{object_storage.METRICS}")
            return {**metrics, "reused": True, "wall_seconds": 0.0, "output_dir": output}
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(job.spec, fh)
            spec_path = fh.name
        cmd = [self.python, *self.entrypoint, *job.args, "--spec", spec_path]
        try:
            with claim_gpus(job.gpus, log=self.log) as gpus:
                extra = {**object_storage.trainer_env()}
                if gpus:
                    extra["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                else:
                    extra.update(cpu_threads_env())
                env = trainer_environment(extra=extra)
                self.log.info("Running %s on %s", " ".join(cmd), f"GPU(s) {','.join(gpus)}" if gpus else "CPU")
                rc, tail, wall = self._run(cmd, env)
        finally:
            os.unlink(spec_path)
        if rc == SPEC_ERROR_EXIT:
            # An invalid spec or input file fails the same way every time: no retry.
            raise AirflowFailException(f"trainer refused the job (exit {rc}): " + " / ".join(tail[-3:]))
        if rc != 0:
            raise RuntimeError(f"trainer exited with {rc}: " + " / ".join(tail[-3:]))
        metrics = object_storage.read_json(f"{output}/{object_storage.METRICS}")
        return {**metrics, "reused": False, "wall_seconds": round(wall, 3), "output_dir": output}

    def _run(self, cmd: list[str], env: dict[str, str]) -> tuple[int, list[str], float]:
        started = time.monotonic()
        # Its own process group: a kill reaches the trainer and anything it started.
        self._proc = proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                             env=env, start_new_session=True)
        tail: list[str] = []
        try:
            assert proc.stdout is not None
            for line in proc.stdout:
                self.log.info("trainer | %s", line.rstrip())
                tail = (tail + [line.rstrip()])[-20:]
            rc = proc.wait()
        finally:
            # A timeout (AirflowTaskTimeout) or any error while waiting must not leave it running.
            self._kill()
            self._proc = None
        return rc, tail, time.monotonic() - started

    def _kill(self) -> None:
        proc = self._proc
        if proc is None or proc.poll() is not None:
            return
        self.log.warning("Stopping the trainer (pid %d)", proc.pid)
        for sig, wait in ((signal.SIGTERM, self.kill_grace_seconds), (signal.SIGKILL, 10.0)):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                return
            try:
                proc.wait(timeout=wait)
                return
            except subprocess.TimeoutExpired:
                continue

    def on_kill(self) -> None:
        """The task was killed (marked failed/cleared in the UI, or its worker stops): so is the trainer."""
        self._kill()
