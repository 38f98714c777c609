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
import socket
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
from flywheel_operators.devices import (  # noqa: F401  (TRAINER_ENV_ALLOWLIST, trainer_environment: imported from here)
    TRAINER_ENV_ALLOWLIST,
    WARM_SOCKET_ENV,
    cpu_share,
    cpu_threads_env,
    trainer_environment,
    visible_gpus,
)

SPEC_ERROR_EXIT = 2  # the trainer's exit status for an invalid spec or input: retrying cannot help


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
        self._warm: socket.socket | None = None
        self._warm_killed = False

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
            with claim_gpus(job.gpus, log=self.log) as gpus, ExitStack() as held:
                extra = {**object_storage.trainer_env()}
                if gpus:
                    extra["CUDA_VISIBLE_DEVICES"] = ",".join(gpus)
                else:
                    extra.update(cpu_threads_env())
                    # The CPU jobs running now share the cores; the trainer follows their number.
                    extra.update(held.enter_context(cpu_share(gpu_lock_dir() / "cpu-jobs")))
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
        warm = os.environ.get(WARM_SOCKET_ENV)
        if (warm and self.python == sys.executable and self.entrypoint == ["-m", "flywheel_trainer"]
                and "CUDA_VISIBLE_DEVICES" not in env):
            result = self._run_warm(Path(warm), cmd[1 + len(self.entrypoint):], env)
            if result is not None:
                return result
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

    def _run_warm(self, socket_path: Path, argv: list[str], env: dict[str, str]) -> tuple[int, list[str], float] | None:
        """The job forked by the warm server (flywheel_trainer.warm): the same entrypoint, arguments
        and environment as the subprocess, without the import cost. None when the server cannot be
        reached (then the caller starts a fresh process)."""
        started = time.monotonic()
        read_end, write_end = os.pipe()
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            conn.connect(str(socket_path))
            request = json.dumps({"argv": argv, "env": env, "cwd": os.getcwd()}).encode() + b"\n"
            socket.send_fds(conn, [request], [write_end])
        except OSError as exc:
            for fd in (read_end, write_end):
                os.close(fd)
            conn.close()
            self.log.warning("The warm trainer server at %s is not reachable (%s): starting a fresh process",
                             socket_path, exc)
            return None
        os.close(write_end)
        self._warm, self._warm_killed = conn, False
        replies = conn.makefile("r", encoding="utf-8")
        tail: list[str] = []
        try:
            first = json.loads(replies.readline() or "{}")
            if "pid" not in first:
                os.close(read_end)
                raise RuntimeError(f"the warm trainer server refused the job: {first.get('error', 'no answer')}")
            self.log.info("Started by the warm trainer server %s as pid %d", socket_path, first["pid"])
            with os.fdopen(read_end, encoding="utf-8", errors="replace") as output:
                for line in output:
                    self.log.info("trainer | %s", line.rstrip())
                    tail = (tail + [line.rstrip()])[-20:]
            try:
                last = replies.readline()
            except OSError:
                last = ""
            if last:
                rc = int(json.loads(last)["exit"])
            elif self._warm_killed:
                rc = -signal.SIGTERM  # on_kill: the server stopped the job
            else:
                raise RuntimeError(f"the warm trainer server at {socket_path} went away while the job ran")
        finally:
            # Closing the connection before the job ended (a timeout, an error here) makes the
            # server stop the job.
            self._warm = None
            replies.close()
            conn.close()
        return rc, tail, time.monotonic() - started

    def _kill(self) -> None:
        warm = self._warm
        if warm is not None:
            self.log.warning("Stopping the trainer (the warm server stops a job whose caller goes away)")
            self._warm_killed = True
            try:
                warm.shutdown(socket.SHUT_RDWR)  # takes effect even while a reader holds the socket
            except OSError:
                pass
            return
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
