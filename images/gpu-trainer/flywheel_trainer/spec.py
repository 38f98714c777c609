"""The job spec the flywheel hands to the trainer (one JSON object), validated before any work.

Errors name the field and the fix, because the person reading them is looking at an Airflow task
log, not at this code.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

STRATEGIES = ("base", "icl", "lora")
KNOWN_FIELDS = {"job_name", "strategy", "model_path", "train_file", "val_file", "eval_file", "output_dir", "lora",
                "generation", "max_seq_len", "seed"}


class SpecError(ValueError):
    """An invalid job spec, argument or input file; the message is the whole user-facing error."""


@dataclass(frozen=True)
class LoraSpec:
    adapter_dim: int = 32
    adapter_alpha: int | None = None  # default: 2 x adapter_dim
    dropout: float = 0.1
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-4
    target_modules: str | list[str] = "all-linear"  # peft's name for every linear projection but lm_head


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
    ignored_fields: tuple[str, ...] = ()


def _path(raw: dict, key: str, *, required: bool, must_exist: bool = True) -> Path | None:
    value = raw.get(key)
    if value in (None, ""):
        if required:
            raise SpecError(f"spec field '{key}' is missing: set it to an absolute path")
        return None
    if not isinstance(value, str):
        raise SpecError(f"spec field '{key}' must be a path string, not {type(value).__name__}")
    if value.startswith("file://"):
        value = value[len("file://"):]
    if "://" in value:
        raise SpecError(f"spec field '{key}' is {value!r}: the trainer reads local paths only; "
                        "stage object-storage inputs to the pod's volume and pass that path")
    path = Path(value)
    if must_exist and not path.exists():
        raise SpecError(f"spec field '{key}': {path} does not exist; fix the path or create the file first")
    return path


def _number(section: str, raw: dict, key: str, kind: type, default: Any, *, minimum: float,
            exclusive: bool = False, maximum: float | None = None) -> Any:
    value = raw.get(key, default)
    if value is None:
        return default
    # bool is an int in Python; "epochs": true is a mistake, not 1.
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (kind is int and value != int(value)):
        raise SpecError(f"spec field '{section}{key}' must be a{'n integer' if kind is int else ' number'}, "
                        f"not {value!r}")
    value = kind(value)
    too_low = value <= minimum if exclusive else value < minimum
    if too_low or (maximum is not None and value >= maximum):
        bound = f"> {minimum}" if exclusive else f">= {minimum}"
        raise SpecError(f"spec field '{section}{key}' is {value}; it must be {bound}"
                        + (f" and < {maximum}" if maximum is not None else ""))
    return value


def _lora(raw: Any) -> LoraSpec:
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise SpecError("spec field 'lora' must be an object like {\"adapter_dim\": 32, \"epochs\": 2}")
    known = {f.name for f in fields(LoraSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise SpecError(f"spec field 'lora' has unknown key(s) {unknown}; known keys: {sorted(known)}")
    target = raw.get("target_modules", "all-linear")
    if not (isinstance(target, str) or (isinstance(target, list) and target and all(isinstance(t, str) for t in target))):
        raise SpecError("spec field 'lora.target_modules' must be \"all-linear\" or a list of module names")
    d = LoraSpec()
    return LoraSpec(
        adapter_dim=_number("lora.", raw, "adapter_dim", int, d.adapter_dim, minimum=1),
        adapter_alpha=_number("lora.", raw, "adapter_alpha", int, None, minimum=1),
        dropout=_number("lora.", raw, "dropout", float, d.dropout, minimum=0.0, maximum=1.0),
        epochs=_number("lora.", raw, "epochs", int, d.epochs, minimum=1),
        batch_size=_number("lora.", raw, "batch_size", int, d.batch_size, minimum=1),
        learning_rate=_number("lora.", raw, "learning_rate", float, d.learning_rate, minimum=0.0, exclusive=True),
        target_modules=target,
    )


def parse_spec(raw: Any) -> JobSpec:
    if not isinstance(raw, dict):
        raise SpecError("the job spec must be a JSON object")
    strategy = raw.get("strategy")
    if strategy not in STRATEGIES:
        raise SpecError(f"spec field 'strategy' is {strategy!r}; use one of: {', '.join(STRATEGIES)}")
    model_path = _path(raw, "model_path", required=True)
    assert model_path is not None
    if not (model_path / "config.json").is_file():
        raise SpecError(f"spec field 'model_path': {model_path} has no config.json; point it at a directory "
                        "written by save_pretrained (or built with `flywheel_trainer pretrain`)")
    lora = None
    if strategy == "lora":
        if not raw.get("train_file"):
            raise SpecError("spec field 'train_file' is missing: strategy 'lora' needs a JSONL file of "
                            "{\"prompt\", \"completion\"} training examples")
        lora = _lora(raw.get("lora"))
    generation = raw.get("generation") or {}
    if not isinstance(generation, dict):
        raise SpecError("spec field 'generation' must be an object like {\"max_new_tokens\": 64}")
    max_seq_len = _number("", raw, "max_seq_len", int, 512, minimum=2)
    max_new_tokens = _number("generation.", generation, "max_new_tokens", int, 64, minimum=1)
    if max_new_tokens >= max_seq_len:
        raise SpecError(f"spec field 'generation.max_new_tokens' ({max_new_tokens}) must be smaller than "
                        f"'max_seq_len' ({max_seq_len}), or no prompt token fits")
    eval_file = _path(raw, "eval_file", required=True)
    output_dir = _path(raw, "output_dir", required=True, must_exist=False)
    assert eval_file is not None and output_dir is not None
    if output_dir.exists() and not output_dir.is_dir():
        raise SpecError(f"spec field 'output_dir': {output_dir} is a file; give a directory")
    return JobSpec(
        job_name=str(raw.get("job_name") or "flywheel-job"),
        strategy=strategy,
        model_path=model_path,
        eval_file=eval_file,
        output_dir=output_dir,
        # Only a lora job reads them; a base/icl spec may carry them and they are not checked.
        train_file=_path(raw, "train_file", required=False) if strategy == "lora" else None,
        val_file=_path(raw, "val_file", required=False) if strategy == "lora" else None,
        lora=lora,
        max_new_tokens=max_new_tokens,
        max_seq_len=max_seq_len,
        seed=_number("", raw, "seed", int, 42, minimum=0),
        # Newer flywheel versions may send more fields; say so in the log instead of failing the job.
        ignored_fields=tuple(sorted(set(raw) - KNOWN_FIELDS)),
    )


def read_jsonl(path: Path, required: tuple[str, ...], *, field: str) -> list[dict[str, Any]]:
    """Rows of a JSONL input; `field` is the spec field that named the file (for the error)."""
    rows = []
    # Split on "\n" only: str.splitlines() also splits inside a record at U+2028, U+0085, a bare CR...
    for n, line in enumerate(path.read_text(encoding="utf-8").split("\n"), start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise SpecError(f"spec field '{field}': line {n} of {path} is not valid JSON ({exc})") from exc
        missing = [k for k in required if not isinstance(row, dict) or not isinstance(row.get(k), str)]
        if missing:
            raise SpecError(f"spec field '{field}': line {n} of {path} lacks string field(s) {missing}; "
                            f"each line must be a JSON object with {list(required)}")
        rows.append(row)
    return rows
