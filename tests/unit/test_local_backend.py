"""The local GPU backend: what the trainer process gets (environment, devices) and how it ends."""

from __future__ import annotations

import os
import sys
import threading
import time

import pytest
from airflow.sdk.exceptions import AirflowFailException

from flywheel.adapters import object_storage
from flywheel.gpu_job import GpuJob
from flywheel_operators.local import LocalGpuJobOperator, claim_gpus, trainer_environment


def _operator(**kwargs) -> LocalGpuJobOperator:
    return LocalGpuJobOperator(task_id="gpu_job", job={}, kill_grace_seconds=2, **kwargs)


def test_the_trainer_gets_no_airflow_secrets_or_database_urls():
    worker = {
        "PATH": "/usr/bin", "HOME": "/home/airflow", "LANG": "C.UTF-8", "OMP_NUM_THREADS": "2",
        "AIRFLOW__API_AUTH__JWT_SECRET": "jwt", "AIRFLOW__API__SECRET_KEY": "key",
        "AIRFLOW__DATABASE__SQL_ALCHEMY_CONN": "postgresql://airflow:pw@db/airflow",
        "AIRFLOW_CONN_FLYWHEEL_DB": "postgresql://flywheel:pw@db/flywheel", "AIRFLOW_HOME": "/opt/airflow",
        "FLYWHEEL_HOME": "/x", "AWS_SECRET_ACCESS_KEY": "from-the-worker", "OPENAI_API_KEY": "sk-...",
    }
    env = trainer_environment(worker, extra={"AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s"})
    assert env["PATH"] == "/usr/bin" and env["OMP_NUM_THREADS"] == "2" and env["HF_HUB_OFFLINE"] == "1"
    assert env["AWS_SECRET_ACCESS_KEY"] == "s"  # only what the artifacts connection gives
    assert not [k for k in env if k.startswith(("AIRFLOW", "FLYWHEEL")) or k == "OPENAI_API_KEY"]
    assert "pw@" not in repr(env) and "jwt" not in env.values()


def test_gpus_are_claimed_exclusively_and_released(tmp_path):
    devices = ["0", "1", "2"]
    with claim_gpus(1, devices=devices, lock_dir=tmp_path) as a, claim_gpus(2, devices=devices, lock_dir=tmp_path) as b:
        assert len(a) == 1 and len(b) == 2 and not set(a) & set(b)
        got: list[list[str]] = []

        def third():
            with claim_gpus(1, devices=devices, lock_dir=tmp_path, poll=0.05) as c:
                got.append(c)

        t = threading.Thread(target=third)
        t.start()
        time.sleep(0.3)
        assert not got, "all three GPUs are held: the third job must wait"
    t.join(timeout=5)
    assert got and len(got[0]) == 1  # it ran once the others ended
    with claim_gpus(3, devices=devices, lock_dir=tmp_path) as all_three:
        assert sorted(all_three) == devices  # every lock was released


def test_no_gpus_means_a_cpu_job_and_too_many_fails_at_once(tmp_path):
    with claim_gpus(1, devices=[], lock_dir=tmp_path) as none:
        assert none == []
    with pytest.raises(AirflowFailException, match="asks for 4 GPUs"):
        with claim_gpus(4, devices=["0", "1"], lock_dir=tmp_path):
            pass


def test_on_kill_stops_the_trainer_and_what_it_started(tmp_path):
    op = _operator()
    child_pid_file = tmp_path / "child.pid"
    script = (
        "import subprocess, sys, time; "
        f"p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)']); "
        f"open({str(child_pid_file)!r}, 'w').write(str(p.pid)); print('started', flush=True); time.sleep(120)"
    )
    result = {}
    t = threading.Thread(target=lambda: result.update(rc=op._run([sys.executable, "-c", script], dict(os.environ))[0]))
    t.start()
    deadline = time.monotonic() + 20
    while not child_pid_file.exists() or not child_pid_file.read_text():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    child = int(child_pid_file.read_text())
    started = time.monotonic()
    op.on_kill()
    t.join(timeout=20)
    assert not t.is_alive() and result["rc"] < 0 and time.monotonic() - started < 15
    assert _gone(child), "the trainer's own child must end too (process group)"


