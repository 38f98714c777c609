"""The ``local`` backend: the trainer entrypoint as a subprocess on this machine.

It is the embedded default (no cluster); the job still runs under the ``flywheel_gpu`` pool, so
concurrent runs share the machine's "GPU" slots the same way they share a Kubernetes GPU pool.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from airflow.sdk import BaseOperator

from flywheel.gpu_job import GpuJob
from flywheel_operators.devices import cpu_threads_env


class LocalGpuJobOperator(BaseOperator):
    """Run a ``GpuJob`` (a dict from XCom) with the trainer as a local subprocess.

    Returns the trainer's metrics plus wall seconds; the trainer also leaves them in
    ``<output_dir>/metrics.json`` beside the predictions, where every backend leaves them.
    """

    template_fields: Sequence[str] = ("job",)
    ui_color = "#ffd8a8"

    def __init__(
        self,
        *,
        job: dict[str, Any],
        python: str | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        self.job = job
        self.python = python or sys.executable

    def execute(self, context: Any) -> dict[str, Any]:
        job = GpuJob.from_dict(self.job)
        context["job_label"] = job.name  # rendered by map_index_template
        return self.run_job(job)

    def run_job(self, job: GpuJob) -> dict[str, Any]:
        out_dir = Path(job.spec["output_dir"])
        metrics_file = out_dir / "metrics.json"
        if (out_dir / "predictions.jsonl").exists() and metrics_file.exists():
            # Content-addressed output: the same inputs, model and hyper-parameters ran already.
            self.log.info("Reusing the existing output of an identical job in %s", out_dir)
            metrics = json.loads(metrics_file.read_text())
            return {**metrics, "reused": True, "wall_seconds": 0.0, "output_dir": str(out_dir)}
        out_dir.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile("w", suffix=".json", delete=False) as fh:
            json.dump(job.spec, fh)
            spec_path = fh.name
        cmd = [self.python, "-m", "flywheel_trainer", *job.args, "--spec", spec_path]
        self.log.info("Running %s", " ".join(cmd))
        started = time.monotonic()
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "HF_HUB_OFFLINE": "1", "TRANSFORMERS_OFFLINE": "1",
               **cpu_threads_env()}
        try:
            proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
            assert proc.stdout is not None
            tail: list[str] = []
            for line in proc.stdout:
                self.log.info("trainer | %s", line.rstrip())
                tail = (tail + [line.rstrip()])[-20:]
            rc = proc.wait()
        finally:
            os.unlink(spec_path)
        wall = time.monotonic() - started
        if rc != 0:
            raise RuntimeError(f"trainer exited with {rc}: " + " / ".join(tail[-3:]))
        metrics = json.loads(metrics_file.read_text())
        return {**metrics, "reused": False, "wall_seconds": round(wall, 3), "output_dir": str(out_dir)}
