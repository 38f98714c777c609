"""The trainer entrypoint (`python -m flywheel_trainer`) as the GPU job runs it: real processes, a
tiny student pre-trained in the fixture with its own chat template, real LoRA training with the
transformers Trainer, and generation on CPU."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from flywheel.toolcalls import parse_output
from tests.trainer.conftest import ROUTES, run_cli, write_jsonl

# Enough for the tiny fixture model to learn the four unseen tool names.
ROUTING_LORA = {"adapter_dim": 16, "epochs": 4, "batch_size": 8, "learning_rate": 1e-2}


def _spec(tmp_path: Path, model: Path, task: dict, strategy: str, name: str, **extra) -> dict:
    spec = {"job_name": name, "candidate": "tiny", "strategy": strategy, "model_uri": str(model),
            "eval_uri": str(task["eval"]), "output_uri": str(tmp_path / name), "generation": {"max_new_tokens": 24},
            "max_seq_len": 256, "seed": 7}
    if strategy == "lora":
        spec |= {"train_uri": str(task["train"]), "val_uri": str(task["val"]), "lora": ROUTING_LORA}
    return spec | extra


def _run(tmp_path: Path, spec: dict, env: dict | None = None) -> tuple[list[dict], dict]:
    path = tmp_path / f"{spec['job_name']}.json"
    path.write_text(json.dumps(spec))
    proc = run_cli("run", "--spec", str(path), timeout=900, env=env)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    out = Path(spec["output_uri"])
    predictions = [json.loads(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
    return predictions, json.loads((out / "metrics.json").read_text())


def _tool_accuracy(predictions: list[dict], gold: dict[str, str]) -> float:
    """Share of eval items whose answer, parsed as the student's family (hermes), calls the right tool."""
    hits = 0
    for p in predictions:
        calls = parse_output(p["output"], "hermes").get("tool_calls") or []
        hits += bool(calls) and calls[0]["function"]["name"] == gold[p["id"]]
    return hits / len(predictions)


def test_pretrain_writes_a_loadable_model_with_its_chat_template(tiny_model):
    meta = json.loads((tiny_model / "flywheel_model.json").read_text())
    assert meta["architecture"] == "LlamaForCausalLM" and meta["tool_call_parser"] == "hermes"
    assert meta["hyperparameters"]["layers"] == 2
    assert meta["loss_last"] < meta["loss_first"] / 2, meta  # it learned something from the corpus
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(tiny_model, local_files_only=True)
    assert tok.chat_template and "<tool_call>" in tok.chat_template
    for marker in ("<|im_start|>", "<|im_end|>", "<tool_call>", "</tool_call>"):
        assert len(tok(marker, add_special_tokens=False)["input_ids"]) == 1, marker
    assert len(tok("12345", add_special_tokens=False)["input_ids"]) == 5  # digits split one by one
    assert tok.eos_token == "<|im_end|>"


def test_lora_learns_routing_and_lowers_train_and_val_loss(tmp_path, tiny_model, routing_task):
    """The effect the flywheel relies on, through the Trainer: LoRA learns tools the base model
    does not pick, and both losses go down."""
    gold = routing_task["gold"]
    base, base_metrics = _run(tmp_path, _spec(tmp_path, tiny_model, routing_task, "base", "base"))
    tuned, m = _run(tmp_path, _spec(tmp_path, tiny_model, routing_task, "lora", "lora"))

    assert [p["id"] for p in base] == [p["id"] for p in tuned] == list(gold)  # one answer per item, in order
    base_acc, lora_acc = _tool_accuracy(base, gold), _tool_accuracy(tuned, gold)
    assert lora_acc >= 0.75 and lora_acc >= base_acc + 0.3, (base_acc, lora_acc, tuned[:3])

    assert base_metrics["train_examples"] == 0 and base_metrics["trainable_params"] == 0
    assert m["train_examples"] == 160 and m["trainable_params"] > 0 and m["packing"] is True
    assert m["train_steps"] == 4 * 20 and m["resumed_from_step"] is None
    assert m["train_loss_per_epoch"][-1] < m["train_loss_per_epoch"][0] < m["train_loss_first"]
    assert m["val_loss"] < m["val_loss_before"] and len(m["val_loss_per_epoch"]) == 4
    assert m["train_tokens"] == 4 * m["train_tokens"] // 4 > 0 and m["train_tokens_per_second"] > 0
    assert m["peak_memory_bytes"] > 0 and m["gpu_seconds"] == 0.0  # no GPU here
    assert m["device"] == "cpu" and m["backend"] == "transformers"
    for p in tuned:  # predictions carry what evaluation and costing read
        assert p["prompt_tokens"] > 50 and 0 < p["completion_tokens"] <= 24 and p["latency_s"] > 0
    # The adapter is written in peft's format, the one vLLM loads; checkpoints are gone once done.
    out = tmp_path / "lora"
    config = json.loads((out / "adapter" / "adapter_config.json").read_text())
    assert config["r"] == 16 and config["lora_alpha"] == 32 and config["peft_type"] == "LORA"
    assert not (out / "checkpoints").exists()


