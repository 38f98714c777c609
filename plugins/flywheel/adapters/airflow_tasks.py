"""What each Airflow task does, one function per task, called from dags/flywheel_dags.py.

These take and return small JSON-able dicts (XCom carries specs and counts, never datasets) and
get their database connection from the ``flywheel_db`` Airflow connection.
"""

from __future__ import annotations

import logging
import os
from datetime import datetime, timedelta, timezone
from functools import lru_cache
from typing import Any

from flywheel.adapters import object_storage, postgres as store
from flywheel.config import FlywheelConfig, load_config

log = logging.getLogger(__name__)

FLYWHEEL_CONN_ID = os.environ.get("FLYWHEEL_DB_CONN_ID", "flywheel_db")


def get_conn():
    from airflow.providers.postgres.hooks.postgres import PostgresHook

    return PostgresHook(postgres_conn_id=FLYWHEEL_CONN_ID).get_conn()


EMBEDDINGS_CONN_ID = os.environ.get("FLYWHEEL_EMBEDDINGS_CONN_ID", "flywheel_embeddings")


@lru_cache(maxsize=1)
def embedder():
    """The ``flywheel_embeddings`` connection's endpoint when it exists (no model in this process),
    else all-MiniLM-L6-v2 loaded here."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from flywheel.adapters.embeddings import EndpointEmbedder
    from flywheel.adapters.judge_client import endpoint_from_connection

    try:
        conn = BaseHook.get_connection(EMBEDDINGS_CONN_ID)
    except AirflowNotFoundException:
        conn = None
    if conn is not None:
        endpoint = endpoint_from_connection(host=conn.host, port=conn.port, schema=conn.schema,
                                            password=conn.password, extra=conn.extra_dejson,
                                            conn_id=EMBEDDINGS_CONN_ID, role="embedding")
        log.info("embeddings from %s (model %s, connection %s)", endpoint.base_url, endpoint.model, EMBEDDINGS_CONN_ID)
        return EndpointEmbedder(endpoint.base_url, endpoint.model, endpoint.api_key.get_secret_value())
    import torch

    from flywheel.adapters.embeddings import LocalMiniLM

    # One thread: scoring runs beside the GPU-pool job, and on a small CPU box two thread pools
    # spinning on the same cores slow both down several times over.
    torch.set_num_threads(1)
    return LocalMiniLM()


def _aware(dt: datetime) -> datetime:
    return dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)


def register_run(
    *, dag_id: str, run_id: str, interval_start: datetime | None, interval_end: datetime | None,
    params: dict[str, Any], cfg: FlywheelConfig | None = None,
) -> dict[str, Any]:
    """Ensure the schema, record the run and resolve its plan (window, thresholds, choices)."""
    cfg = cfg or load_config()
    profile = cfg.dags[dag_id]
    if interval_start is None or interval_end is None or interval_start == interval_end:
        # A manual run has no data interval: look back over the configured number of days.
        interval_end = _aware(interval_end or datetime.now(timezone.utc))
        interval_start = interval_end - timedelta(days=int(params.get("lookback_days") or cfg.on_demand_lookback_days))
    candidates = list(params.get("candidates") or profile.candidates)
    strategies = list(params.get("strategies") or profile.strategies)
    unknown = [c for c in candidates if c not in cfg.candidates]
    if unknown:
        raise ValueError(f"unknown candidates {unknown}; configured: {sorted(cfg.candidates)}")
    plan = {
        "run_key": f"{dag_id}/{run_id}",
        "dag_id": dag_id,
        "interval_start": _aware(interval_start).isoformat(),
        "interval_end": _aware(interval_end).isoformat(),
        "workloads": list(params.get("workloads") or []),
        "candidates": candidates,
        "strategies": strategies,
        "eval_size": int(params.get("eval_size") or profile.eval_size),
        "threshold": float(params["threshold"]) if params.get("threshold") is not None else cfg.threshold,
        "slice_floor": float(params["slice_floor"]) if params.get("slice_floor") is not None else cfg.slice_floor,
        "min_records": int(params.get("min_records") or cfg.min_records),
        "training_profile": params.get("training_profile") or os.environ.get("FLYWHEEL_TRAINING_PROFILE") or None,
    }
    # A wrong eval size from the form fails the run here, with the reason, not deep in curation.
    cfg.curation_settings(eval_size=plan["eval_size"])
    conn = get_conn()
    try:
        applied = store.migrate(conn)
        if applied:
            log.info("Applied migrations %s", applied)
        if cfg.logs.source == "postgres":
            from flywheel.adapters.postgres_logs import purge_raw

            purged = purge_raw(conn, cfg.logs.raw_retention_days)
            if purged:
                log.info("Deleted %d raw (unredacted) log records older than %d days (logs.raw_retention_days)",
                         purged, cfg.logs.raw_retention_days)
        store.execute(conn, "upsert_run", {
            "run_key": plan["run_key"], "dag_id": dag_id, "airflow_run_id": run_id,
            "interval_start": plan["interval_start"], "interval_end": plan["interval_end"], "params": plan,
        })
    finally:
        conn.close()
    return plan


def log_source(cfg: FlywheelConfig, conn):
    """The configured log source (``logs.source``): the flywheel's PostgreSQL or Elasticsearch."""
    if cfg.logs.source == "elasticsearch":
        from flywheel.adapters.elasticsearch import ElasticsearchLogSource

        es = cfg.logs.elasticsearch
        return ElasticsearchLogSource.from_connection(es.conn_id, es.index, page_size=es.page_size,
                                                      keep_alive=es.keep_alive)
    from flywheel.adapters.postgres_logs import PostgresLogSource

    return PostgresLogSource(conn)


