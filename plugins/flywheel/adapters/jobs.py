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
from pathlib import Path
from typing import Any

from flywheel.adapters import object_storage as artifacts
from flywheel.config import Candidate, FlywheelConfig
from flywheel.costs import WorkloadTraffic
from flywheel.evaluation import Evaluation, Prediction, Scorer, evaluate
from flywheel.experiments import ExperimentSpec
from flywheel.gold import GoldIndex
from flywheel.gpu_job import GpuJob
from flywheel_trainer.spec import SPEC_VERSION, GenerationSpec, IclSpec, JobSpec


def _split(rows: list[dict[str, Any]], name: str) -> list[dict[str, Any]]:
    return [r for r in rows if r["split"] == name]


# Ranked in-context candidates handed to the job per eval item; it keeps those that fit the budget.
ICL_CANDIDATES_PER_EXAMPLE = 4


def build_eval_items(spec: ExperimentSpec, rows: list[dict[str, Any]], cfg: FlywheelConfig,
                     embedder) -> list[dict[str, Any]]:
    """The trainer's eval items: each request as chat messages and tools; for ``icl``, the most
    similar training records as candidate example turns, most similar first."""
    from flywheel.prompts import eval_item, icl_example, request_key, similarity_text

    eval_rows = _split(rows, "eval")
    items = [eval_item(r) for r in eval_rows]
    if spec.strategy != "icl" or cfg.icl_max_examples <= 0 or cfg.icl_budget_tokens <= 0:
        return items
    from flywheel.icl import rank_for_eval

    pool = _split(rows, "train")
    ranked = rank_for_eval(
        [similarity_text(r["request"]) for r in eval_rows],
        [request_key(r["request"]) for r in eval_rows],
        [similarity_text(r["request"]) for r in pool],
        [request_key(r["request"]) for r in pool],
        embedder,
        k=cfg.icl_max_examples * ICL_CANDIDATES_PER_EXAMPLE,
    )
    return [{**item, "examples": [icl_example(pool[i]) for i in order]} for item, order in zip(items, ranked)]


def build_job(spec: ExperimentSpec, cfg: FlywheelConfig, embedder=None,
              anchors: list[dict[str, Any]] | None = None) -> dict[str, Any]:
    """The GpuJob (as a dict) that runs one experiment; inputs are content-addressed artifacts.

    ``embedder`` picks the in-context examples (only the ``icl`` strategy needs it). ``anchors``
    (the workload's frozen anchor items, flywheel.adapters.anchors) are generated on after the eval
    items, under ``anchor:`` ids, for the regression guard.
    """
    from flywheel.adapters.anchors import with_anchors
    from flywheel.prompts import train_item

    candidate = cfg.candidates[spec.candidate]
    rows = artifacts.read_jsonl(spec.dataset_uri)
    if anchors:
        rows = with_anchors(rows, anchors)
    inputs = {"eval": artifacts.put_jsonl("inputs", build_eval_items(spec, rows, cfg, embedder), run_key=spec.run_key)}
    lora = cfg.lora_for_profile(spec.training_profile) if spec.strategy == "lora" else None
    if lora is not None:
        for split in ("train", "val"):
            inputs[split] = artifacts.put_jsonl(
                "inputs", [train_item(r) for r in _split(rows, split)], run_key=spec.run_key
            )
    # This run's own folder (never shared with an overlapping run); an identical earlier job is
    # reused by copying its outputs here (flywheel.adapters.object_storage.reuse_output).
    output_uri = artifacts.experiment_uri(spec.run_key, f"{spec.workload_id}|{spec.candidate}|{spec.strategy}")
    trainer_spec = JobSpec(
        job_name=spec.label,
        candidate=spec.candidate,
        strategy=spec.strategy,
        model_uri=candidate.model_path,
        eval_uri=inputs["eval"],
        train_uri=inputs.get("train"),
        val_uri=inputs.get("val"),
        output_uri=output_uri,
        lora=lora,
        icl=IclSpec(budget_tokens=cfg.icl_budget_tokens, max_examples=cfg.icl_max_examples),
        generation=GenerationSpec(max_new_tokens=candidate.max_new_tokens or cfg.max_new_tokens),
        max_seq_len=candidate.max_seq_len or cfg.max_seq_len,
        seed=cfg.seed,
    )
    # Everything that determines the outputs (not where they go): an identical job in another run
    # reuses them.
    fingerprint = {
        "version": SPEC_VERSION,
        "model": _model_fingerprint(candidate.model_path),
        "inputs": {k: v.rsplit("/", 1)[-1] for k, v in inputs.items()},  # content hashes
        "spec": trainer_spec.model_dump(mode="json", exclude={"job_name", "output_uri", "model_uri", "eval_uri",
                                                              "train_uri", "val_uri", "checkpoint_steps"}),
    }
    digest = hashlib.sha256(json.dumps(fingerprint, sort_keys=True).encode()).hexdigest()
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
        spec=trainer_spec.model_dump(mode="json", exclude_none=True),
    )
    return {"experiment": spec.to_dict(), "fingerprint": digest, **job.to_dict()}


