"""The trainer entrypoint (`python -m flywheel_trainer`) as the GPU job runs it: real processes, a
tiny model pre-trained in the fixture, real LoRA training and generation on CPU."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.trainer.conftest import ROUTES, run_cli, write_jsonl

# Enough for the tiny fixture model to learn the four unseen tool names (measured: ~19/24).
ROUTING_LORA = {"adapter_dim": 16, "epochs": 6, "batch_size": 8, "learning_rate": 1e-2}


def _spec(tmp_path: Path, model: Path, task: dict, strategy: str, name: str, **extra) -> dict:
    spec = {"job_name": name, "strategy": strategy, "model_path": str(model), "eval_file": str(task["eval"]),
            "output_dir": str(tmp_path / name), "generation": {"max_new_tokens": 24}, "max_seq_len": 128, "seed": 7}
    if strategy == "lora":
        spec |= {"train_file": str(task["train"]), "val_file": str(task["val"])}
    return spec | extra


def _run(tmp_path: Path, spec: dict) -> tuple[list[dict], dict]:
    path = tmp_path / f"{spec['job_name']}.json"
    path.write_text(json.dumps(spec))
    proc = run_cli("run", "--spec", str(path), timeout=900)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = Path(spec["output_dir"])
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return predictions, json.loads((out / "metrics.json").read_text())


def _tool_accuracy(predictions: list[dict], gold: dict[str, str]) -> float:
    """Share of eval items whose answer names the right tool (the second word of `call NAME {...}`)."""
    hits = 0
    for p in predictions:
        words = p["output"].split()
        hits += len(words) >= 2 and words[0] == "call" and words[1] == gold[p["id"]].split()[1]
    return hits / len(predictions)


def test_pretrain_writes_a_loadable_model_with_its_recipe(tiny_model):
    meta = json.loads((tiny_model / "flywheel_model.json").read_text())
    assert meta["architecture"] == "LlamaForCausalLM"
    assert meta["hyperparameters"]["layers"] == 2 and meta["hyperparameters"]["steps"] == 300
    assert meta["loss_last"] < meta["loss_first"] / 2, meta  # it learned something from the corpus
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    for marker in ("<tools>", "<user>", "<assistant>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    assert len(tok("12345", add_special_tokens=False)["input_ids"]) == 5  # digits split one by one


def test_lora_learns_routing_that_the_base_model_cannot(tmp_path, tiny_model, routing_task):
    """The effect the flywheel relies on: base never names the unseen tools, LoRA mostly does."""
    gold = routing_task["gold"]
    base, base_metrics = _run(tmp_path, _spec(tmp_path, tiny_model, routing_task, "base", "base"))
    tuned, lora_metrics = _run(tmp_path, _spec(tmp_path, tiny_model, routing_task, "lora", "lora", lora=ROUTING_LORA))

    assert [p["id"] for p in base] == [p["id"] for p in tuned] == list(gold)  # one answer per item, in order
    base_acc, lora_acc = _tool_accuracy(base, gold), _tool_accuracy(tuned, gold)
    assert base_acc == 0.0, base  # the corpus never shows these tool names
    assert lora_acc >= 0.5, (lora_acc, tuned)
    assert any(name in p["output"] for p in tuned for name in ROUTES)

    assert base_metrics["train_examples"] == 0 and base_metrics["trainable_params"] == 0
    assert lora_metrics["train_examples"] == 160 and lora_metrics["trainable_params"] > 0
    assert lora_metrics["train_loss_last"] < lora_metrics["train_loss_first"]
    assert lora_metrics["val_loss"] is not None
    assert lora_metrics["device"] == "cpu" and lora_metrics["backend"] == "transformers"
    # The adapter is written in peft's format, the one vLLM loads.
    adapter = tmp_path / "lora" / "adapter"
    config = json.loads((adapter / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["peft_type"] == "LORA"


def test_spec_json_argument_runs_like_a_spec_file(tmp_path, tiny_model, routing_task):
    """The Kubernetes backend passes the spec as one argument (no shell, no file) and reads the
    pod's result from the file the XCom sidecar serves."""
    spec = _spec(tmp_path, tiny_model, routing_task, "icl", "icl-inline")
    result = tmp_path / "airflow" / "xcom" / "return.json"
    proc = run_cli("run", "--spec-json", json.dumps(spec | {"added_in_a_later_version": 1}),
                   "--result-file", str(result), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ignoring unknown spec field(s) ['added_in_a_later_version']" in proc.stdout
    lines = (tmp_path / "icl-inline" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(routing_task["gold"])
    assert json.loads(result.read_text()) == json.loads((tmp_path / "icl-inline" / "metrics.json").read_text())


@pytest.mark.parametrize(("change", "message"), [
    ({"strategy": "dpo"}, "spec field 'strategy' is 'dpo'"),
    ({"model_path": "/no/such/model"}, "spec field 'model_path': /no/such/model does not exist"),
    ({"model_path": "s3://bucket/model"}, "the trainer reads local paths only"),
    ({"eval_file": None}, "spec field 'eval_file' is missing"),
    ({"strategy": "lora", "train_file": None}, "spec field 'train_file' is missing"),
    ({"strategy": "lora", "lora": {"epochs": 0}}, "spec field 'lora.epochs' is 0; it must be >= 1"),
    ({"strategy": "lora", "lora": {"epochs": True}}, "spec field 'lora.epochs' must be an integer"),
    ({"strategy": "lora", "lora": {"rank": 8}}, "spec field 'lora' has unknown key(s) ['rank']"),
    ({"generation": {"max_new_tokens": 200}}, "must be smaller than 'max_seq_len' (128)"),
])
def test_an_invalid_spec_exits_2_with_the_field_named(tmp_path, tiny_model, routing_task, change, message):
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "bad")
    if change.get("strategy") == "lora" and "train_file" not in change:
        spec["train_file"] = str(routing_task["train"])
    spec = {k: v for k, v in (spec | change).items() if v is not None}
    proc = run_cli("run", "--spec-json", json.dumps(spec))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad" / "predictions.jsonl").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", "line 1 of"),
    ('{"id": "a"}\n', "lacks string field(s) ['prompt']"),
    ('{"id": "a", "prompt": "x"}\n{"id": "a", "prompt": "y"}\n', "id 'a' appears more than once"),
    ("", "has no items"),
])
def test_a_bad_eval_file_fails_before_loading_the_model(tmp_path, tiny_model, routing_task, content, message):
    bad = tmp_path / "eval.jsonl"
    bad.write_text(content)
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "bad", eval_file=str(bad))
    proc = run_cli("run", "--spec-json", json.dumps(spec))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_unreadable_spec_and_corpus_are_clear_errors(tmp_path):
    proc = run_cli("run", "--spec-json", "{not json")
    assert proc.returncode == 2 and "cannot read the job spec from --spec-json" in proc.stderr
    proc = run_cli("run", "--spec", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "cannot read the job spec from --spec" in proc.stderr
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"txt": "wrong key"}])
    proc = run_cli("pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "line 1: expected a JSON object with a string 'text'" in proc.stderr


def test_a_rerun_overwrites_a_previous_result(tmp_path, tiny_model, routing_task):
    """Retries of an Airflow task re-run the job in the same output dir: stale predictions never survive."""
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "again")
    out = Path(spec["output_dir"])
    out.mkdir()
    (out / "predictions.jsonl").write_text('{"id": "stale", "output": "old"}\n')
    predictions, _ = _run(tmp_path, spec)
    assert "stale" not in {p["id"] for p in predictions} and len(predictions) == len(routing_task["gold"])


def test_runtime_on_this_machine():
    import torch

    from flywheel_trainer import device

    rt = device.runtime()
    if torch.cuda.is_available():
        assert rt.device == "cuda" and rt.gpu_count == torch.cuda.device_count()
    else:
        assert rt == device.Runtime("cpu", "float32", 0, "transformers")


@pytest.mark.gpu
def test_lora_job_on_a_gpu(tmp_path, tiny_model, routing_task):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the GPU image; CI has none)")
    spec = _spec(tmp_path, tiny_model, routing_task, "lora", "gpu-lora", lora=ROUTING_LORA)
    predictions, metrics = _run(tmp_path, spec)
    assert metrics["device"] == "cuda" and metrics["gpu_count"] >= 1
    assert _tool_accuracy(predictions, routing_task["gold"]) >= 0.5