def discover_workloads(plan: dict[str, Any], cfg: FlywheelConfig | None = None) -> list[dict[str, Any]]:
    from flywheel.discovery import decide_workloads

    cfg = cfg or load_config()
    conn = get_conn()
    try:
        source = log_source(cfg, conn)
        counts = source.count_by_workload(_dt(plan["interval_start"]), _dt(plan["interval_end"]))
        decisions = decide_workloads(counts, min_records=plan["min_records"], requested=plan["workloads"],
                                     usable=getattr(source, "counts_usable", True))
        store.execute_many(conn, "upsert_workload", ({"run_key": plan["run_key"], **d.to_dict()} for d in decisions))
    finally:
        conn.close()
    for d in decisions:
        if d.selected:
            log.info("workload %s: %d records in the window, selected", d.workload_id, d.n_records)
        else:
            log.warning("workload %s skipped: %s", d.workload_id, d.reason)
    return [{"run_key": plan["run_key"], "workload_id": d.workload_id, "n_records": d.n_records}
            for d in decisions if d.selected]


def _dt(value: Any) -> datetime:
    return _aware(datetime.fromisoformat(value) if isinstance(value, str) else value)


# Below this many records one process is faster than starting a pool of Presidio workers.
POOL_MIN_RECORDS = 20_000


def curate_workload(plan: dict[str, Any], target: dict[str, Any], cfg: FlywheelConfig | None = None) -> dict[str, Any]:
    """Scan, validate, dedup, split and redact one workload from the log source, in bounded
    memory; store counts, quarantine and the dataset (see flywheel.curation)."""
    from flywheel.curation import curate_stream

    cfg = cfg or load_config()
    settings = cfg.curation_settings(eval_size=plan["eval_size"])
    run_key, workload_id = plan["run_key"], target["workload_id"]
    start, end = _dt(plan["interval_start"]), _dt(plan["interval_end"])
    workers = cfg.curation_workers if int(target.get("n_records") or 0) >= POOL_MIN_RECORDS else 1
    conn = get_conn()
    # Quarantined records are written as they come, on a connection of their own: a commit on the
    # reading connection would close its server-side cursor in the middle of the scan.
    writer_conn = get_conn()
    quarantine: list[dict[str, Any]] = []
    try:
        source = log_source(cfg, conn)

        def on_rejection(q) -> None:
            quarantine.append({"run_key": run_key, "stage": "curate", "source_ref": q.source_id,
                               "workload_id": workload_id, "reason": q.reason, "field": q.field, "detail": q.detail})
            if len(quarantine) >= 1000:
                store.execute_many(writer_conn, "insert_quarantine", quarantine)
                quarantine.clear()

        with object_storage.JsonlWriter("datasets", run_key=run_key) as writer:
            result = curate_stream(source.scan(workload_id, start, end), source.fetch, settings,
                                   on_rejection=on_rejection, on_row=writer.write, max_bytes=cfg.max_record_bytes,
                                   workers=workers)
        store.execute_many(writer_conn, "insert_quarantine", quarantine)
        if result.usable and result.n_accepted < plan["min_records"]:
            # Discovery's count may include records curation rejects or merges (Elasticsearch
            # counts documents): the minimum holds for usable records.
            result.usable = False
            result.reason = (f"only {result.n_accepted} usable records after validation and dedup, fewer than "
                             f"min_records={plan['min_records']}")
        uri = writer.uri if result.usable else None
        table = result.class_table()
        dataset = {
            "run_key": run_key, "workload_id": workload_id, "kind": result.kind,
            "n_in": result.n_in, "n_accepted": result.n_accepted, "n_quarantined": result.n_quarantined,
            "n_duplicates": result.n_duplicates, "n_eval": result.n_eval, "n_train": result.n_train,
            "n_val": result.n_val, "n_over_limit": result.n_over_limit, "usable": result.usable,
            "reason": result.reason, "pii": dict(result.pii), "dataset_hash": result.dataset_hash, "uri": uri,
            "class_counts": {split: {k: int(v) for k, v in table[split].items() if v} for split in table.columns},
            "warnings": result.warnings,
        }
        store.execute(conn, "upsert_dataset", dataset)
        store.execute(conn, "record_curation_error", {"run_key": run_key, "workload_id": workload_id, "error": None})
    finally:
        conn.close()
        writer_conn.close()
    log.info("curated %s: in=%d accepted=%d quarantined=%d duplicates=%d -> eval=%d train=%d val=%d "
             "(over the limit: %d); pii=%s\n%s", workload_id, result.n_in, result.n_accepted, result.n_quarantined,
             result.n_duplicates, result.n_eval, result.n_train, result.n_val, result.n_over_limit,
             dict(result.pii), table.to_string() if len(table) else "(no classes)")
    for warning in result.warnings:
        log.warning("workload %s: %s", workload_id, warning)
    if not result.usable:
        log.warning("workload %s has no usable dataset: %s", workload_id, result.reason)
    return dataset


