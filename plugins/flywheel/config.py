"""Flywheel configuration: one YAML file (include/flywheel.yaml by default), typed here.

The file holds no secrets; ``${VAR}`` / ``${VAR:-default}`` are expanded from the environment so the
same file serves the embedded default and a production deployment.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from flywheel.costs import Prices
from flywheel.regression import GuardBudgets
from flywheel.toolcalls import DEFAULT_PARSER, PARSERS
from flywheel_trainer.spec import STRATEGIES, LoraSpec

PROJECT_ROOT = Path(__file__).resolve().parents[2]
DEFAULT_CONFIG = PROJECT_ROOT / "include" / "flywheel.yaml"
# The strategies and the LoRA hyper-parameters (with their defaults) are defined once, in the GPU
# job spec both sides import (flywheel_trainer.spec, torch-free); the config reads them from there
# (and re-exports them: `from flywheel.config import STRATEGIES, LoraSpec`).

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
class Candidate:
    name: str
    model_path: str                  # a Hugging Face model directory: local/mounted path or an object-storage URI
    image: str
    gpus: int
    memory: str
    price_per_1m_tokens: float
    tool_call_parser: str = DEFAULT_PARSER  # the model family's tool-call format (flywheel.toolcalls)
    max_seq_len: int | None = None   # prompt + answer tokens; default generation.max_seq_len
    # Answer tokens, counted by this candidate's tokenizer; default generation.max_new_tokens. A small
    # vocabulary spells identifiers out in many tokens: production's answers must fit, or every
    # long answer is cut off and scores as malformed.
    max_new_tokens: int | None = None
    build: dict = field(default_factory=dict)
    # Input and output tokens are often priced apart; each defaults to the blended price.
    price_per_1m_input_tokens: float | None = None
    price_per_1m_output_tokens: float | None = None

    @property
    def prices(self) -> Prices:
        return _prices(self.price_per_1m_tokens, self.price_per_1m_input_tokens, self.price_per_1m_output_tokens)


def _prices(blended: float, input_: float | None, output: float | None) -> Prices:
    return Prices(input_per_1m=blended if input_ is None else input_,
                  output_per_1m=blended if output is None else output)


@dataclass(frozen=True)
class JudgeSettings:
    """How the LLM judge is used when the ``flywheel_judge`` connection exists (the endpoint, key
    and model are the connection's; these are the flywheel's side)."""

    prompt_version: str = "v1"
    position: str = "both"  # both orders scored, or "random" (one seeded order per item)
    seed: int = 0
    max_concurrency: int = 16
    timeout_s: float = 60.0
    max_retries: int = 4
    max_answer_chars: int = 8000
    price_per_1m_input_tokens: float = 0.0
    price_per_1m_output_tokens: float = 0.0


@dataclass(frozen=True)
class Reviewer:
    """A person who may decide a review: an id of the Airflow auth manager's users (HITL assigned_users)."""

    id: str
    name: str

    def as_hitl_user(self) -> dict[str, str]:
        return {"id": self.id, "name": self.name}


@dataclass(frozen=True)
class DagProfile:
    dag_id: str
    description: str
    schedule: str | None
    candidates: tuple[str, ...]
    strategies: tuple[str, ...]
    eval_size: int
    # Who waits less for a GPU: the pool hands free slots to the highest weight first
    # (on demand > daily > weekly by default).
    priority_weight: int = 1


@dataclass(frozen=True)
class ElasticsearchSource:
    conn_id: str = "elasticsearch_default"
    index: str = "flywheel"
    page_size: int = 1000
    keep_alive: str = "5m"


@dataclass(frozen=True)
class LogSettings:
    """Where production logs are read from and how they are stored (see docs/logs.md)."""

    source: str = "postgres"                # postgres | elasticsearch
    redact_before_storage: bool = True      # False stores raw records (then retention applies)
    raw_retention_days: int = 30            # raw records are deleted this many days after storage
    elasticsearch: ElasticsearchSource = field(default_factory=ElasticsearchSource)


