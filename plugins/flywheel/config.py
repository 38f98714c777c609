"""Flywheel configuration: one YAML file (include/flywheel.yaml by default), typed here.

The file holds no secrets; ``${VAR}`` / ``${VAR:-default}`` are expanded from the environment so the
same file serves the embedded default and a production deployment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "include" / "flywheel.yaml"
STRATEGIES = ("base", "icl", "lora")

_VAR = re.compile(r"\$\{([A-Z0-9_]+)(?::-([^}]*))?\}")


class ConfigError(ValueError):
    """The configuration file is wrong; the message names the key and the fix."""


def _expand(value: Any) -> Any:
    if isinstance(value, str):
        def sub(m: re.Match) -> str:
            name, default = m.group(1), m.group(2)
            if name in os.environ:
                return os.environ[name]
            if default is None:
                raise ConfigError(f"environment variable {name} is not set (used in the flywheel config)")
            return default

        return _VAR.sub(sub, value)
    if isinstance(value, dict):
        return {k: _expand(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_expand(v) for v in value]
    return value


@dataclass(frozen=True)
class LoraParams:
    adapter_dim: int = 32
    dropout: float = 0.1
    epochs: int = 2
    batch_size: int = 16
    learning_rate: float = 1e-4


@dataclass(frozen=True)
class Candidate:
    name: str
    model_path: str
    image: str
    gpus: int
    memory: str
    price_per_1m_tokens: float
    build: dict = field(default_factory=dict)


@dataclass(frozen=True)
class DagProfile:
    dag_id: str
    description: str
    schedule: str | None
    candidates: tuple[str, ...]
    strategies: tuple[str, ...]
    eval_size: int


@dataclass(frozen=True)
class FlywheelConfig:
    production_model: str
    production_price_per_1m_tokens: float
    min_records: int
    on_demand_lookback_days: int
    eval_size: int
    val_ratio: float
    seed: int
    min_train: int
    max_record_bytes: int
    threshold: float
    bootstrap_seed: int
    icl_budget_tokens: int
    icl_max_examples: int
    max_new_tokens: int
    max_seq_len: int
    lora: LoraParams
    training_profiles: dict[str, dict]
    candidates: dict[str, Candidate]
    dags: dict[str, DagProfile]

    def lora_for_profile(self, profile: str | None) -> LoraParams:
        """LoRA hyper-parameters: production defaults, overridden by a named training profile."""
        if not profile:
            return self.lora
        if profile not in self.training_profiles:
            raise ConfigError(
                f"unknown training profile {profile!r}; known: {sorted(self.training_profiles)}"
            )
        return replace(self.lora, **self.training_profiles[profile])


def _resolve_path(p: str) -> str:
    path = Path(p)
    return str(path if path.is_absolute() else (PROJECT_ROOT / path).resolve())


def parse_config(raw: dict) -> FlywheelConfig:
    raw = _expand(raw)
    try:
        candidates = {
            name: Candidate(
                name=name,
                model_path=_resolve_path(c["model_path"]),
                image=c["image"],
                gpus=int(c.get("gpus", 1)),
                memory=str(c.get("memory", "8Gi")),
                price_per_1m_tokens=float(c["price_per_1m_tokens"]),
                build=dict(c.get("build") or {}),
            )
            for name, c in raw["candidates"].items()
        }
        dags = {
            dag_id: DagProfile(
                dag_id=dag_id,
                description=d.get("description", ""),
                schedule=d.get("schedule"),
                candidates=tuple(d["candidates"]),
                strategies=tuple(d["strategies"]),
                eval_size=int(d.get("eval_size", raw["curation"]["eval_size"])),
            )
            for dag_id, d in raw["dags"].items()
        }
        profiles = {k: dict(v) for k, v in (raw.get("training_profiles") or {}).items()}
        for name, overrides in profiles.items():
            unknown = set(overrides) - set(LoraParams.__dataclass_fields__)
            if unknown:
                raise ConfigError(f"training_profiles.{name}: unknown keys {sorted(unknown)}")
        cfg = FlywheelConfig(
            production_model=raw["production"]["model"],
            production_price_per_1m_tokens=float(raw["production"]["price_per_1m_tokens"]),
            min_records=int(raw["discovery"]["min_records"]),
            on_demand_lookback_days=int(raw["discovery"]["on_demand_lookback_days"]),
            eval_size=int(raw["curation"]["eval_size"]),
            val_ratio=float(raw["curation"]["val_ratio"]),
            seed=int(raw["curation"]["seed"]),
            min_train=int(raw["curation"]["min_train"]),
            max_record_bytes=int(raw["curation"]["max_record_bytes"]),
            threshold=float(raw["evaluation"]["threshold"]),
            bootstrap_seed=int(raw["evaluation"]["bootstrap_seed"]),
            icl_budget_tokens=int(raw["icl"]["budget_tokens"]),
            icl_max_examples=int(raw["icl"]["max_examples"]),
            max_new_tokens=int(raw["generation"]["max_new_tokens"]),
            max_seq_len=int(raw["generation"]["max_seq_len"]),
            lora=LoraParams(**raw["lora"]),
            training_profiles=profiles,
            candidates=candidates,
            dags=dags,
        )
    except KeyError as exc:
        raise ConfigError(f"flywheel config is missing the key {exc}") from exc
    for dag in cfg.dags.values():
        for c in dag.candidates:
            if c not in cfg.candidates:
                raise ConfigError(f"dags.{dag.dag_id}.candidates names unknown candidate {c!r}")
        for s in dag.strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"dags.{dag.dag_id}.strategies: {s!r} is not one of {STRATEGIES}")
    if not 0.0 <= cfg.threshold <= 1.0:
        raise ConfigError("evaluation.threshold must be in [0, 1]")
    return cfg


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> FlywheelConfig:
    with open(path, encoding="utf-8") as fh:
        return parse_config(yaml.safe_load(fh))


def load_config(path: str | os.PathLike | None = None) -> FlywheelConfig:
    path = Path(path or os.environ.get("FLYWHEEL_CONFIG") or DEFAULT_CONFIG)
    return _load(str(path), path.stat().st_mtime)