def prepare_experiment(spec_dict: dict[str, Any], cfg: FlywheelConfig | None = None) -> dict[str, Any]:
    from flywheel.adapters.jobs import build_job
    from flywheel.experiments import ExperimentSpec

    cfg = cfg or load_config()
    spec = ExperimentSpec.from_dict(spec_dict)
    candidate = cfg.candidates[spec.candidate]
    conn = get_conn()
    try:
        store.execute(conn, "upsert_experiment", {**spec.key, "status": "planned",
                                                  "backend": gpu_backend(), "gpus": candidate.gpus})
        from flywheel.adapters.anchors import anchor_rows

        job = build_job(spec, cfg, embedder() if spec.strategy == "icl" else None,
                        anchors=anchor_rows(conn, spec.workload_id))
        # An identical job (same model, inputs, hyper-parameters) that an earlier run completed is
        # copied into this run's folder; the GPU job then finds its outputs complete and skips.
        job["reused_from"] = object_storage.reuse_output(job["fingerprint"], _output_uri(job))
        if job["reused_from"]:
            log.info("%s: outputs of an identical job reused from %s", spec.label, job["reused_from"])
        return job
    except Exception as exc:
        store.execute(conn, "finish_experiment", {**spec.key, "status": "failed", "gpu_seconds": None,
                                                  "output_uri": None, "metrics": {}, "error": f"prepare: {exc}"})
        raise
    finally:
        conn.close()


def gpu_backend() -> str:
    return os.environ.get("FLYWHEEL_GPU_BACKEND", "local")


def _experiment_key(job: dict[str, Any]) -> dict[str, str]:
    return {k: job["experiment"][k] for k in ("run_key", "workload_id", "candidate", "strategy")}


def record_curation_failure(run_key: str, workload_id: str, error: str) -> None:
    """One workload's curation failed for good: record why; the other workloads go on."""
    conn = get_conn()
    try:
        store.execute(conn, "record_curation_error",
                      {"run_key": run_key, "workload_id": workload_id, "error": f"curate: {error}"[:2000]})
    finally:
        conn.close()


def record_job_started(job: dict[str, Any]) -> None:
    """The experiment's GPU job starts (each try): the experiment is `running`."""
    conn = get_conn()
    try:
        store.execute(conn, "start_experiment", _experiment_key(job))
    finally:
        conn.close()


def record_job_failure(job: dict[str, Any], error: str, stage: str = "gpu_job") -> None:
    """The experiment's GPU job (any backend) or its evaluation failed for good: mark only this
    experiment failed, with the stage and the error."""
    conn = get_conn()
    try:
        store.execute(conn, "finish_experiment", {
            **_experiment_key(job), "status": "failed", "gpu_seconds": None, "output_uri": _output_uri(job),
            "metrics": {}, "error": f"{stage}: {error}"[:2000],
        })
    finally:
        conn.close()