def test_a_saved_adapter_loaded_again_gives_the_same_answers(tmp_path, tiny_model, routing_task):
    """What deployment relies on: the adapter directory alone reproduces the job's outputs."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from flywheel_trainer.chat import ChatFormat
    from flywheel_trainer.generate import generate_transformers
    from flywheel_trainer.spec import ChatItem

    spec = _spec(tmp_path, tiny_model, routing_task, "lora", "reload", lora={**ROUTING_LORA, "epochs": 2})
    predictions, _ = _run(tmp_path, spec)
    tokenizer = AutoTokenizer.from_pretrained(tiny_model)
    model = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32),
                                      tmp_path / "reload" / "adapter").eval()
    chat = ChatFormat(tokenizer, candidate="tiny", model_uri=str(tiny_model))
    items = [ChatItem.model_validate(json.loads(line)) for line in Path(routing_task["eval"]).read_text().splitlines()]
    again = generate_transformers(model, tokenizer, [chat.prompt(i.messages, i.tools) for i in items],
                                  max_new_tokens=24, device="cpu")
    assert [g["output"] for g in again] == [p["output"] for p in predictions]


def test_a_killed_job_resumes_from_its_checkpoint_and_the_step_count_continues(tmp_path, tiny_model, routing_task):
    spec = _spec(tmp_path, tiny_model, routing_task, "lora", "resume", checkpoint_steps=5,
                 lora={**ROUTING_LORA, "epochs": 3})
    path = tmp_path / "resume.json"
    path.write_text(json.dumps(spec))
    checkpoints = tmp_path / "resume" / "checkpoints"
    proc = subprocess.Popen([sys.executable, "-m", "flywheel_trainer", "run", "--spec", str(path)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline and proc.poll() is None:
        done = [p for p in checkpoints.glob("checkpoint-*") if (p / "trainer_state.json").is_file()]
        if done:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "the job ended before its first checkpoint"
    proc.send_signal(signal.SIGKILL)  # a preempted pod / a killed worker: no clean-up
    proc.wait()
    saved = max(int(p.name.split("-")[1]) for p in checkpoints.glob("checkpoint-*")
                if (p / "trainer_state.json").is_file())
    assert not (tmp_path / "resume" / "predictions.jsonl").exists()

    predictions, metrics = _run(tmp_path, spec)
    assert metrics["resumed_from_step"] == saved > 0
    assert metrics["train_steps"] == 3 * 20  # the count continued to the planned total, not past it
    assert len(predictions) == len(routing_task["gold"])


def test_out_of_memory_halves_the_micro_batch_and_keeps_the_effective_batch(tmp_path, tiny_model, routing_task):
    """Simulated out-of-memory above 2 examples per pass (fault injection): 8 -> 4 -> 2, accumulation 4."""
    spec = _spec(tmp_path, tiny_model, routing_task, "lora", "oom", lora={**ROUTING_LORA, "epochs": 1})
    _, metrics = _run(tmp_path, spec, env={"FLYWHEEL_TEST_OOM_ABOVE_MICRO_BATCH": "2"})
    assert (metrics["micro_batch_size"], metrics["gradient_accumulation"]) == (2, 4)
    assert metrics["train_steps"] == 20  # optimizer steps unchanged: same effective batch


def test_max_train_examples_trains_on_a_seeded_sample(tmp_path, tiny_model, routing_task):
    from flywheel_trainer.finetune import sample_examples

    examples = [([i], [i]) for i in range(100)]
    sample = sample_examples(examples, 30, seed=7)
    assert len(sample) == 30 and sample == sorted(sample) and len(set(map(str, sample))) == 30
    assert sample == sample_examples(examples, 30, seed=7) != sample_examples(examples, 30, seed=8)
    assert sample_examples(examples, 100, seed=7) == sample_examples(examples, None, seed=7) == examples

    spec = _spec(tmp_path, tiny_model, routing_task, "lora", "capped",
                 lora={**ROUTING_LORA, "epochs": 1, "max_train_examples": 40})
    _, m = _run(tmp_path, spec)
    assert m["train_examples"] == 40 and m["train_examples_usable"] == 160
    assert m["train_steps"] == 40 // ROUTING_LORA["batch_size"]


def test_out_of_memory_at_one_example_names_the_settings(tmp_path, tiny_model, routing_task):
    spec = _spec(tmp_path, tiny_model, routing_task, "lora", "oom1", lora={**ROUTING_LORA, "epochs": 1})
    path = tmp_path / "oom1.json"
    path.write_text(json.dumps(spec))
    proc = run_cli("run", "--spec", str(path), env={"FLYWHEEL_TEST_OOM_ABOVE_MICRO_BATCH": "0"})
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "micro-batch of 1 example (lora.batch_size=8, gradient accumulation 8" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_spec_json_argument_runs_like_a_spec_file(tmp_path, tiny_model, routing_task):
    """The Kubernetes backend passes the spec as one argument (no shell, no file) and reads the
    pod's result from the file the XCom sidecar serves."""
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "inline")
    result = tmp_path / "airflow" / "xcom" / "return.json"
    proc = run_cli("run", "--spec-json", json.dumps(spec | {"added_in_a_later_version": 1}),
                   "--result-file", str(result), timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "ignoring unknown spec field(s) ['added_in_a_later_version']" in proc.stdout
    lines = (tmp_path / "inline" / "predictions.jsonl").read_text().splitlines()
    assert len(lines) == len(routing_task["gold"])
    assert json.loads(result.read_text()) == json.loads((tmp_path / "inline" / "metrics.json").read_text())


# The CLI's exit path for spec errors; every validation rule is tested in tests/unit/test_job_spec.py.
@pytest.mark.parametrize(("change", "message"), [
    ({"strategy": "dpo"}, "spec field 'strategy' is 'dpo': Input should be 'base', 'icl' or 'lora'"),
    ({"model_uri": "/no/such/model"},
     "spec field 'model_uri' (candidates.tiny.model_path in the flywheel config): /no/such/model does not exist"),
    ({"model_uri": "nosuchscheme://bucket/model"}, "cannot open 'nosuchscheme://bucket/model'"),
    ({"strategy": "lora", "lora": {"epochs": 0}},
     "spec field 'lora.epochs' is 0: Input should be greater than or equal to 1"),
])
def test_an_invalid_spec_exits_2_with_the_field_named(tmp_path, tiny_model, routing_task, change, message):
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "bad")
    if change.get("strategy") == "lora" and "train_uri" not in change:
        spec["train_uri"] = str(routing_task["train"])
    spec = {k: v for k, v in (spec | change).items() if v is not None}
    proc = run_cli("run", "--spec-json", json.dumps(spec))
    assert proc.returncode == 2, (proc.returncode, proc.stderr)
    assert message in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr
    assert not (tmp_path / "bad" / "predictions.jsonl").exists()