def _model_fingerprint(model_path: str) -> str:
    """Changes when the candidate's weights change, so stale outputs are not reused: the student's
    build record, else the config and weight files' identities (size and mtime, or ETag)."""
    meta = Path(model_path) / "flywheel_model.json"
    if "://" not in model_path and meta.exists():
        return hashlib.sha256(meta.read_bytes()).hexdigest()
    try:
        root = artifacts.ObjectStoragePath(model_path if "://" in model_path else f"file://{model_path}")
        entries = sorted(
            (e["name"].rsplit("/", 1)[-1], e.get("size"), str(e.get("ETag") or e.get("mtime") or e.get("LastModified")))
            for e in root.fs.ls(root.path, detail=True)
            if e["name"].endswith((".json", ".safetensors", ".bin", ".jinja", ".model")))
    except (OSError, ValueError):
        return model_path  # unreadable here (the job reports it with the config key)
    return hashlib.sha256(json.dumps([model_path, entries], default=str).encode()).hexdigest()


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


def _fallback_token_counter(model_path: str):
    """Counts tokens with the candidate's tokenizer.json (no torch), or words when the model is not
    local: only for predictions written without the trainer's own token counts."""
    tokenizer_file = Path(model_path) / "tokenizer.json"
    if "://" in model_path or not tokenizer_file.is_file():
        return lambda text: len(text.split())
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    return lambda text: len(tokenizer.encode(text, add_special_tokens=False).ids)


def evaluate_job_output(spec: ExperimentSpec, job: dict[str, Any], cfg: FlywheelConfig, scorer: Scorer, *,
                        gold: GoldIndex | None = None, window: tuple[int, float] | None = None,
                        training_gpu_seconds: float | None = None) -> tuple[Evaluation, WorkloadTraffic | None]:
    """Load what the GPU job read and wrote, then score and price it.

    The raw outputs are parsed with the candidate's tool-call parser (its model family).
    ``window`` = (the workload's requests in the run's data interval, the interval in days): with
    the production usage logged in the dataset's responses, the base of the savings figures.
    """
    from flywheel.costs import workload_traffic
    from flywheel.toolcalls import parser_for

    candidate = cfg.candidates[spec.candidate]
    rows = artifacts.read_jsonl(spec.dataset_uri)
    traffic = None
    if window is not None and window[1] > 0:
        traffic = workload_traffic(spec.workload_id, (r.get("response") for r in rows), requests_in_window=window[0],
                                   window_days=window[1], prices=cfg.production_prices)
    predictions = load_predictions(output_dir(job))
    counter = None
    eval_prompts: dict[str, str] = {}
    if any(p.prompt_tokens is None or p.completion_tokens is None for p in predictions.values()):
        eval_prompts = {str(r["id"]): json.dumps([r.get("messages"), r.get("tools")], ensure_ascii=False)
                        for r in artifacts.read_jsonl(job["inputs"]["eval"])}

    def count_tokens(text: str) -> int:
        # Loaded only when a prediction lacks the generator's own token counts.
        nonlocal counter
        if counter is None:
            counter = _fallback_token_counter(candidate.model_path)
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
        parse=parser_for(candidate.tool_call_parser),
    )
    return evaluation, traffic