# --- task callbacks: the failure of one workload or experiment is recorded as its own -------------
# They run in the task's process, or in Airflow's own processes when the task process died (killed,
# out of memory): the mapped argument is then read back from the upstream task's XCom.

def _error(context) -> str:
    exc = context.get("exception")
    return f"{type(exc).__name__}: {exc}" if isinstance(exc, BaseException) else str(exc or "unknown error")


def _mapped_arg(context, name: str, upstream: str) -> Any:
    task, ti = context["task"], context["ti"]
    value = getattr(task, name, None)
    if not isinstance(value, dict):
        value = (getattr(task, "op_kwargs", None) or {}).get(name)
    if isinstance(value, dict):
        return value
    return ti.xcom_pull(task_ids=upstream, map_indexes=ti.map_index)


def _job_of(context) -> dict[str, Any]:
    group = context["task"].task_id.rsplit(".", 1)[0]
    return _mapped_arg(context, "job", f"{group}.prepare_experiment")


def on_curation_failure(context) -> None:
    ti = context["ti"]
    plan = _mapped_arg(context, "plan", "register_run")
    target = (getattr(context["task"], "op_kwargs", None) or {}).get("target")
    if not isinstance(target, dict):
        target = (ti.xcom_pull(task_ids="discover_workloads") or [])[ti.map_index]
    record_curation_failure(plan["run_key"], target["workload_id"], _error(context))


def on_job_start(context) -> None:
    record_job_started(_job_of(context))


def on_job_failure(context) -> None:
    record_job_failure(_job_of(context), _error(context), stage="gpu_job")


def on_evaluation_failure(context) -> None:
    record_job_failure(_job_of(context), _error(context), stage="evaluate")


def run_failures(run_key: str) -> list[dict[str, Any]]:
    conn = get_conn()
    try:
        return store.fetch_all(conn, "run_failures", {"run_key": run_key})
    finally:
        conn.close()


def _output_uri(job: dict[str, Any]) -> str:
    from flywheel.adapters.jobs import output_dir

    return output_dir(job)


JUDGE_CONN_ID = os.environ.get("FLYWHEEL_JUDGE_CONN_ID", "flywheel_judge")


def judge_endpoint():
    """The judge endpoint of the ``flywheel_judge`` connection, or None when there is none."""
    from airflow.sdk import BaseHook
    from airflow.sdk.exceptions import AirflowNotFoundException

    from flywheel.adapters.judge_client import endpoint_from_connection

    try:
        conn = BaseHook.get_connection(JUDGE_CONN_ID)
    except AirflowNotFoundException:
        return None
    return endpoint_from_connection(host=conn.host, port=conn.port, schema=conn.schema, password=conn.password,
                                    extra=conn.extra_dejson, conn_id=JUDGE_CONN_ID)


def make_scorer(cfg: FlywheelConfig, conn, kind: str):
    """The judge when the connection exists (replies cached in PostgreSQL), else the deterministic
    scorers: one or the other for a whole experiment, never a mix."""
    from flywheel.evaluation import Scorer

    endpoint = judge_endpoint()
    if endpoint is None:
        # Only chat answers are compared by embeddings; tool calls and JSON fields need no model.
        return Scorer(embedder=embedder() if kind == "chat" else None)
    from flywheel.adapters.judge_client import JudgeClient
    from flywheel.adapters.postgres_eval import PostgresJudgeCache

    client = JudgeClient(endpoint, cfg.judge, PostgresJudgeCache(conn))
    return Scorer(judge=client.run, judge_model=endpoint.model, prompt_version=cfg.judge.prompt_version,
                  judge_price_in=cfg.judge.price_per_1m_input_tokens,
                  judge_price_out=cfg.judge.price_per_1m_output_tokens)


