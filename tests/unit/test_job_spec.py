"""The GPU job spec (flywheel_trainer.spec): one typed model the Airflow side builds and the trainer
validates, and the one definition of strategies and LoRA defaults that the config reads."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
import yaml

from flywheel.config import DEFAULT_CONFIG, ConfigError, parse_config
from flywheel_trainer.spec import STRATEGIES, JobSpec, LoraSpec, SpecError, parse_spec

BASE = {"strategy": "base", "model_uri": "s3://models/qwen", "eval_uri": "s3://b/eval.jsonl",
        "output_uri": "s3://b/out", "candidate": "qwen2.5-0.5b"}


def test_spec_module_imports_neither_torch_nor_transformers():
    code = ("import sys, flywheel_trainer.spec; "
            "print(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'transformers', 'airflow')))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_a_spec_round_trips_through_json():
    spec = JobSpec.model_validate({**BASE, "strategy": "lora", "train_uri": "s3://b/train.jsonl"})
    again = parse_spec(spec.to_json())
    assert again == spec
    assert again.lora == LoraSpec()  # a lora job without a lora section trains with the defaults
    assert again.lora.alpha == 64 and again.lora.accumulation_steps == 1


def test_micro_batches_accumulate_to_the_effective_batch():
    lora = LoraSpec(batch_size=16, micro_batch_size=5)
    assert (lora.micro_batch, lora.accumulation_steps) == (5, 4)
    assert LoraSpec(batch_size=4, micro_batch_size=8).micro_batch == 4


@pytest.mark.parametrize(("change", "message"), [
    ({"strategy": "sft"}, "spec field 'strategy' is 'sft': Input should be 'base', 'icl' or 'lora'"),
    ({"model_uri": ""}, "spec field 'model_uri' is ''"),
    ({"eval_uri": None}, "spec field 'eval_uri' is missing"),
    ({"strategy": "lora"}, "'train_uri' is missing: strategy 'lora' needs a JSONL file"),
    ({"lora": {"epochs": 0}}, "spec field 'lora.epochs' is 0: Input should be greater than or equal to 1"),
    ({"lora": {"learning_rate": "1e-4"}}, "spec field 'lora.learning_rate' is '1e-4': Input should be a valid number"),
    ({"lora": {"dropout": 1.0}}, "spec field 'lora.dropout' is 1.0: Input should be less than 1"),
    ({"lora": {"target_modules": []}}, "'target_modules' is an empty list"),
    ({"lora": {"rank": 8}}, "spec field 'lora.rank' is not a known key"),
    ({"max_seq_len": 64, "generation": {"max_new_tokens": 64}}, "must be smaller than 'max_seq_len' (64)"),
    ({"seed": -1}, "spec field 'seed' is -1"),
])
def test_errors_name_the_field_and_what_it_must_be(change, message):
    raw = {k: v for k, v in (BASE | change).items() if v is not None}
    with pytest.raises(SpecError) as err:
        parse_spec(raw)
    assert message in str(err.value)


def test_every_bad_field_is_reported_at_once():
    with pytest.raises(SpecError) as err:
        parse_spec({**BASE, "seed": "x", "max_seq_len": 0})
    assert "'seed'" in str(err.value) and "'max_seq_len'" in str(err.value)


def test_not_json_is_a_spec_error():
    with pytest.raises(SpecError, match="not valid JSON"):
        parse_spec("{nope")
    with pytest.raises(SpecError, match="must be a JSON object"):
        parse_spec("[1]")


def test_unknown_top_level_fields_are_reported_not_fatal():
    spec = parse_spec({**BASE, "from_a_newer_flywheel": 1})
    assert spec.ignored_fields == ["from_a_newer_flywheel"]


def _raw_config() -> dict:
    return yaml.safe_load(DEFAULT_CONFIG.read_text())


def test_config_reads_the_lora_defaults_of_the_spec():
    raw = _raw_config()
    raw["lora"] = {"epochs": 3}
    cfg = parse_config(raw)
    assert cfg.lora == LoraSpec(epochs=3)
    assert cfg.lora.adapter_dim == LoraSpec().adapter_dim  # one definition of the defaults
    profile = next(iter(cfg.training_profiles))
    tuned = cfg.lora_for_profile(profile)
    assert isinstance(tuned, LoraSpec)
    assert tuned.epochs == raw["training_profiles"][profile].get("epochs", 3)


def test_config_errors_name_the_key():
    raw = _raw_config()
    raw["training_profiles"]["cpu-demo"]["epoch"] = 3
    with pytest.raises(ConfigError, match="training_profiles.cpu-demo.epoch: Extra inputs are not permitted"):
        parse_config(raw)
    raw = _raw_config()
    raw["lora"]["learning_rate"] = "fast"
    with pytest.raises(ConfigError, match="lora.learning_rate"):
        parse_config(raw)
    raw = _raw_config()
    raw["dags"]["flywheel_daily"]["strategies"] = ["base", "dpo"]
    with pytest.raises(ConfigError, match=re.escape(f"'dpo' is not one of {STRATEGIES}")):
        parse_config(raw)


def test_gpu_job_carries_the_spec_as_json():
    from flywheel.gpu_job import GpuJob

    spec = JobSpec.model_validate(BASE)
    job = GpuJob(name="x", image="img", args=["run"], spec=spec.model_dump(mode="json", exclude_none=True))
    assert JobSpec.model_validate(json.loads(json.dumps(job.to_dict()))["spec"]) == spec