LOG_SOURCES = ("postgres", "elasticsearch")


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
    lora: LoraSpec
    training_profiles: dict[str, dict]
    candidates: dict[str, Candidate]
    dags: dict[str, DagProfile]
    production_price_per_1m_input_tokens: float | None = None
    production_price_per_1m_output_tokens: float | None = None
    slice_floor: float = 0.0  # a candidate whose worst slice scores below this is not sent to review
    max_unscored_share: float = 0.1  # nor one whose judge could not score more than this share of items
    calibration_pass_mark: float = 0.5  # judge and human agree on pass/fail at this score (kappa)
    gpu_price_per_hour: float = 0.0  # USD per GPU-hour, prices LoRA training
    judge: JudgeSettings = field(default_factory=JudgeSettings)
    logs: LogSettings = field(default_factory=LogSettings)
    max_records: int = 10_000
    min_class_size: int = 5
    stratify_key: str | None = None
    dedup_on_answer: bool = False
    curation_workers: int = 2
    guard: GuardBudgets = field(default_factory=GuardBudgets)
    reviewers: tuple[Reviewer, ...] = ()
    review_timeout_hours: float = 72.0
    # The Kubernetes GPU backend's settings (validated by flywheel_operators.kubernetes.KubernetesSettings).
    kubernetes: dict = field(default_factory=dict)

    @property
    def production_prices(self) -> Prices:
        return _prices(self.production_price_per_1m_tokens, self.production_price_per_1m_input_tokens,
                       self.production_price_per_1m_output_tokens)

    def curation_settings(self, eval_size: int | None = None):
        """The curation settings of a run (``eval_size`` from the run's form), validated."""
        from flywheel.curation import CurationSettings

        return CurationSettings(
            eval_size=int(eval_size if eval_size is not None else self.eval_size), val_ratio=self.val_ratio,
            seed=self.seed, min_train=self.min_train, max_records=self.max_records,
            min_class_size=self.min_class_size, stratify_key=self.stratify_key,
            dedup_on_answer=self.dedup_on_answer,
        ).check()

    def lora_for_profile(self, profile: str | None) -> LoraSpec:
        """LoRA hyper-parameters: production defaults, overridden by a named training profile."""
        if not profile:
            return self.lora
        if profile not in self.training_profiles:
            raise ConfigError(
                f"unknown training profile {profile!r}; known: {sorted(self.training_profiles)}"
            )
        return _lora(f"training_profiles.{profile}", {**self.lora.model_dump(exclude_unset=True),
                                                      **self.training_profiles[profile]})


def _lora(key: str, raw: Any) -> LoraSpec:
    try:
        return LoraSpec.model_validate(raw or {})
    except ValidationError as exc:
        problems = "; ".join(f"{key}.{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors(include_url=False))
        raise ConfigError(f"flywheel config: {problems}") from None


def _opt_float(value: Any) -> float | None:
    return None if value is None else float(value)


def _judge_settings(raw: dict) -> JudgeSettings:
    unknown = set(raw) - set(JudgeSettings.__dataclass_fields__)
    if unknown:
        raise ConfigError(f"judge: unknown keys {sorted(unknown)}; known: {sorted(JudgeSettings.__dataclass_fields__)}")
    defaults = JudgeSettings()
    return JudgeSettings(**{k: type(getattr(defaults, k))(v) for k, v in raw.items()})


def _resolve_path(p: str) -> str:
    """A model location: a URI (s3://, gs://, file://...) as is, a relative path from the project root."""
    if "://" in p:
        return p
    path = Path(p)
    return str(path if path.is_absolute() else (PROJECT_ROOT / path).resolve())


_USER_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.@-]{0,63}")


