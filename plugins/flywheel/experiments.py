"""Step 3, experiment: plan workload x candidate x strategy, and build each GPU job.

``base`` asks the candidate zero-shot, ``icl`` puts few-shot examples picked by embedding
similarity in the prompt (within a token budget), ``lora`` fine-tunes an adapter on the train
split. All three end with generation on the eval split, in the trainer (flywheel_trainer).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from typing import Any

from flywheel import artifacts
from flywheel.config import Candidate, FlywheelConfig, LoraParams

TRAINER_SPEC_VERSION = 1


@dataclass(frozen=True)
class ExperimentSpec:
    run_key: str
    workload_id: str
    kind: str
    candidate: str
    strategy: str
    dataset_uri: str
    training_profile: str | None = None

    @property
    def label(self) -> str:
        """How the Airflow grid names the mapped task instance."""
        return f"{self.workload_id} · {self.candidate} · {self.strategy}"

    @property
    def key(self) -> dict[str, str]:
        return {
            "run_key": self.run_key,
            "workload_id": self.workload_id,
            "candidate": self.candidate,
            "strategy": self.strategy,
        }

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ExperimentSpec:
        return cls(**d)


def plan_experiments(
    datasets: list[dict[str, Any]], *, candidate: str, strategies: list[str], training_profile: str | None
) -> list[dict[str, Any]]:
    """One experiment per usable dataset x strategy for one candidate, in a stable order."""
    specs = []
    for ds in sorted((d for d in datasets if d and d.get("usable")), key=lambda d: d["workload_id"]):
        for strategy in strategies:
            specs.append(
                ExperimentSpec(
                    run_key=ds["run_key"],
                    workload_id=ds["workload_id"],
                    kind=ds["kind"],
                    candidate=candidate,
                    strategy=strategy,
                    dataset_uri=ds["uri"],
                    training_profile=training_profile,
                ).to_dict()
            )
    return specs


def _split(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["split"] == name]


def _file_ref(uri: str) -> str:
    """What the trainer receives: a local path for file:// artifacts, the URI otherwise."""
    try:
        return str(artifacts.local_path(uri))
    except ValueError:
        return uri


def build_eval_prompts(spec: ExperimentSpec, rows: list[dict[str, Any]], cfg: FlywheelConfig, candidate: Candidate,
                       embedder) -> list[str]:
    eval_rows = _split(rows, "eval")
    prompts = [r["prompt"] for r in eval_rows]
    if spec.strategy != "icl":
        return prompts
    from flywheel.icl import select_for_eval, token_counter

    pool = _split(rows, "train")
    return select_for_eval(
        prompts,
        [r["prompt"] for r in pool],
        [r["completion"] for r in pool],
        embedder,
        token_counter(candidate.model_path),
        cfg.icl_budget_tokens,
        cfg.icl_max_examples,
    )


def build_job(spec: ExperimentSpec, cfg: FlywheelConfig, embedder=None) -> dict[str, Any]:
    """The GpuJob (as a dict) that runs one experiment; inputs are content-addressed artifacts.

    ``embedder`` picks the in-context examples (only the ``icl`` strategy needs it).
    """
    from flywheel_operators.gpu_job import GpuJob

    candidate = cfg.candidates[spec.candidate]
    rows = artifacts.read_jsonl(spec.dataset_uri)
    eval_rows = _split(rows, "eval")
    prompts = build_eval_prompts(spec, rows, cfg, candidate, embedder)
    inputs = {
        "eval": artifacts.put_jsonl(
            "trainer-inputs", [{"id": r["id"], "prompt": p} for r, p in zip(eval_rows, prompts)]
        )
    }
    lora: LoraParams | None = None
    if spec.strategy == "lora":
        lora = cfg.lora_for_profile(spec.training_profile)
        for split in ("train", "val"):
            inputs[split] = artifacts.put_jsonl(
                "trainer-inputs",
                [{"prompt": r["prompt"], "completion": r["completion"]} for r in _split(rows, split)],
            )
    fingerprint = {
        "version": TRAINER_SPEC_VERSION,
        "model": _model_fingerprint(candidate.model_path),
        "strategy": spec.strategy,
        "inputs": {k: v.rsplit("/", 1)[-1] for k, v in inputs.items()},  # content hashes
        "lora": asdict(lora) if lora else None,
        "max_new_tokens": cfg.max_new_tokens,
        "max_seq_len": cfg.max_seq_len,
        "seed": cfg.seed,
    }
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
    output_uri = str(artifacts.artifact_root() / "experiments" / digest)
    trainer_spec = {
        "job_name": spec.label,
        "strategy": spec.strategy,
        "model_path": candidate.model_path,
        "train_file": _file_ref(inputs["train"]) if "train" in inputs else None,
        "val_file": _file_ref(inputs["val"]) if "val" in inputs else None,
        "eval_file": _file_ref(inputs["eval"]),
        "output_dir": _file_ref(output_uri),
        "lora": {**asdict(lora), "target_modules": "all-linear"} if lora else None,
        "generation": {"max_new_tokens": cfg.max_new_tokens},
        "max_seq_len": cfg.max_seq_len,
        "seed": cfg.seed,
    }
    job = GpuJob(
        name=spec.label,
        image=candidate.image,
        args=["run"],
        gpus=candidate.gpus,
        memory=candidate.memory,
        inputs=inputs,
        outputs={"predictions": f"{output_uri}/predictions.jsonl", "adapter": f"{output_uri}/adapter"},
        labels={
            "flywheel.io/run": spec.run_key,
            "flywheel.io/workload": spec.workload_id,
            "flywheel.io/candidate": spec.candidate,
            "flywheel.io/strategy": spec.strategy,
        },
        spec=trainer_spec,
    )
    return {"experiment": spec.to_dict(), **job.to_dict()}


def _model_fingerprint(model_path: str) -> str:
    """Changes when the candidate's weights are rebuilt, so stale outputs are not reused."""
    from pathlib import Path

    meta = Path(model_path) / "flywheel_model.json"
    if meta.exists():
        return hashlib.sha256(meta.read_bytes()).hexdigest()
    return model_path
