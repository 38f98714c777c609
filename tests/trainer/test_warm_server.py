"""The warm trainer server (flywheel_trainer.warm) behind the local backend: a job forked from it is
the same job as a fresh ``python -m flywheel_trainer`` process (same predictions, adapter and
losses), its errors and exit status come back the same way, and a killed task takes its job with it.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flywheel.gpu_job import GpuJob
from flywheel_operators.local import WARM_SOCKET_ENV, LocalGpuJobOperator, trainer_environment
from tests.trainer.conftest import corpus_docs, write_jsonl


@pytest.fixture(scope="module")
def warm_server(tmp_path_factory):
    sock = tmp_path_factory.mktemp("warm") / "trainer.sock"
    base = {**os.environ, "AIRFLOW__API_AUTH__JWT_SECRET": "must-not-reach-a-job", "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trainer", "warm-server", "--socket", str(sock)],
                            env=trainer_environment(base), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    deadline = time.monotonic() + 120
    while not sock.exists():
        assert proc.poll() is None, proc.stdout.read()
        assert time.monotonic() < deadline, "the warm server did not listen"
        time.sleep(0.1)
    yield sock
    proc.terminate()
    proc.wait(timeout=30)
    assert not sock.exists(), "the server removes its socket when it stops"


def _operator() -> LocalGpuJobOperator:
    return LocalGpuJobOperator(task_id="gpu_job", job={}, kill_grace_seconds=2)


def _lora_job(tiny_model: Path, routing_task: dict, out: Path) -> GpuJob:
    spec = {"job_name": "route · tiny · lora", "candidate": "tiny", "strategy": "lora", "model_uri": str(tiny_model),
            "eval_uri": str(routing_task["eval"]), "train_uri": str(routing_task["train"]),
            "val_uri": str(routing_task["val"]), "output_uri": str(out), "generation": {"max_new_tokens": 16},
            "lora": {"adapter_dim": 4, "epochs": 1, "batch_size": 16, "learning_rate": 3e-3, "max_train_examples": 48},
            "max_seq_len": 256, "seed": 7}
    return GpuJob(name="route · tiny · lora", image="x", args=["run"], gpus=1,
                  outputs={"predictions": f"{out}/predictions.jsonl"}, spec=spec)


def _predictions(out: Path) -> list[dict]:
    rows = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return [{k: v for k, v in r.items() if k != "latency_s"} for r in rows]


def _logged(capfd) -> str:
    out, err = capfd.readouterr()
    return out + err  # the operator's log (Airflow's structlog writes it to the terminal here)


def test_a_forked_job_is_the_fresh_process_job(tmp_path, tiny_model, routing_task, warm_server, monkeypatch, capfd):
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    monkeypatch.delenv(WARM_SOCKET_ENV, raising=False)
    fresh = _operator().run_job(_lora_job(tiny_model, routing_task, tmp_path / "fresh"))
    assert "Started by the warm trainer server" not in _logged(capfd)
    monkeypatch.setenv(WARM_SOCKET_ENV, str(warm_server))
    warm = _operator().run_job(_lora_job(tiny_model, routing_task, tmp_path / "warm"))
    logged = _logged(capfd)
    assert "Started by the warm trainer server" in logged
    assert "trainer | adapter saved to" in logged  # the job's output came through the pipe
    assert _predictions(tmp_path / "warm") == _predictions(tmp_path / "fresh")
    for key in ("train_loss_per_epoch", "val_loss_before", "val_loss", "train_steps", "train_tokens", "train_examples"):
        assert warm[key] == fresh[key], key
    assert ((tmp_path / "warm" / "adapter" / "adapter_model.safetensors").read_bytes()
            == (tmp_path / "fresh" / "adapter" / "adapter_model.safetensors").read_bytes())


def test_errors_come_back_as_from_a_fresh_process(tmp_path, warm_server, monkeypatch, capfd):
    monkeypatch.setenv(WARM_SOCKET_ENV, str(warm_server))
    op = _operator()
    env = trainer_environment()
    rc, tail, _ = op._run([sys.executable, "-m", "flywheel_trainer", "run", "--spec", str(tmp_path / "none.json")],
                          env)
    assert "Started by the warm trainer server" in _logged(capfd)
    assert rc == 2 and "cannot read the job spec from --spec" in tail[-1]
    rc, tail, _ = op._run([sys.executable, "-m", "flywheel_trainer", "run"], env)  # argparse's own exit
    assert rc == 2 and "one of the arguments --spec --spec-json is required" in tail[-1]


def test_a_bad_request_is_refused_and_the_server_goes_on(tmp_path, warm_server, monkeypatch):
    import socket

    def ask(payload: bytes, fds: list[int]) -> dict:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.connect(str(warm_server))
            socket.send_fds(conn, [payload], fds)
            return json.loads(conn.makefile().readline())

    read_end, write_end = os.pipe()
    try:
        # Half a line, then nothing: refused after REQUEST_TIMEOUT, not waited on forever.
        assert "timed out" in ask(b"not json", [write_end])["error"]
        assert "Expecting value" in ask(b"not json\n", [write_end])["error"]
        assert "'argv' (strings)" in ask(b'{"argv": [1], "env": {}}\n', [write_end])["error"]
        assert "'argv' (strings)" in ask(b"[1, 2]\n", [write_end])["error"]
        assert "one file descriptor" in ask(b'{"argv": [], "env": {}}\n', [])["error"]
    finally:
        os.close(read_end)
        os.close(write_end)
    # still serving: a real (refused) job runs and exits 2
    monkeypatch.setenv(WARM_SOCKET_ENV, str(warm_server))
    rc, tail, _ = _operator()._run([sys.executable, "-m", "flywheel_trainer", "run", "--spec", str(tmp_path / "x.json")],
                                   trainer_environment())
    assert rc == 2 and "cannot read the job spec" in tail[-1]


def test_a_killed_task_stops_its_forked_job(tmp_path, warm_server, monkeypatch, capfd):
    corpus = write_jsonl(tmp_path / "corpus.jsonl", corpus_docs(200, seed=1))
    monkeypatch.setenv(WARM_SOCKET_ENV, str(warm_server))
    op = _operator()
    result: dict = {}
    cmd = [sys.executable, "-m", "flywheel_trainer", "pretrain", "--corpus", str(corpus), "--out",
           str(tmp_path / "m"), "--hidden", "32", "--layers", "1", "--vocab", "300", "--max-seq-len", "128",
           "--block", "128", "--steps", "100000"]
    t = threading.Thread(target=lambda: result.update(rc=op._run(cmd, trainer_environment())[0]))
    t.start()
    deadline, logged = time.monotonic() + 60, ""
    while "Started by the warm trainer server" not in logged:
        assert time.monotonic() < deadline
        time.sleep(0.05)
        logged += _logged(capfd)
    pid = int(logged.split("as pid ")[1].split()[0])
    environ = Path(f"/proc/{pid}/environ").read_bytes()
    assert b"must-not-reach-a-job" not in environ and b"AIRFLOW" not in environ
    time.sleep(1.0)
    started = time.monotonic()
    op.on_kill()
    t.join(timeout=30)
    assert not t.is_alive() and time.monotonic() - started < 20
    assert result["rc"] == -signal.SIGTERM
    deadline = time.monotonic() + 15
    while Path(f"/proc/{pid}").exists():  # stopped and reaped by the server
        assert time.monotonic() < deadline, "the forked job is still there"
        time.sleep(0.1)