@pytest.mark.parametrize(("content", "message"), [
    ("not json\n", "line 1 of"),
    ('{"id": "a"}\n', "item 1 of"),
    ('[1, 2]\n', "line 1 of"),
    ('{"id": "a", "messages": [{"role": "user", "content": "x"}]}\n' * 2, "id 'a' appears more than once"),
    ("", "has no items"),
])
def test_a_bad_eval_file_fails_before_loading_the_model(tmp_path, tiny_model, routing_task, content, message):
    bad = tmp_path / "eval.jsonl"
    bad.write_text(content)
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "bad", eval_uri=str(bad))
    proc = run_cli("run", "--spec-json", json.dumps(spec))
    assert proc.returncode == 2 and message in proc.stderr, proc.stderr


def test_items_longer_than_the_context_are_skipped_and_counted(tmp_path, tiny_model, routing_task):
    items = [json.loads(line) for line in Path(routing_task["eval"]).read_text().splitlines()][:3]
    items[1]["messages"][-1]["content"] = "please track my parcel in oslo " * 80  # far over 256 tokens
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "long",
                 eval_uri=str(write_jsonl(tmp_path / "long.jsonl", items)))
    predictions, metrics = _run(tmp_path, spec)
    assert [p["id"] for p in predictions] == [i["id"] for i in items]  # every item keeps its line
    assert predictions[1]["skipped"].startswith("longer_than_context") and predictions[1]["output"] == ""
    assert predictions[0]["skipped"] is None and predictions[2]["skipped"] is None
    assert metrics["eval_skipped"] == {"longer_than_context": 1}


def test_unreadable_spec_and_corpus_are_clear_errors(tmp_path):
    proc = run_cli("run", "--spec-json", "{not json")
    assert proc.returncode == 2 and "cannot read the job spec from --spec-json" in proc.stderr
    proc = run_cli("run", "--spec", str(tmp_path / "missing.json"))
    assert proc.returncode == 2 and "cannot read the job spec from --spec" in proc.stderr
    corpus = write_jsonl(tmp_path / "corpus.jsonl", [{"txt": "wrong key"}])
    proc = run_cli("pretrain", "--corpus", str(corpus), "--out", str(tmp_path / "m"))
    assert proc.returncode == 2 and "line 1: expected a JSON object with a list 'messages'" in proc.stderr


def test_a_rerun_overwrites_a_previous_result(tmp_path, tiny_model, routing_task):
    """Retries of an Airflow task re-run the job in the same output dir: stale predictions never survive."""
    spec = _spec(tmp_path, tiny_model, routing_task, "base", "again")
    out = Path(spec["output_uri"])
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
    """bf16 training and vLLM generation with the adapter applied per request (the trainer image)."""
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the GPU image; CI has none)")
    predictions, metrics = _run(tmp_path, _spec(tmp_path, tiny_model, routing_task, "lora", "gpu-lora"))
    assert metrics["device"] == "cuda" and metrics["gpu_count"] >= 1 and metrics["dtype"] == "bfloat16"
    assert metrics["gpu_seconds"] > 0 and metrics["peak_memory_bytes"] > 0
    assert _tool_accuracy(predictions, routing_task["gold"]) >= 0.5
    assert all(p["prompt_tokens"] > 0 and p["latency_s"] > 0 for p in predictions)
