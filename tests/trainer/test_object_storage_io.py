"""The trainer reads and writes s3:// URIs, against a local S3-protocol server (moto's server mode):
the model directory is an object-storage prefix copied once into the model cache, the inputs and
every output (predictions, metrics, adapter, checkpoints) are objects, and a job restarted on a
fresh machine (an empty local disk) resumes from the checkpoint it left in the bucket. Credentials
reach the trainer the standard way (AWS_* environment variables), as the backends pass them."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.trainer.conftest import run_cli

LORA = {"adapter_dim": 8, "epochs": 2, "batch_size": 8, "learning_rate": 1e-2}


@pytest.fixture(scope="module")
def s3(s3_server, tmp_path_factory):
    """The session's local S3 server (tests/conftest.py), its credentials as the standard AWS_*
    variables the backends give the trainer, and a fresh prefix of its bucket for this module."""
    import uuid

    import s3fs

    env = {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing", "AWS_DEFAULT_REGION": "us-east-1",
           "AWS_ENDPOINT_URL": s3_server,
           "FLYWHEEL_MODEL_CACHE": str(tmp_path_factory.mktemp("model-cache")),
           "FLYWHEEL_TRAINER_WORKDIR": str(tmp_path_factory.mktemp("trainer-work"))}
    fs = s3fs.S3FileSystem(key="testing", secret="testing",
                           client_kwargs={"endpoint_url": s3_server, "region_name": "us-east-1"})
    return fs, env, f"flywheel-test/trainer-{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="module")
def staged(s3, tiny_model, routing_task):
    fs, _, root = s3
    fs.put(str(tiny_model) + "/", f"{root}/models/tiny-lm/", recursive=True)
    for name in ("train", "val", "eval"):
        fs.put_file(str(routing_task[name]), f"{root}/data/routing/{name}.jsonl")
    return f"s3://{root}/models/tiny-lm", f"s3://{root}/data/routing"


def _spec(root: str, name: str, strategy: str, model: str, data: str, **extra) -> dict:
    spec = {"job_name": name, "candidate": "tiny", "strategy": strategy, "model_uri": model,
            "eval_uri": f"{data}/eval.jsonl", "output_uri": f"s3://{root}/out/{name}",
            "generation": {"max_new_tokens": 16}, "max_seq_len": 256, "seed": 7}
    if strategy == "lora":
        spec |= {"train_uri": f"{data}/train.jsonl", "val_uri": f"{data}/val.jsonl", "lora": LORA}
    return spec | extra


def test_a_lora_job_reads_and_writes_s3(s3, staged, routing_task):
    fs, env, root = s3
    model, data = staged
    proc = run_cli("run", "--spec-json", json.dumps(_spec(root, "lora", "lora", model, data)), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert f"model {model} copied to the local cache" in proc.stdout
    out = f"{root}/out/lora"
    predictions = [json.loads(line) for line in fs.cat_file(f"{out}/predictions.jsonl").decode().split("\n") if line]
    assert [p["id"] for p in predictions] == list(routing_task["gold"])
    metrics = json.loads(fs.cat_file(f"{out}/metrics.json"))
    assert metrics["train_examples"] == 160 and metrics["val_loss"] < metrics["val_loss_before"]
    assert json.loads(fs.cat_file(f"{out}/adapter/adapter_config.json"))["r"] == 8
    assert fs.exists(f"{out}/adapter/adapter_model.safetensors")
    assert not fs.exists(f"{out}/checkpoints")  # removed once the adapter is written

    # The model prefix is copied once: the next job on this machine uses the cache.
    proc = run_cli("run", "--spec-json", json.dumps(_spec(root, "base", "base", model, data)), env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "copied to the local cache" not in proc.stdout
    rows = [line for line in fs.cat_file(f"{root}/out/base/predictions.jsonl").decode().split("\n") if line]
    assert len(rows) == len(routing_task["gold"])


def test_a_job_restarted_on_a_fresh_machine_resumes_from_its_checkpoint_in_the_bucket(s3, staged):
    fs, env, root = s3
    model, data = staged
    spec = _spec(root, "resume", "lora", model, data, checkpoint_steps=4, lora={**LORA, "epochs": 3})
    ckpt = f"{root}/out/resume/checkpoints"
    full_env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false", **env}
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trainer", "run", "--spec-json", json.dumps(spec)],
                            env=full_env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None and not fs.exists(f"{ckpt}/latest"):
        time.sleep(0.3)
        fs.invalidate_cache()
    assert proc.poll() is None, "the job ended before its first checkpoint reached the bucket"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    fs.invalidate_cache()
    saved = fs.cat_file(f"{ckpt}/latest").decode().strip()
    assert saved.startswith("checkpoint-") and fs.exists(f"{ckpt}/{saved}/trainer_state.json")
    shutil.rmtree(env["FLYWHEEL_TRAINER_WORKDIR"])  # a new pod: nothing of the first attempt on local disk

    proc = run_cli("run", "--spec-json", json.dumps(spec), env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    metrics = json.loads(fs.cat_file(f"{root}/out/resume/metrics.json"))
    assert metrics["resumed_from_step"] == int(saved.split("-")[1]) > 0
    assert metrics["train_steps"] == 3 * 20


def test_an_unreadable_model_uri_names_the_uri_and_the_config_key(s3, staged):
    _, env, root = s3
    _, data = staged
    missing = f"s3://{root}/models/no-such-model"
    proc = run_cli("run", "--spec-json", json.dumps(_spec(root, "nomodel", "base", missing, data)), env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert (f"spec field 'model_uri' (candidates.tiny.model_path in the flywheel config): "
            f"{missing} has no config.json") in proc.stderr
    proc = run_cli("run", "--spec-json", json.dumps(_spec(root, "noeval", "base", staged[0],
                                                          f"s3://{root}/data/none")), env=env)
    assert proc.returncode == 2 and f"spec field 'eval_uri': s3://{root}/data/none/eval.jsonl does not exist" in proc.stderr
