-- Named queries of the flywheel. Each starts with "-- name: <name>"; parameters are psycopg2
-- named placeholders, never string formatting.

-- name: count_by_workload
SELECT workload_id, count(*) AS n
FROM production_logs
WHERE workload_id IS NOT NULL AND ts >= %(start)s AND ts < %(end)s
GROUP BY workload_id
ORDER BY workload_id;

-- name: fetch_workload_logs
SELECT source || ':' || line_no AS source_ref, raw
FROM production_logs
WHERE workload_id = %(workload_id)s AND ts >= %(start)s AND ts < %(end)s
ORDER BY ts, id;

-- name: upsert_run
INSERT INTO runs (run_key, dag_id, airflow_run_id, interval_start, interval_end, params)
VALUES (%(run_key)s, %(dag_id)s, %(airflow_run_id)s, %(interval_start)s, %(interval_end)s, %(params)s)
ON CONFLICT (run_key) DO UPDATE
SET interval_start = EXCLUDED.interval_start, interval_end = EXCLUDED.interval_end, params = EXCLUDED.params;

-- name: upsert_workload
INSERT INTO workloads (run_key, workload_id, n_records, selected, reason)
VALUES (%(run_key)s, %(workload_id)s, %(n_records)s, %(selected)s, %(reason)s)
ON CONFLICT (run_key, workload_id) DO UPDATE
SET n_records = EXCLUDED.n_records, selected = EXCLUDED.selected, reason = EXCLUDED.reason;

-- name: upsert_dataset
INSERT INTO datasets (run_key, workload_id, kind, n_in, n_accepted, n_quarantined, n_duplicates,
                      n_eval, n_train, n_val, usable, reason, pii, dataset_hash, uri)
VALUES (%(run_key)s, %(workload_id)s, %(kind)s, %(n_in)s, %(n_accepted)s, %(n_quarantined)s,
        %(n_duplicates)s, %(n_eval)s, %(n_train)s, %(n_val)s, %(usable)s, %(reason)s, %(pii)s,
        %(dataset_hash)s, %(uri)s)
ON CONFLICT (run_key, workload_id) DO UPDATE
SET kind = EXCLUDED.kind, n_in = EXCLUDED.n_in, n_accepted = EXCLUDED.n_accepted,
    n_quarantined = EXCLUDED.n_quarantined, n_duplicates = EXCLUDED.n_duplicates,
    n_eval = EXCLUDED.n_eval, n_train = EXCLUDED.n_train, n_val = EXCLUDED.n_val,
    usable = EXCLUDED.usable, reason = EXCLUDED.reason, pii = EXCLUDED.pii,
    dataset_hash = EXCLUDED.dataset_hash, uri = EXCLUDED.uri, created_at = now();

-- name: insert_quarantine
INSERT INTO quarantine (run_key, stage, source_ref, workload_id, reason, field, detail)
VALUES (%(run_key)s, %(stage)s, %(source_ref)s, %(workload_id)s, %(reason)s, %(field)s, %(detail)s)
ON CONFLICT (COALESCE(run_key, ''), stage, source_ref) DO UPDATE
SET reason = EXCLUDED.reason, field = EXCLUDED.field, detail = EXCLUDED.detail;

-- name: upsert_experiment
INSERT INTO experiments (run_key, workload_id, candidate, strategy, status, backend, gpus)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(status)s, %(backend)s, %(gpus)s)
ON CONFLICT (run_key, workload_id, candidate, strategy) DO UPDATE
SET status = EXCLUDED.status, backend = EXCLUDED.backend, gpus = EXCLUDED.gpus, error = NULL,
    updated_at = now();

-- name: finish_experiment
UPDATE experiments
SET status = %(status)s, gpu_seconds = %(gpu_seconds)s, output_uri = %(output_uri)s,
    metrics = %(metrics)s, error = %(error)s, updated_at = now()
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s
  AND candidate = %(candidate)s AND strategy = %(strategy)s;

-- name: upsert_evaluation
INSERT INTO evaluations (run_key, workload_id, candidate, strategy, item_id, slice, method, score,
                         reference, prediction, detail)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(item_id)s, %(slice)s,
        %(method)s, %(score)s, %(reference)s, %(prediction)s, %(detail)s)
ON CONFLICT (run_key, workload_id, candidate, strategy, item_id) DO UPDATE
SET slice = EXCLUDED.slice, method = EXCLUDED.method, score = EXCLUDED.score,
    reference = EXCLUDED.reference, prediction = EXCLUDED.prediction, detail = EXCLUDED.detail;

-- name: upsert_experiment_score
INSERT INTO experiment_scores (run_key, workload_id, candidate, strategy, method, n, score, ci_low,
                               ci_high, avg_tokens, cost_per_1k)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(method)s, %(n)s, %(score)s,
        %(ci_low)s, %(ci_high)s, %(avg_tokens)s, %(cost_per_1k)s)
ON CONFLICT (run_key, workload_id, candidate, strategy) DO UPDATE
SET method = EXCLUDED.method, n = EXCLUDED.n, score = EXCLUDED.score, ci_low = EXCLUDED.ci_low,
    ci_high = EXCLUDED.ci_high, avg_tokens = EXCLUDED.avg_tokens, cost_per_1k = EXCLUDED.cost_per_1k;

-- name: leaderboard
SELECT e.workload_id, e.candidate, e.strategy, e.status, s.method, s.n, s.score, s.ci_low,
       s.ci_high, s.cost_per_1k, d.n_train, d.n_eval, e.gpu_seconds, e.output_uri, e.error
FROM experiments e
JOIN datasets d USING (run_key, workload_id)
LEFT JOIN experiment_scores s USING (run_key, workload_id, candidate, strategy)
WHERE e.run_key = %(run_key)s
ORDER BY e.workload_id, s.score DESC NULLS LAST, e.candidate, e.strategy;

-- name: latest_run_key
SELECT run_key, params FROM runs WHERE (%(dag_id)s::text IS NULL OR dag_id = %(dag_id)s)
ORDER BY created_at DESC LIMIT 1;

-- name: run_params
SELECT params FROM runs WHERE run_key = %(run_key)s;

-- name: upsert_review
INSERT INTO reviews (run_key, workload_id, candidate, strategy, decision, reviewer, comment, decided_at)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(decision)s, %(reviewer)s,
        %(comment)s, %(decided_at)s)
ON CONFLICT (run_key, workload_id, candidate, strategy) DO UPDATE
SET decision = EXCLUDED.decision, reviewer = EXCLUDED.reviewer, comment = EXCLUDED.comment,
    decided_at = EXCLUDED.decided_at;

-- name: deployment_for_experiment
SELECT id, workload_id, version, candidate, strategy, status FROM deployments
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s;

-- name: supersede_active
UPDATE deployments SET status = 'superseded' WHERE workload_id = %(workload_id)s AND status = 'active';

-- name: insert_deployment
INSERT INTO deployments (workload_id, version, candidate, strategy, model_path, adapter_uri, run_key,
                         status, approved_by)
SELECT %(workload_id)s, COALESCE(max(version), 0) + 1, %(candidate)s, %(strategy)s, %(model_path)s,
       %(adapter_uri)s, %(run_key)s, 'active', %(approved_by)s
FROM deployments WHERE workload_id = %(workload_id)s
RETURNING id, workload_id, version, candidate, strategy, status;

-- name: insert_log
INSERT INTO production_logs (source, line_no, ts, workload_id, raw)
VALUES (%(source)s, %(line_no)s, %(ts)s, %(workload_id)s, %(raw)s)
ON CONFLICT (source, line_no) DO NOTHING;
