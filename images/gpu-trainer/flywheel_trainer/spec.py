"""The GPU job spec: one typed model that the Airflow side builds and the trainer validates.

This module imports neither torch nor transformers (only pydantic), so the flywheel's domain and
Airflow workers import it as they are: it is the one definition of the strategies and the LoRA
defaults (the flywheel config reads them from here). Inputs and outputs are URIs: a local path,
``file://``, ``s3://``, ``gs://`` or any scheme fsspec knows.

Errors name the field and the fix, because the person reading them is looking at an Airflow task
log, not at this code: :func:`parse_spec` turns pydantic's errors into one :class:`SpecError` line.
"""

from __future__ import annotations

import json
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

SPEC_VERSION = 2
STRATEGIES: tuple[str, ...] = ("base", "icl", "lora")
Strategy = Literal["base", "icl", "lora"]


class SpecError(ValueError):
    """An invalid job spec, argument or input; the message is the whole user-facing error."""


class _Strict(BaseModel):
    # strict: "epochs": true or "2" is a mistake, not 1 or 2; extra=forbid: a misspelt key is an error.
    model_config = ConfigDict(strict=True, extra="forbid", frozen=True)


class LoraSpec(_Strict):
    """LoRA SFT hyper-parameters. The defaults are the flywheel's production defaults."""

    adapter_dim: int = Field(32, ge=1, description="the LoRA rank r")
    adapter_alpha: int | None = Field(None, ge=1, description="LoRA alpha; default 2 x adapter_dim")
    dropout: float = Field(0.1, ge=0.0, lt=1.0)
    epochs: int = Field(2, ge=1)
    batch_size: int = Field(16, ge=1, description="examples per optimizer step (the effective batch)")
    micro_batch_size: int | None = Field(
        None, ge=1, description="examples per forward pass; gradients accumulate over "
        "ceil(batch_size / micro_batch_size) passes to reach batch_size (default: batch_size)")
    learning_rate: float = Field(1e-4, gt=0.0)
    target_modules: Literal["all-linear"] | list[str] = Field(
        "all-linear", description='"all-linear" (every linear projection but lm_head) or module names')
    packing: bool = Field(True, description="padding-free packing of examples where the model supports it")
    max_train_examples: int | None = Field(
        None, ge=1, description="train on at most this many examples: a sample of the usable ones, seeded by the "
        "job's seed (default: all); bounds a job's training time whatever the workload's traffic")

    @model_validator(mode="after")
    def _check(self) -> LoraSpec:
        if isinstance(self.target_modules, list) and not self.target_modules:
            raise ValueError("'target_modules' is an empty list: give module names or \"all-linear\"")
        return self

    @property
    def alpha(self) -> int:
        return self.adapter_alpha or 2 * self.adapter_dim

    @property
    def micro_batch(self) -> int:
        return min(self.micro_batch_size or self.batch_size, self.batch_size)

    @property
    def accumulation_steps(self) -> int:
        return -(-self.batch_size // self.micro_batch)


class IclSpec(_Strict):
    """In-context examples: how many, and how many prompt tokens they may take at most."""

    budget_tokens: int = Field(320, ge=0)
    max_examples: int = Field(4, ge=0)


class GenerationSpec(_Strict):
    max_new_tokens: int = Field(64, ge=1)
    batch_size: int = Field(16, ge=1, description="prompts per generate() call on the transformers backend")


class JobSpec(_Strict):
    """One experiment: (fine-tune, then) generate answers for the eval items."""

    # A newer flywheel may send fields this trainer does not know: they are reported, not fatal.
    model_config = ConfigDict(strict=True, extra="allow", frozen=True)

    spec_version: int = SPEC_VERSION
    job_name: str = "flywheel-job"
    candidate: str = Field("candidate", description="the candidate's key in the flywheel config (candidates.<name>)")
    strategy: Strategy
    model_uri: str = Field(min_length=1, description="the model directory: a local path or a URI "
                           "(config key candidates.<name>.model_path)")
    eval_uri: str = Field(min_length=1, description="JSONL of the eval items")
    train_uri: str | None = Field(None, description="JSONL of training examples (lora)")
    val_uri: str | None = Field(None, description="JSONL of validation examples (lora, optional)")
    output_uri: str = Field(min_length=1, description="where predictions, metrics and the adapter go")
    lora: LoraSpec | None = None
    icl: IclSpec = IclSpec()
    generation: GenerationSpec = GenerationSpec()
    max_seq_len: int = Field(512, ge=2, description="prompt + answer tokens at most")
    seed: int = Field(42, ge=0)
    checkpoint_steps: int | None = Field(
        None, ge=1, description="lora: a checkpoint every N optimizer steps (and at every epoch end) for restarts")

    @model_validator(mode="before")
    @classmethod
    def _lora_defaults(cls, data: Any) -> Any:
        # A lora job without a lora section trains with the defaults.
        if isinstance(data, dict) and data.get("strategy") == "lora" and data.get("lora") is None:
            return {**data, "lora": {}}
        return data

    @model_validator(mode="after")
    def _check(self) -> JobSpec:
        if self.strategy == "lora" and not self.train_uri:
            raise ValueError("'train_uri' is missing: strategy 'lora' needs a JSONL file of training examples")
        if self.generation.max_new_tokens >= self.max_seq_len:
            raise ValueError(f"'generation.max_new_tokens' ({self.generation.max_new_tokens}) must be smaller "
                             f"than 'max_seq_len' ({self.max_seq_len}), or no prompt token fits")
        return self

    @property
    def ignored_fields(self) -> list[str]:
        return sorted(self.model_extra or {})

    def to_json(self) -> str:
        return self.model_dump_json(exclude_none=True)


class ChatItem(BaseModel):
    """One line of an eval / train / val input: OpenAI-shaped messages and tools, as logged.

    Eval items are the request (the model answers it); training examples end with the assistant's
    answer. ``examples`` (eval items of an icl job) are in-context example conversations, most
    similar first; the job keeps those that fit ``icl.budget_tokens`` with the candidate's tokenizer.
    """

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str = Field(min_length=1)
    messages: list[dict[str, Any]] = Field(min_length=1)
    tools: list[dict[str, Any]] | None = None
    examples: list[list[dict[str, Any]]] = []


class Prediction(BaseModel):
    """One line of predictions.jsonl: the raw generated text (tool calls are parsed on the Airflow
    side, per model family) with its token counts and latency."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    id: str
    output: str
    prompt_tokens: int = Field(ge=0)
    completion_tokens: int = Field(ge=0)
    latency_s: float = Field(ge=0.0, description="seconds until this item's answer was complete")
    icl_examples: int = Field(0, ge=0, description="in-context examples that fit in the prompt")
    skipped: str | None = Field(None, description="why no answer was generated (e.g. longer than the context)")


def _describe(error: dict[str, Any]) -> str:
    field = ".".join(str(p) for p in error["loc"])
    kind, message = error["type"], error["msg"]
    if not field:  # a check across fields: its message names them
        return message.removeprefix("Value error, ")
    if kind == "missing":
        return f"spec field '{field}' is missing"
    if kind == "extra_forbidden":
        return f"spec field '{field}' is not a known key; remove it or check its spelling"
    return f"spec field '{field}' is {error['input']!r}: {message.removeprefix('Value error, ')}"


def spec_error(exc: ValidationError) -> SpecError:
    """One line per problem, each naming the field and what it must be."""
    return SpecError("; ".join(_describe(e) for e in exc.errors(include_url=False)))


def parse_spec(raw: Any) -> JobSpec:
    """A JobSpec from a JSON object (a dict or its text); SpecError names every bad field."""
    if isinstance(raw, (str, bytes)):
        try:
            raw = json.loads(raw)
        except ValueError as exc:
            raise SpecError(f"the job spec is not valid JSON ({exc})") from exc
    if not isinstance(raw, dict):
        raise SpecError("the job spec must be a JSON object")
    try:
        return JobSpec.model_validate(raw)
    except ValidationError as exc:
        raise spec_error(exc) from None
