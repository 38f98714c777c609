"""Real architectures end to end, no download: tiny random-weight Qwen2 / Llama / Mistral models with
a chat template in each family's style go through ICL and LoRA + generation in the trainer's own
job code (`run_job`, in process to keep the test quick; the CLI around it is tested in
test_trainer.py), and their raw outputs through the family's tool-call parser."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flywheel.toolcalls import parse_output
from flywheel_trainer.job import run_job
from flywheel_trainer.spec import ChatItem, JobSpec, Prediction
from tests.trainer.conftest import routing_items, write_jsonl
from tests.trainer.families import FAMILIES, build_model

TEXTS = ["please cancel my order in oslo", "track my parcel in lima", '{"name": "cancel_order", "arguments": '
         '{"city": "oslo"}}', "Given the following functions, respond with JSON.", "You are a helpful assistant."] * 30


@pytest.fixture(scope="module")
def task(tmp_path_factory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("family-task")
    train = routing_items(24, seed=5)
    evals = routing_items(6, seed=6)
    # in-context examples for the icl job: two training conversations per eval item
    examples = [[t["messages"][0], t["messages"][1]] for t in train[:2]]
    return {
        "train": write_jsonl(root / "train.jsonl", train),
        "val": write_jsonl(root / "val.jsonl", routing_items(6, seed=7)),
        "eval": write_jsonl(root / "eval.jsonl", [{**e, "messages": e["messages"][:-1], "examples": examples}
                                                   for e in evals]),
        "root": root,
    }


@pytest.fixture(scope="module", params=list(FAMILIES))
def family_model(request, tmp_path_factory) -> tuple[str, Path]:
    return request.param, build_model(request.param, tmp_path_factory.mktemp("families") / request.param, TEXTS)


def _spec(model: Path, family: str, task: dict, strategy: str, out: Path) -> JobSpec:
    raw = {"job_name": f"{family}-{strategy}", "candidate": f"tiny-{family}", "strategy": strategy,
           "model_uri": str(model), "eval_uri": str(task["eval"]), "output_uri": str(out),
           "generation": {"max_new_tokens": 12}, "max_seq_len": 4096, "icl": {"budget_tokens": 4000, "max_examples": 2}}
    if strategy == "lora":
        raw |= {"train_uri": str(task["train"]), "val_uri": str(task["val"]),
                "lora": {"adapter_dim": 4, "epochs": 1, "batch_size": 8, "learning_rate": 1e-3}}
    return JobSpec.model_validate(raw)


def test_icl_and_lora_jobs_run_on_each_family(tmp_path, family_model, task):
    from transformers import AutoTokenizer

    from flywheel_trainer.chat import ChatFormat, with_examples

    family, model = family_model
    chat = ChatFormat(AutoTokenizer.from_pretrained(model), candidate=family, model_uri=str(model))
    items = [ChatItem.model_validate(json.loads(line)) for line in Path(task["eval"]).read_text().splitlines()]
    for strategy in ("icl", "lora"):
        out = tmp_path / strategy
        metrics = run_job(_spec(model, family, task, strategy, out))
        rows = [Prediction.model_validate_json(line) for line in (out / "predictions.jsonl").read_text().splitlines()]
        assert [r.id for r in rows] == [i.id for i in items]
        for row, item in zip(rows, items):
            assert row.skipped is None and 0 < row.completion_tokens <= 12 and row.latency_s > 0
            message = parse_output(row.output, FAMILIES[family]["parser"])  # random weights: any text parses
            assert message["role"] == "assistant"
            if strategy == "icl":  # the prompt holds the examples, counted with this tokenizer
                assert row.icl_examples == 2
                assert row.prompt_tokens == len(chat.prompt(with_examples(item.messages, item.examples), item.tools))
            else:
                assert row.prompt_tokens == len(chat.prompt(item.messages, item.tools))
        if strategy == "lora":
            assert metrics["train_examples"] == 24 and metrics["train_steps"] == 3
            assert metrics["val_loss_before"] is not None and metrics["val_loss"] is not None
            assert sum(metrics["batches"].values()) >= 3
            assert json.loads((out / "adapter" / "adapter_config.json").read_text())["r"] == 4


def test_a_mistral_example_the_template_rejects_is_skipped_and_counted(tmp_path, task):
    model = build_model("mistral", tmp_path / "mistral", TEXTS)
    train = routing_items(8, seed=9)
    for item in train[:3]:  # ids Mistral's template refuses (it wants 9 alphanumerics)
        item["messages"][-1]["tool_calls"][0]["id"] = "call_abc_too_long"
    spec = _spec(model, "mistral", {**task, "train": write_jsonl(tmp_path / "train.jsonl", train)}, "lora",
                 tmp_path / "out")
    metrics = run_job(spec)
    assert metrics["train_examples"] == 5 and metrics["train_skipped"] == {"template_error": 3}