def _reviewers(raw: list) -> tuple[Reviewer, ...]:
    out = []
    for i, r in enumerate(raw):
        if isinstance(r, str):
            r = {"id": r}
        if not isinstance(r, dict) or not isinstance(r.get("id"), str) or not _USER_ID.fullmatch(r["id"]):
            raise ConfigError(f"review.reviewers[{i}]: expected {{id: <user id>, name: <display name>}} with an id "
                              f"matching {_USER_ID.pattern}; got {r!r}")
        out.append(Reviewer(id=r["id"], name=str(r.get("name") or r["id"])))
    ids = [r.id for r in out]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"review.reviewers: an id appears twice in {ids}")
    return tuple(out)


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
                tool_call_parser=str(c.get("tool_call_parser") or DEFAULT_PARSER),
                max_seq_len=int(c["max_seq_len"]) if c.get("max_seq_len") else None,
                max_new_tokens=int(c["max_new_tokens"]) if c.get("max_new_tokens") else None,
                build=dict(c.get("build") or {}),
                price_per_1m_input_tokens=_opt_float(c.get("price_per_1m_input_tokens")),
                price_per_1m_output_tokens=_opt_float(c.get("price_per_1m_output_tokens")),
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
                priority_weight=int(d.get("priority_weight", 1)),
            )
            for dag_id, d in raw["dags"].items()
        }
        base_lora = _lora("lora", raw.get("lora"))
        profiles = {k: dict(v) for k, v in (raw.get("training_profiles") or {}).items()}
        for name, overrides in profiles.items():
            _lora(f"training_profiles.{name}", {**base_lora.model_dump(exclude_unset=True), **overrides})
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
            lora=base_lora,
            training_profiles=profiles,
            candidates=candidates,
            dags=dags,
            production_price_per_1m_input_tokens=_opt_float(raw["production"].get("price_per_1m_input_tokens")),
            production_price_per_1m_output_tokens=_opt_float(raw["production"].get("price_per_1m_output_tokens")),
            slice_floor=float(raw["evaluation"].get("slice_floor", 0.0)),
            max_unscored_share=float(raw["evaluation"].get("max_unscored_share", 0.1)),
            calibration_pass_mark=float(raw["evaluation"].get("calibration_pass_mark", 0.5)),
            gpu_price_per_hour=float((raw.get("costs") or {}).get("gpu_price_per_hour", 0.0)),
            judge=_judge_settings(raw.get("judge") or {}),
            logs=_log_settings(raw.get("logs") or {}),
            max_records=int(raw["curation"].get("max_records", 10_000)),
            min_class_size=int(raw["curation"].get("min_class_size", 5)),
            stratify_key=raw["curation"].get("stratify_key") or None,
            dedup_on_answer=bool(raw["curation"].get("dedup_on_answer", False)),
            curation_workers=int(raw["curation"].get("workers", 2)),
            guard=GuardBudgets(**(raw.get("regression_guard") or {})),
            reviewers=_reviewers((raw.get("review") or {}).get("reviewers") or []),
            review_timeout_hours=float((raw.get("review") or {}).get("timeout_hours", 72)),
            kubernetes=dict(raw.get("kubernetes") or {}),
        )
    except KeyError as exc:
        raise ConfigError(f"flywheel config is missing the key {exc}") from exc
    except ValidationError as exc:
        raise ConfigError(f"flywheel config: regression_guard: {exc.errors()[0]['loc']}: {exc.errors()[0]['msg']}") from exc
    for cand in cfg.candidates.values():
        if cand.tool_call_parser not in PARSERS:
            raise ConfigError(f"candidates.{cand.name}.tool_call_parser is {cand.tool_call_parser!r}; use one of "
                              f"{sorted(PARSERS)} (the model family's tool-call format)")
        answer = cand.max_new_tokens or cfg.max_new_tokens
        if cand.max_seq_len is not None and cand.max_seq_len <= answer:
            where = f"candidates.{cand.name}.max_new_tokens" if cand.max_new_tokens else "generation.max_new_tokens"
            raise ConfigError(f"candidates.{cand.name}.max_seq_len must exceed {where} ({answer})")
    for dag in cfg.dags.values():
        for c in dag.candidates:
            if c not in cfg.candidates:
                raise ConfigError(f"dags.{dag.dag_id}.candidates names unknown candidate {c!r}")
        for s in dag.strategies:
            if s not in STRATEGIES:
                raise ConfigError(f"dags.{dag.dag_id}.strategies: {s!r} is not one of {STRATEGIES}")
    for key in ("threshold", "slice_floor", "max_unscored_share", "calibration_pass_mark"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise ConfigError(f"evaluation.{key} must be in [0, 1]")
    if cfg.judge.position not in ("both", "random"):
        raise ConfigError(f"judge.position must be 'both' or 'random', not {cfg.judge.position!r}")
    from flywheel.curation import SettingsError

    try:
        cfg.curation_settings()
    except SettingsError as exc:
        raise ConfigError(f"curation: {exc}") from exc
    return cfg


def _log_settings(raw: dict) -> LogSettings:
    source = str(raw.get("source") or "postgres")
    if source not in LOG_SOURCES:
        raise ConfigError(f"logs.source is {source!r}; use one of {', '.join(LOG_SOURCES)}")
    days = int(raw.get("raw_retention_days", 30))
    if days < 1:
        raise ConfigError("logs.raw_retention_days must be at least 1")
    es = raw.get("elasticsearch") or {}
    page = int(es.get("page_size", 1000))
    if not 1 <= page <= 10_000:
        raise ConfigError("logs.elasticsearch.page_size must be in [1, 10000] (Elasticsearch's max_result_window)")
    return LogSettings(
        source=source, redact_before_storage=bool(raw.get("redact_before_storage", True)), raw_retention_days=days,
        elasticsearch=ElasticsearchSource(conn_id=str(es.get("conn_id", "elasticsearch_default")),
                                          index=str(es.get("index", "flywheel")), page_size=page,
                                          keep_alive=str(es.get("keep_alive", "5m"))),
    )


@lru_cache(maxsize=4)
def _load(path: str, mtime: float) -> FlywheelConfig:
    with open(path, encoding="utf-8") as fh:
        return parse_config(yaml.safe_load(fh))


def load_config(path: str | os.PathLike | None = None) -> FlywheelConfig:
    path = Path(path or os.environ.get("FLYWHEEL_CONFIG") or DEFAULT_CONFIG)
    return _load(str(path), path.stat().st_mtime)
