"""From an experiment to its GPU job, and back: the object-storage side of steps 3 and 4.

``build_job`` reads the curated dataset, picks in-context examples, writes the trainer's inputs as
content-addressed artifacts of the run and returns the ``GpuJob`` (a small dict for XCom) whose
spec names every input and output by URI (``file://`` or ``s3://``: the trainer reads and writes
the store itself); ``evaluate_job_output`` reads what the job wrote, through the same store, and
hands it to the domain's evaluator.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

from flywheel.adapters import object_storage as artifacts
from flywheel.config import Candidate, FlywheelConfig, LoraParams
from flywheel.costs import WorkloadTraffic
from flywheel.evaluation import Evaluation, Prediction, Scorer, evaluate
from flywheel.gold import GoldIndex
from flywheel.experiments import TRAINER_SPEC_VERSION, ExperimentSpec
from flywheel.gpu_job import GpuJob


def _split(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["split"] == name]


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


def build_job(spec: ExperimentSpec, cfg: FlywheelConfig, embedder=None,
              anchors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The GpuJob (as a dict) that runs one experiment; inputs are content-addressed artifacts.

    ``embedder`` picks the in-context examples (only the ``icl`` strategy needs it). ``anchors``
    (the workload's frozen anchor items, flywheel.adapters.anchors) are generated on after the eval
    items, under ``anchor:`` ids, for the regression guard.
    """
    from flywheel.adapters.anchors import with_anchors

    candidate = cfg.candidates[spec.candidate]
    rows = artifacts.read_jsonl(spec.dataset_uri)
    if anchors:
        rows = with_anchors(rows, anchors)
    eval_rows = _split(rows, "eval")
    prompts = build_eval_prompts(spec, rows, cfg, candidate, embedder)
    inputs = {
        "eval": artifacts.put_jsonl(
            "inputs", [{"id": r["id"], "prompt": p} for r, p in zip(eval_rows, prompts)], run_key=spec.run_key
        )
    }
    lora: LoraParams | None = None
    if spec.strategy == "lora":
        lora = cfg.lora_for_profile(spec.training_profile)
        for split in ("train", "val"):
            inputs[split] = artifacts.put_jsonl(
                "inputs",
                [{"prompt": r["prompt"], "completion": r["completion"]} for r in _split(rows, split)],
                run_key=spec.run_key,
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
    # This run's own folder (never shared with an overlapping run); an identical earlier job is
    # reused by copying its outputs here (flywheel.adapters.object_storage.reuse_output).
    output_uri = artifacts.experiment_uri(spec.run_key, f"{spec.workload_id}|{spec.candidate}|{spec.strategy}")
    trainer_spec = {
        "job_name": spec.label,
        "strategy": spec.strategy,
        "model_path": candidate.model_path,
        "train_file": inputs.get("train"),
        "val_file": inputs.get("val"),
        "eval_file": inputs["eval"],
        "output_dir": output_uri,
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
    return {"experiment": spec.to_dict(), "fingerprint": digest, **job.to_dict()}


def _model_fingerprint(model_path: str) -> str:
    """Changes when the candidate's weights are rebuilt, so stale outputs are not reused."""
    meta = Path(model_path) / "flywheel_model.json"
    if meta.exists():
        return hashlib.sha256(meta.read_bytes()).hexdigest()
    return model_path


def output_dir(job: dict[str, Any]) -> str:
    """The URI of the folder the job writes (predictions, metrics, adapter)."""
    return job["outputs"]["predictions"].rsplit("/", 1)[0]


def load_metrics(output: str) -> dict[str, Any]:
    return artifacts.read_json(f"{output}/{artifacts.METRICS}")


def load_predictions(output: str | Path) -> dict[str, Prediction]:
    """The trainer's predictions.jsonl by item id (token counts kept when the generator wrote them),
    read through the store from the job's output folder (a URI; a local Path is a file:// one)."""
    from flywheel.records import read_jsonl_text

    uri = f"file://{Path(output).resolve()}" if isinstance(output, Path) else output
    preds = {}
    # Split on "\n" only (a generated U+2028 must not cut a prediction in two).
    for row in read_jsonl_text(artifacts.read_bytes(f"{uri}/{artifacts.PREDICTIONS}")):
        preds[str(row["id"])] = Prediction(
            id=str(row["id"]), output=str(row.get("output") or ""),
            prompt_tokens=_count(row.get("prompt_tokens")), completion_tokens=_count(row.get("completion_tokens")),
            latency_s=row.get("latency_s") if isinstance(row.get("latency_s"), (int, float)) else None,
        )
    return preds


def _count(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) and value >= 0 else None


def evaluate_job_output(spec: ExperimentSpec, job: dict[str, Any], cfg: FlywheelConfig, scorer: Scorer, *,
                        gold: GoldIndex | None = None, window: tuple[int, float] | None = None,
                        training_gpu_seconds: float | None = None) -> tuple[Evaluation, WorkloadTraffic | None]:
    """Load what the GPU job read and wrote, then score and price it.

    ``window`` = (the workload's requests in the run's data interval, the interval in days): with
    the production usage logged in the dataset's responses, the base of the savings figures.
    """
    from flywheel.costs import workload_traffic
    from flywheel.icl import token_counter

    rows = artifacts.read_jsonl(spec.dataset_uri)
    traffic = None
    if window is not None and window[1] > 0:
        traffic = workload_traffic(spec.workload_id, (r.get("response") for r in rows), requests_in_window=window[0],
                                   window_days=window[1], prices=cfg.production_prices)
    eval_prompts = {str(r["id"]): r["prompt"] for r in artifacts.read_jsonl(job["inputs"]["eval"])}
    predictions = load_predictions(output_dir(job))
    counter = None

    def count_tokens(text: str) -> int:
        # Loaded only when a prediction lacks the generator's own token counts.
        nonlocal counter
        if counter is None:
            counter = token_counter(cfg.candidates[spec.candidate].model_path)
        return counter(text)

    evaluation = evaluate(
        spec,
        rows=rows,
        eval_prompts=eval_prompts,
        predictions=predictions,
        cfg=cfg,
        scorer=scorer,
        count_tokens=count_tokens,
        gold=gold,
        traffic=traffic,
        training_gpu_seconds=training_gpu_seconds,
    )
    return evaluation, traffic