def _gone(pid: int, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            state = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()[0]
        except FileNotFoundError:
            return True
        if state in ("Z", "X"):  # exited, waiting to be reaped by init
            return True
        time.sleep(0.05)
    return False


def _job(output: str, **spec) -> GpuJob:
    return GpuJob(name="w · c · base", image="x", args=["run"], gpus=1,
                  outputs={"predictions": f"{output}/predictions.jsonl"}, spec={"output_uri": output, **spec})


def test_a_spec_error_fails_without_retry(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}")
    output = object_storage.experiment_uri("d/r", "w|c|base")
    # The real trainer refuses an unknown strategy with exit status 2, before loading anything.
    with pytest.raises(AirflowFailException, match="exit 2.*strategy"):
        _operator().run_job(_job(output, strategy="magic", candidate="c", model_uri=str(tmp_path),
                                 eval_uri="file:///x.jsonl", job_name="j"))


def test_complete_outputs_are_not_recomputed(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}")
    output = object_storage.experiment_uri("d/r", "w|c|base")
    object_storage.write_json(f"{output}/metrics.json", {"generate_seconds": 1.0})
    object_storage.path(f"{output}/predictions.jsonl").write_text('{"id": "1", "output": "x"}\n')
    result = _operator(python="/nonexistent/python").run_job(_job(output))  # would fail if it ran
    assert result["reused"] is True and result["generate_seconds"] == 1.0 and result["output_dir"] == output


def test_cpu_jobs_share_the_cores_and_follow_each_other(tmp_path, monkeypatch):
    """A CPU job is registered in the share folder while it runs; the trainer's CpuShare counts the
    registered jobs (a crashed job's unlocked file does not count) and takes cores // jobs threads."""
    import json

    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}")
    monkeypatch.setenv("FLYWHEEL_GPU_LOCK_DIR", str(tmp_path / "locks"))
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # a CPU machine
    output = object_storage.experiment_uri("d/r", "w|c|base")
    # The "trainer": reports what it sees through the job's metrics.
    script = (
        "import json, os, sys; from pathlib import Path; from flywheel_trainer.device import CpuShare, work_file; "
        "share = CpuShare.from_env(); out = Path(json.load(open(sys.argv[-1]))['output_uri'][len('file://'):]); "
        "out.mkdir(parents=True, exist_ok=True); (out / 'predictions.jsonl').write_text(''); "
        "share.adjust(force=True, progress=(0, 10)); share._cpu = lambda: 1e6; "  # a training job's estimate
        "threads = share.adjust(force=True, progress=(5, 10)); "
        "(out / 'metrics.json').write_text(json.dumps({'running': share.running(), 'cores': share.cores, "
        "'threads': threads, 'own_held': share.own in share.held(), "
        "'work': json.loads(work_file(share.own).read_text())}))"
    )
    share_dir = tmp_path / "locks" / "cpu-jobs"
    share_dir.mkdir(parents=True)
    (share_dir / "job-crashed.lock").write_text("")  # nobody holds it
    op = LocalGpuJobOperator(task_id="gpu_job", job={}, entrypoint=["-c", script])
    cores = len(os.sched_getaffinity(0))
    alone = op.run_job(_job(output))
    assert alone["running"] == 1 and alone["cores"] == cores and alone["threads"] == cores
    assert alone["own_held"] is True and alone["work"]["remaining_cpu_seconds"] > 0  # it knows its own file
    assert [p.name for p in share_dir.iterdir()] == ["job-crashed.lock"]  # its files went with it

    from flywheel_operators.devices import cpu_share

    with cpu_share(share_dir), cpu_share(share_dir):  # two other jobs are running
        object_storage.path(f"{output}/metrics.json").unlink()
        shared = op.run_job(_job(output))
    assert shared["running"] == 3 and shared["threads"] == max(1, cores // 3)
    assert json.loads(object_storage.path(f"{output}/metrics.json").read_text())["running"] == 3