def evaluate_experiment(job: dict[str, Any], cfg: FlywheelConfig | None = None) -> dict[str, Any]:
    """Score and price the job's predictions; the experiment succeeds only once it is scored."""
    from flywheel.adapters import postgres_eval
    from flywheel.adapters.jobs import evaluate_job_output, load_metrics
    from flywheel.experiments import ExperimentSpec

    cfg = cfg or load_config()
    spec = ExperimentSpec.from_dict(job["experiment"])
    metrics = load_metrics(_output_uri(job))  # through the store: the job may have run on another machine
    gpus = int(job.get("gpus") or 1)
    seconds = float(metrics.get("train_seconds") or 0) + float(metrics.get("generate_seconds") or 0)
    training = float(metrics.get("train_seconds") or 0) * gpus if spec.strategy == "lora" else None
    conn = get_conn()
    try:
        window = postgres_eval.run_window(conn, spec.run_key, spec.workload_id)
        span = None
        if window and window.get("n_records") is not None:
            days = (window["interval_end"] - window["interval_start"]).total_seconds() / 86400
            span = (int(window["n_records"]), days)
        scorer = make_scorer(cfg, conn, spec.kind)
        evaluation, traffic = evaluate_job_output(spec, job, cfg, scorer, gold=postgres_eval.gold_index(conn, spec.workload_id),
                                                  window=span, training_gpu_seconds=training)
        if traffic is not None:
            postgres_eval.save_traffic(conn, spec.run_key, traffic)
        postgres_eval.save_evaluation(conn, spec.key, evaluation)
        from flywheel.adapters.anchors import score_anchor_predictions

        n_anchor = score_anchor_predictions(conn, spec, job, cfg, scorer)
        if n_anchor:
            log.info("%s: scored on %d anchor items (regression guard)", spec.label, n_anchor)
        store.execute(conn, "finish_experiment", {
            **spec.key, "status": "succeeded", "gpu_seconds": round(seconds * gpus, 3),
            "output_uri": _output_uri(job), "metrics": metrics, "error": None,
        })
    finally:
        conn.close()
    if job.get("fingerprint"):
        object_storage.remember_output(job["fingerprint"], _output_uri(job))  # later runs may reuse it
    r = evaluation.result
    log.info("%s: %s (%s) = %s (n=%d of %d, 95%% CI %s-%s; worst slice %s %s; vs gold %s on %d), "
             "%.5f $/1k requests vs production %s, saving/month %s", spec.label, r.method, scorer.label, r.score, r.n,
             r.n_items, r.ci_low, r.ci_high, r.worst_slice, r.worst_slice_score, r.score_vs_gold, r.n_gold,
             r.cost_per_1k, r.cost.prod_cost_per_1k, r.cost.monthly_savings)
    if r.unscored:
        log.warning("%s: items the judge could not score: %s", spec.label, r.unscored)
    return {**spec.key, "method": r.method, "scorer": r.scorer, "n": r.n, "score": r.score, "ci_low": r.ci_low,
            "ci_high": r.ci_high, "worst_slice": r.worst_slice, "worst_slice_score": r.worst_slice_score,
            "cost_per_1k": r.cost_per_1k, "monthly_savings": r.cost.monthly_savings}


def leaderboard_rows(run_key: str) -> list[dict[str, Any]]:
    conn = get_conn()
    try:
        return store.fetch_all(conn, "leaderboard", {"run_key": run_key})
    finally:
        conn.close()


def publish_leaderboard(plan: dict[str, Any], cfg: FlywheelConfig | None = None) -> list[dict[str, Any]]:
    """Log the leaderboard and return one review request per candidate that passes the review gate
    and the regression guard, each with its evidence.

    The run ends here: each request becomes its own run of the review DAG (task request_review).
    """
    from flywheel.adapters.review_evidence import review_evidence
    from flywheel.deploy import reviewable
    from flywheel.report import gate, render_failures, render_leaderboard, review_request
    from flywheel.review import ReviewRequest

    cfg = cfg or load_config()
    rows = leaderboard_rows(plan["run_key"])
    floor = plan.get("slice_floor")
    log.info("\n%s", render_leaderboard(rows, cfg, run_key=plan["run_key"], threshold=plan["threshold"],
                                        slice_floor=floor))
    failures = run_failures(plan["run_key"])
    if failures:
        log.warning("\n%s", render_failures(failures))
    rows = guard_rows(plan, rows, cfg)
    candidates = reviewable(rows, lambda r: gate(r, cfg, plan["threshold"], floor) is None)
    if not candidates:
        log.info("No candidate passed the review gate (threshold %.2f): nothing to review.", plan["threshold"])
    requests = []
    conn = get_conn()
    try:
        for c in candidates:
            request = review_request(c, plan["run_key"], cfg, plan["threshold"], floor)
            request["body"] += "\n\n" + review_evidence(conn, plan["run_key"], c)
            requests.append(ReviewRequest.from_winner(c, run_key=plan["run_key"], threshold=plan["threshold"],
                                                      slice_floor=floor, **request))
    finally:
        conn.close()
    for r in requests:
        log.info("review requested: %s (review run %s)", r.label, r.review_run_id)
    return [r.model_dump(mode="json") for r in requests]


