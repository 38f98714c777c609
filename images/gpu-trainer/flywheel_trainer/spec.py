"""The job spec the flywheel hands to the trainer (one JSON object), validated up front.

Errors name the field and the fix, because the person reading them is looking at an Airflow task
log, not at this code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

STRATEGIES = ("base", "icl", "lora")


class SpecError(ValueError):
    pass


@dataclass(frozen=True)
class LoraSpec:
    adapter_dim: int = 32
    adapter_alpha: int | None = None  # default: 2 x adapter_dim
    dropout: float = 0.1
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-4
    target_modules: str | list[str] = "all-linear"


@dataclass(frozen=True)
class JobSpec:
    job_name: str
    strategy: str
    model_path: Path
    eval_file: Path
    output_dir: Path
    train_file: Path | None = None
    val_file: Path | None = None
    lora: LoraSpec | None = None
    max_new_tokens: int = 64
    max_seq_len: int = 512
    seed: int = 42
    extra: dict[str, Any] = field(default_factory=dict)


def _path(raw: dict, key: str, *, required: bool, must_exist: bool = True) -> Path | None:
    value = raw.get(key)
    if value in (None, ""):
        if required:
            raise SpecError(f"spec field '{key}' is missing: give the path of the file")
        return None
    if not isinstance(value, str):
        raise SpecError(f"spec field '{key}' must be a path string, not {type(value).__name__}")
    if value.startswith("file://"):
        value = value[len("file://"):]
    if "://" in value:
        raise SpecError(f"spec field '{key}' is {value!r}: this trainer reads local paths only; "
                        "stage object-storage inputs to the pod's volume first")
    path = Path(value)
    if must_exist and not path.exists():
        raise SpecError(f"spec field '{key}': {path} does not exist")
    return path


def parse_spec(raw: Any) -> JobSpec:
    if not isinstance(raw, dict):
        raise SpecError("the job spec must be a JSON object")
    strategy = raw.get("strategy")
    if strategy not in STRATEGIES:
        raise SpecError(f"spec field 'strategy' is {strategy!r}; use one of {', '.join(STRATEGIES)}")
    model_path = _path(raw, "model_path", required=True)
    assert model_path is not None
    if not (model_path / "config.json").exists():
        raise SpecError(f"spec field 'model_path': {model_path} has no config.json (not a transformers model dir)")
    lora = None
    if strategy == "lora":
        if not raw.get("train_file"):
            raise SpecError("strategy 'lora' needs spec field 'train_file' (JSONL of prompt/completion)")
        lora_raw = raw.get("lora") or {}
        unknown = set(lora_raw) - set(LoraSpec.__dataclass_fields__)
        if unknown:
            raise SpecError(f"spec field 'lora' has unknown keys {sorted(unknown)}")
        lora = LoraSpec(**lora_raw)
        if lora.adapter_dim < 1 or lora.epochs < 1 or lora.batch_size < 1 or not lora.learning_rate > 0:
            raise SpecError("spec field 'lora': adapter_dim, epochs, batch_size must be >= 1 and learning_rate > 0")
    generation = raw.get("generation") or {}
    return JobSpec(
        job_name=str(raw.get("job_name") or "flywheel-job"),
        strategy=strategy,
        model_path=model_path,
        eval_file=_path(raw, "eval_file", required=True),  # type: ignore[arg-type]
        output_dir=_path(raw, "output_dir", required=True, must_exist=False),  # type: ignore[arg-type]
        train_file=_path(raw, "train_file", required=False),
        val_file=_path(raw, "val_file", required=False),
        lora=lora,
        max_new_tokens=int(generation.get("max_new_tokens", 64)),
        max_seq_len=int(raw.get("max_seq_len", 512)),
        seed=int(raw.get("seed", 42)),
    )


def read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict[str, Any]]:
    rows = []
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"{path}:{n} is not valid JSON ({exc})") from exc
        missing = [k for k in required if not isinstance(row.get(k), str)]
        if missing:
            raise SpecError(f"{path}:{n} lacks string field(s) {missing}")
        rows.append(row)
    return rows
