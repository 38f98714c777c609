"""Artifacts through object storage, on both stores: a local folder (file://) and S3 (moto's
server mode: real s3fs + botocore over HTTP, credentials from an Airflow connection)."""

from __future__ import annotations

import json

import pytest

from flywheel.adapters import object_storage as store

RUN_A = "flywheel_daily/scheduled__2026-11-28T00:00:00+00:00"
RUN_B = "flywheel_on_demand/manual__2026-11-29T10:00:00.123+00:00"
ROWS = [{"id": "1", "split": "eval", "text": "héllo"}, {"id": "2", "split": "train", "text": "world"}]


@pytest.fixture(params=["file", "s3"])
def artifacts(request, tmp_path, monkeypatch):
    if request.param == "file":
        monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}/artifacts")
    else:
        request.getfixturevalue("s3_artifacts")
    return request.param


def test_round_trip_is_content_addressed_and_run_scoped(artifacts):
    uri = store.put_jsonl("datasets", ROWS, run_key=RUN_A)
    assert uri.startswith(store.root_uri()) and uri.startswith("file://" if artifacts == "file" else "s3://")
    assert store.read_jsonl(uri) == ROWS
    # The same content in the same run: the same key (a retried task finds it).
    assert store.put_jsonl("datasets", ROWS, run_key=RUN_A) == uri
    assert uri.rsplit("/", 1)[-1] == store.sha256(store.jsonl_bytes(ROWS)) + ".jsonl"
    # Another run never writes under the first one's keys, even with the same content.
    other = store.put_jsonl("datasets", ROWS, run_key=RUN_B)
    assert other != uri and store.read_jsonl(other) == ROWS
    assert store.run_prefix(RUN_A) in uri and store.run_prefix(RUN_B) in other


def test_json_and_existence(artifacts):
    target = f"{store.experiment_uri(RUN_A, 'w|c|lora')}/metrics.json"
    assert not store.exists(target)
    store.write_json(target, {"train_seconds": 1.5})
    assert store.exists(target) and store.read_json(target) == {"train_seconds": 1.5}


def _fake_output(uri: str, *, adapter: bool = True) -> None:
    """What the trainer leaves behind (metrics, adapter files, then predictions)."""
    store.write_json(f"{uri}/metrics.json", {"train_seconds": 2.0})
    if adapter:
        store.path(f"{uri}/adapter").mkdir(parents=True, exist_ok=True)
        store.path(f"{uri}/adapter/adapter_config.json").write_text('{"r": 32}')
        store.path(f"{uri}/adapter/adapter_model.safetensors").write_bytes(b"\x00\x01weights")
    store.path(f"{uri}/predictions.jsonl").write_text('{"id": "1", "output": "x"}\n')


def test_overlapping_runs_reuse_by_copy_and_never_share_keys(artifacts):
    first = store.experiment_uri(RUN_A, "tool_router|tiny|lora")
    second = store.experiment_uri(RUN_B, "tool_router|tiny|lora")
    assert first != second
    assert store.reuse_output("f" * 64, second) is None  # nothing computed yet
    _fake_output(first)
    assert store.is_complete(first)
    store.remember_output("f" * 64, first)
    assert store.reuse_output("f" * 64, second) == first
    assert store.is_complete(second)
    assert store.path(f"{second}/adapter/adapter_model.safetensors").read_bytes() == b"\x00\x01weights"
    assert store.read_json(f"{second}/metrics.json") == {"train_seconds": 2.0}
    # A retry of the second run finds its own complete output.
    assert store.reuse_output("f" * 64, second) == second
    # A different fingerprint reuses nothing.
    assert store.reuse_output("0" * 64, store.experiment_uri(RUN_B, "other")) is None


def test_an_incomplete_earlier_output_is_not_reused(artifacts):
    first = store.experiment_uri(RUN_A, "w|c|base")
    store.write_json(f"{first}/metrics.json", {})  # the job died before its predictions
    store.remember_output("e" * 64, first)
    assert store.reuse_output("e" * 64, store.experiment_uri(RUN_B, "w|c|base")) is None


@pytest.mark.parametrize("hostile", ["../../etc/passwd", "a/b/../../c", "x'; DROP TABLE runs;--", "Ünï cöde", ""])
def test_untrusted_names_never_escape_their_key(hostile, tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}/artifacts")
    for uri in (store.put_jsonl("datasets", ROWS, run_key=hostile), store.experiment_uri(hostile, hostile)):
        key = uri[len(store.root_uri()):]
        assert ".." not in key.split("/") and key.count("/") >= 2
        assert store.safe_key(hostile) != store.safe_key(hostile + "x")
    assert all(p.is_relative_to(tmp_path / "artifacts") for p in tmp_path.rglob("*"))


def test_the_trainer_gets_the_connections_credentials_as_aws_variables(s3_artifacts):
    env = store.trainer_env()
    assert env["AWS_ACCESS_KEY_ID"] == "testing" and env["AWS_SECRET_ACCESS_KEY"] == "testing-secret"
    assert env["AWS_ENDPOINT_URL"] == s3_artifacts and env["AWS_DEFAULT_REGION"] == "us-east-1"
    # ... and with them, a plain s3fs client (what the trainer uses) reads what the flywheel wrote.
    import s3fs

    uri = store.put_jsonl("inputs", ROWS, run_key=RUN_A)
    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                           endpoint_url=env["AWS_ENDPOINT_URL"])
    assert [json.loads(line) for line in fs.cat_file(uri).decode().splitlines()] == ROWS


def test_a_local_root_needs_no_credentials(tmp_path, monkeypatch):
    monkeypatch.setenv("FLYWHEEL_ARTIFACTS", f"file://{tmp_path}")
    assert store.trainer_env() == {}