def guard_rows(plan: dict[str, Any], rows: list[dict[str, Any]], cfg: FlywheelConfig) -> list[dict[str, Any]]:
    """The regression guard over every candidate at or above the threshold: a blocked one is logged
    with the reason, recorded (guard_verdicts) and never reaches review."""
    from flywheel.adapters.anchors import guard_candidate
    from flywheel.report import gate

    kept = []
    conn = get_conn()
    try:
        for r in rows:
            if gate(r, cfg, plan["threshold"], plan.get("slice_floor")) is not None:
                kept.append(r)  # held back by the review gate already, with its own reason
                continue
            verdict = guard_candidate(conn, r, cfg.guard, run_key=plan["run_key"])
            label = f"{r['workload_id']} · {r['candidate']} · {r['strategy']}"
            if verdict.passed:
                log.info("regression guard: %s passes: %s", label, verdict.reason)
                kept.append(r)
            else:
                log.warning("regression guard: %s is %s; it will not be reviewed", label, verdict.reason)
    finally:
        conn.close()
    return kept


def open_review(conf: dict[str, Any] | None) -> dict[str, Any]:
    """The review run's request, validated before a human is asked anything."""
    from flywheel.review import ReviewRequest

    request = ReviewRequest.from_conf(conf)
    log.info("review of %s from run %s: score %.3f (threshold %.2f)", request.label, request.run_key,
             request.score, request.threshold)
    return request.model_dump(mode="json")


def deploy_decision(request: dict[str, Any], decision: dict[str, Any],
                    cfg: FlywheelConfig | None = None) -> dict[str, Any]:
    """Record the review of one request (the review run's conf); an approved candidate becomes a
    new version loaded into the serving endpoint.

    When the endpoint is down or refuses the model the version is recorded as failed, the active
    version keeps serving, and this task fails (its retry tries the same version again).
    """
    from flywheel.adapters import deployments, serving
    from flywheel.review import ReviewRequest

    cfg = cfg or load_config()
    req = ReviewRequest.from_conf({"request": request})
    winner = {**req.key, "output_uri": req.output_uri}
    conn = get_conn()
    try:
        from flywheel.deploy import evidence_hash

        outcome = store.record_decision(conn, run_key=req.run_key, winner=winner, decision=decision,
                                        evidence_hash=evidence_hash(req.subject, req.body))
        log.info("review of %s: %s by %s", req.label, outcome["decision"], outcome["reviewer"])
        if outcome["decision"] != "approved":
            return outcome
        model_path = cfg.candidates[req.candidate].model_path
        dataset = store.fetch_all(conn, "dataset_of_run", {"run_key": req.run_key, "workload_id": req.workload_id})
        deploy = deployments.DeployRequest(
            run_key=req.run_key, workload_id=req.workload_id, candidate=req.candidate,
            strategy=req.strategy, model_path=model_path,
            adapter_uri=f"{req.output_uri}/adapter" if req.strategy == "lora" and req.output_uri else None,
            template_version=deployments.template_version(model_path),
            dataset_hash=dataset[0]["dataset_hash"] if dataset else None,
            scores={k: getattr(req, k) for k in ("score", "ci_low", "ci_high", "n", "method", "cost_per_1k")},
            approved_by=outcome["reviewer"],
        )
        dep = deployments.deploy(conn, serving.client(), deploy)
        if dataset and dataset[0]["uri"]:
            from flywheel.adapters.anchors import freeze_anchor_set

            eval_rows = [r for r in object_storage.read_jsonl(dataset[0]["uri"]) if r["split"] == "eval"]
            frozen = freeze_anchor_set(conn, workload_id=dep.workload_id, run_key=req.run_key,
                                       candidate=req.candidate, strategy=req.strategy,
                                       eval_rows=eval_rows, added_by=outcome["reviewer"])
            if frozen:
                log.info("first deployment of %s: its %d eval items are now the anchor set", dep.workload_id, frozen)
    finally:
        conn.close()
    log.info("%s v%d is %s: served as %r by %s", dep.workload_id, dep.version, dep.status, dep.served_model,
             dep.endpoint)
    return {**outcome, "version": dep.version, "status": dep.status, "served_model": dep.served_model}
