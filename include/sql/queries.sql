-- Named queries of the flywheel. Each starts with "-- name: <name>"; parameters are psycopg2
-- named placeholders, never string formatting.

-- name: count_by_workload
-- Usable records per workload: distinct normalized requests (what survives dedup); rows stored
-- before request keys existed count one each.
SELECT workload_id, count(DISTINCT request_key) + count(*) FILTER (WHERE request_key IS NULL) AS n
FROM production_logs
WHERE workload_id IS NOT NULL AND ts >= %(start)s AND ts < %(end)s
GROUP BY workload_id
ORDER BY workload_id;

-- name: scan_workload_logs
-- Pass 1 of curation: every record of a workload in the window, oldest first (server-side cursor).
SELECT id, CASE WHEN line_no IS NULL THEN source || '#' || id ELSE source || ':' || line_no END AS source_ref, raw, redacted
FROM production_logs
WHERE workload_id = %(workload_id)s AND ts >= %(start)s AND ts < %(end)s
ORDER BY ts, id;

-- name: fetch_logs_by_id
-- Pass 3 of curation: the kept records again, by row id.
SELECT id, CASE WHEN line_no IS NULL THEN source || '#' || id ELSE source || ':' || line_no END AS source_ref, raw, redacted
FROM production_logs
WHERE id = ANY(%(ids)s);

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
                      n_eval, n_train, n_val, n_over_limit, usable, reason, pii, dataset_hash, uri,
                      class_counts, warnings)
VALUES (%(run_key)s, %(workload_id)s, %(kind)s, %(n_in)s, %(n_accepted)s, %(n_quarantined)s,
        %(n_duplicates)s, %(n_eval)s, %(n_train)s, %(n_val)s, %(n_over_limit)s, %(usable)s, %(reason)s,
        %(pii)s, %(dataset_hash)s, %(uri)s, %(class_counts)s, %(warnings)s)
ON CONFLICT (run_key, workload_id) DO UPDATE
SET kind = EXCLUDED.kind, n_in = EXCLUDED.n_in, n_accepted = EXCLUDED.n_accepted,
    n_quarantined = EXCLUDED.n_quarantined, n_duplicates = EXCLUDED.n_duplicates,
    n_eval = EXCLUDED.n_eval, n_train = EXCLUDED.n_train, n_val = EXCLUDED.n_val,
    n_over_limit = EXCLUDED.n_over_limit, usable = EXCLUDED.usable, reason = EXCLUDED.reason,
    pii = EXCLUDED.pii, dataset_hash = EXCLUDED.dataset_hash, uri = EXCLUDED.uri,
    class_counts = EXCLUDED.class_counts, warnings = EXCLUDED.warnings, created_at = now();

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
                         score_vs_prod, score_vs_gold, reference_source, reference, prediction, failure,
                         detail)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(item_id)s, %(slice)s,
        %(method)s, %(score)s, %(score_vs_prod)s, %(score_vs_gold)s, %(reference_source)s,
        %(reference)s, %(prediction)s, %(failure)s, %(detail)s)
ON CONFLICT (run_key, workload_id, candidate, strategy, item_id) DO UPDATE
SET slice = EXCLUDED.slice, method = EXCLUDED.method, score = EXCLUDED.score,
    score_vs_prod = EXCLUDED.score_vs_prod, score_vs_gold = EXCLUDED.score_vs_gold,
    reference_source = EXCLUDED.reference_source, reference = EXCLUDED.reference,
    prediction = EXCLUDED.prediction, failure = EXCLUDED.failure, detail = EXCLUDED.detail;

-- name: upsert_experiment_score
INSERT INTO experiment_scores (run_key, workload_id, candidate, strategy, method, scorer, n, n_items,
                               score, ci_low, ci_high, score_vs_prod, score_vs_gold, n_gold, unscored,
                               worst_slice, worst_slice_score, worst_slice_n, tool_metrics, judge,
                               avg_tokens, avg_prompt_tokens, avg_completion_tokens, tokens_source,
                               cost_per_1k, prod_cost_per_1k, saving_per_1k, monthly_savings,
                               training_gpu_seconds, training_cost, payback_days, cost_note)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(method)s, %(scorer)s, %(n)s,
        %(n_items)s, %(score)s, %(ci_low)s, %(ci_high)s, %(score_vs_prod)s, %(score_vs_gold)s,
        %(n_gold)s, %(unscored)s, %(worst_slice)s, %(worst_slice_score)s, %(worst_slice_n)s,
        %(tool_metrics)s, %(judge)s, %(avg_tokens)s, %(avg_prompt_tokens)s, %(avg_completion_tokens)s,
        %(tokens_source)s, %(cost_per_1k)s, %(prod_cost_per_1k)s, %(saving_per_1k)s,
        %(monthly_savings)s, %(training_gpu_seconds)s, %(training_cost)s, %(payback_days)s, %(note)s)
ON CONFLICT (run_key, workload_id, candidate, strategy) DO UPDATE
SET method = EXCLUDED.method, scorer = EXCLUDED.scorer, n = EXCLUDED.n, n_items = EXCLUDED.n_items,
    score = EXCLUDED.score, ci_low = EXCLUDED.ci_low, ci_high = EXCLUDED.ci_high,
    score_vs_prod = EXCLUDED.score_vs_prod, score_vs_gold = EXCLUDED.score_vs_gold,
    n_gold = EXCLUDED.n_gold, unscored = EXCLUDED.unscored, worst_slice = EXCLUDED.worst_slice,
    worst_slice_score = EXCLUDED.worst_slice_score, worst_slice_n = EXCLUDED.worst_slice_n,
    tool_metrics = EXCLUDED.tool_metrics, judge = EXCLUDED.judge, avg_tokens = EXCLUDED.avg_tokens,
    avg_prompt_tokens = EXCLUDED.avg_prompt_tokens, avg_completion_tokens = EXCLUDED.avg_completion_tokens,
    tokens_source = EXCLUDED.tokens_source, cost_per_1k = EXCLUDED.cost_per_1k,
    prod_cost_per_1k = EXCLUDED.prod_cost_per_1k, saving_per_1k = EXCLUDED.saving_per_1k,
    monthly_savings = EXCLUDED.monthly_savings, training_gpu_seconds = EXCLUDED.training_gpu_seconds,
    training_cost = EXCLUDED.training_cost, payback_days = EXCLUDED.payback_days,
    cost_note = EXCLUDED.cost_note;

-- name: leaderboard
-- One row per experiment of a run: scores (mean, CI, vs production, vs gold, worst slice), tool
-- metrics, the judge's figures and calibration, cost and savings. Issue 10's review evidence and
-- UI page read this (and experiment_slices_for_run / evaluation_items).
SELECT e.workload_id, e.candidate, e.strategy, e.status, s.method, s.scorer, s.n, s.n_items, s.score,
       s.ci_low, s.ci_high, s.score_vs_prod, s.score_vs_gold, s.n_gold, s.unscored, s.worst_slice,
       s.worst_slice_score, s.worst_slice_n, s.tool_metrics, s.judge, s.avg_prompt_tokens,
       s.avg_completion_tokens, s.tokens_source, s.cost_per_1k, s.prod_cost_per_1k, s.saving_per_1k,
       s.monthly_savings, s.training_gpu_seconds, s.training_cost, s.payback_days, s.cost_note,
       t.requests_per_month, d.n_train, d.n_eval, e.gpu_seconds, e.output_uri, e.error,
       c.kappa AS judge_kappa, c.spearman AS judge_spearman, c.n AS judge_calibration_n
FROM experiments e
JOIN datasets d USING (run_key, workload_id)
LEFT JOIN experiment_scores s USING (run_key, workload_id, candidate, strategy)
LEFT JOIN workload_traffic t USING (run_key, workload_id)
LEFT JOIN LATERAL (
    SELECT kappa, spearman, n FROM judge_calibration jc
    WHERE jc.judge_model = s.judge ->> 'model' AND jc.prompt_version = s.judge ->> 'prompt_version'
    ORDER BY computed_at DESC LIMIT 1
) c ON true
WHERE e.run_key = %(run_key)s
ORDER BY e.workload_id, s.score DESC NULLS LAST, e.candidate, e.strategy;

-- name: latest_run_key
SELECT run_key, params FROM runs WHERE (%(dag_id)s::text IS NULL OR dag_id = %(dag_id)s)
ORDER BY created_at DESC LIMIT 1;

-- name: run_params
SELECT params FROM runs WHERE run_key = %(run_key)s;

-- ---------------------------------------------------------------- logs in (issue 6)

-- name: insert_log
-- A record already stored (same content hash) is not stored again.
INSERT INTO production_logs (source, line_no, ts, workload_id, client_id, raw, record_hash, request_key,
                             redacted, import_id)
VALUES (%(source)s, %(line_no)s, %(ts)s, %(workload_id)s, %(client_id)s, %(raw)s, %(record_hash)s,
        %(request_key)s, %(redacted)s, %(import_id)s)
ON CONFLICT DO NOTHING
RETURNING id;

-- name: find_import
SELECT id, name, imported_at, stored, lines FROM log_imports WHERE content_sha256 = %(content_sha256)s;

-- name: insert_import
INSERT INTO log_imports (content_sha256, name, lines, blank, stored, already_stored, quarantined, reasons,
                         pii, redacted)
VALUES (%(content_sha256)s, %(name)s, 0, 0, 0, 0, 0, '{}', '{}', %(redacted)s)
RETURNING id;

-- name: finish_import
UPDATE log_imports
SET lines = %(lines)s, blank = %(blank)s, stored = %(stored)s, already_stored = %(already_stored)s,
    quarantined = %(quarantined)s, reasons = %(reasons)s, pii = %(pii)s
WHERE id = %(id)s;

-- name: purge_raw_logs
-- Retention of raw (unredacted) records: logs.raw_retention_days.
DELETE FROM production_logs WHERE NOT redacted AND ingested_at < %(before)s;

-- name: count_logs_by_source
SELECT count(*) AS n FROM production_logs WHERE source = %(source)s;

-- ---- evaluation (issue 9): slices, traffic, judge cache, gold references, calibration ----------

-- name: upsert_experiment_slice
INSERT INTO experiment_slices (run_key, workload_id, candidate, strategy, slice, n, score, ci_low, ci_high)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(slice)s, %(n)s, %(mean)s,
        %(ci_low)s, %(ci_high)s)
ON CONFLICT (run_key, workload_id, candidate, strategy, slice) DO UPDATE
SET n = EXCLUDED.n, score = EXCLUDED.score, ci_low = EXCLUDED.ci_low, ci_high = EXCLUDED.ci_high;

-- name: delete_experiment_slices
DELETE FROM experiment_slices
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s;

-- name: experiment_slices_for_run
SELECT workload_id, candidate, strategy, slice, n, score, ci_low, ci_high
FROM experiment_slices WHERE run_key = %(run_key)s
ORDER BY workload_id, candidate, strategy, score NULLS FIRST, slice;

-- name: evaluation_items
-- The per-item evidence of one experiment (worst first): what the reviewer reads.
SELECT item_id, slice, method, score, score_vs_prod, score_vs_gold, reference_source, reference,
       prediction, failure, detail
FROM evaluations
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s
ORDER BY score NULLS FIRST, item_id;

-- name: upsert_workload_traffic
INSERT INTO workload_traffic (run_key, workload_id, requests_in_window, window_days, requests_per_month,
                              n_records, n_with_usage, avg_prompt_tokens, avg_completion_tokens,
                              prod_cost_per_1k, note)
VALUES (%(run_key)s, %(workload_id)s, %(requests_in_window)s, %(window_days)s, %(requests_per_month)s,
        %(n_records)s, %(n_with_usage)s, %(avg_prompt_tokens)s, %(avg_completion_tokens)s,
        %(prod_cost_per_1k)s, %(note)s)
ON CONFLICT (run_key, workload_id) DO UPDATE
SET requests_in_window = EXCLUDED.requests_in_window, window_days = EXCLUDED.window_days,
    requests_per_month = EXCLUDED.requests_per_month, n_records = EXCLUDED.n_records,
    n_with_usage = EXCLUDED.n_with_usage, avg_prompt_tokens = EXCLUDED.avg_prompt_tokens,
    avg_completion_tokens = EXCLUDED.avg_completion_tokens, prod_cost_per_1k = EXCLUDED.prod_cost_per_1k,
    note = EXCLUDED.note;

-- name: run_window
-- Traffic in the window: every record curation read (datasets.n_in, duplicates and malformed ones
-- included: each was a production call); discovery's n_records counts distinct usable requests.
SELECT r.interval_start, r.interval_end, COALESCE(d.n_in, w.n_records) AS n_records
FROM runs r
LEFT JOIN workloads w ON w.run_key = r.run_key AND w.workload_id = %(workload_id)s
LEFT JOIN datasets d ON d.run_key = r.run_key AND d.workload_id = %(workload_id)s
WHERE r.run_key = %(run_key)s;

-- name: judge_cache_get
SELECT item_hash, position, reply, prompt_tokens, completion_tokens
FROM judge_cache
WHERE judge_model = %(judge_model)s AND prompt_version = %(prompt_version)s
  AND item_hash IN (SELECT jsonb_array_elements_text(%(item_hashes)s::jsonb));

-- name: judge_cache_put
INSERT INTO judge_cache (judge_model, prompt_version, item_hash, position, reply, prompt_tokens,
                         completion_tokens)
VALUES (%(judge_model)s, %(prompt_version)s, %(item_hash)s, %(position)s, %(reply)s, %(prompt_tokens)s,
        %(completion_tokens)s)
ON CONFLICT (judge_model, prompt_version, item_hash, position) DO NOTHING;

-- name: upsert_gold_reference
INSERT INTO gold_references (workload_id, request_hash, item_id, reference, author, source, note)
VALUES (%(workload_id)s, %(request_hash)s, %(item_id)s, %(reference)s, %(author)s, %(source)s, %(note)s)
ON CONFLICT (workload_id, request_hash) DO UPDATE
SET item_id = COALESCE(EXCLUDED.item_id, gold_references.item_id), reference = EXCLUDED.reference,
    author = EXCLUDED.author, source = EXCLUDED.source, note = EXCLUDED.note, updated_at = now();

-- name: gold_references_for_workload
SELECT workload_id, request_hash, item_id, reference, author, source, note
FROM gold_references WHERE workload_id = %(workload_id)s;

-- name: upsert_human_label
INSERT INTO human_labels (item_hash, labeler, score, source, item, workload_id)
VALUES (%(item_hash)s, %(labeler)s, %(score)s, %(source)s, %(item)s, %(workload_id)s)
ON CONFLICT (item_hash, labeler) DO UPDATE
SET score = EXCLUDED.score, source = EXCLUDED.source, item = EXCLUDED.item,
    workload_id = EXCLUDED.workload_id, created_at = now();

-- name: human_labels
SELECT item_hash, labeler, score, source, item, workload_id FROM human_labels
WHERE (%(workload_id)s::text IS NULL OR workload_id = %(workload_id)s)
ORDER BY item_hash, labeler;

-- name: insert_judge_calibration
INSERT INTO judge_calibration (judge_model, prompt_version, n, kappa, spearman, pass_mark, n_unscored, note)
VALUES (%(judge_model)s, %(prompt_version)s, %(n)s, %(kappa)s, %(spearman)s, %(pass_mark)s,
        %(n_unscored)s, %(note)s)
RETURNING id, computed_at;

-- name: latest_judge_calibration
SELECT judge_model, prompt_version, n, kappa, spearman, pass_mark, n_unscored, note, computed_at
FROM judge_calibration
WHERE judge_model = %(judge_model)s AND prompt_version = %(prompt_version)s
ORDER BY computed_at DESC LIMIT 1;

-- ---- issue 10: serving, routing, rollback ------------------------------------------------------

-- name: deployment_history
SELECT workload_id, version, status, candidate, strategy, model_path, adapter_uri, served_model,
       serving_path, rollback_of, run_key, approved_by, error, created_at, base_model, template_version,
       dataset_hash, scores, endpoint, activated_at
FROM deployments
WHERE (%(workload_id)s::text IS NULL OR workload_id = %(workload_id)s)
ORDER BY workload_id, version;

-- name: first_deployment_of_experiment
SELECT version, status FROM deployments
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s AND rollback_of IS NULL;

-- name: register_deployment
INSERT INTO deployments (workload_id, version, candidate, strategy, model_path, adapter_uri, run_key,
                         status, approved_by, base_model, template_version, dataset_hash, scores,
                         rollback_of, serving_path)
SELECT %(workload_id)s, COALESCE(max(version), 0) + 1, %(candidate)s, %(strategy)s, %(model_path)s,
       %(adapter_uri)s, %(run_key)s, 'pending', %(approved_by)s, %(base_model)s, %(template_version)s,
       %(dataset_hash)s, %(scores)s, %(rollback_of)s, %(serving_path)s
FROM deployments WHERE workload_id = %(workload_id)s
RETURNING version;

-- name: retry_deployment
UPDATE deployments SET status = 'pending', error = NULL, approved_by = %(approved_by)s
WHERE workload_id = %(workload_id)s AND version = %(version)s AND status = 'failed';

-- name: set_serving_path
UPDATE deployments SET serving_path = %(serving_path)s
WHERE workload_id = %(workload_id)s AND version = %(version)s;

-- name: fail_deployment
UPDATE deployments SET status = 'failed', error = %(error)s, endpoint = %(endpoint)s
WHERE workload_id = %(workload_id)s AND version = %(version)s AND status = 'pending';

-- name: retire_active
UPDATE deployments SET status = %(status)s
WHERE workload_id = %(workload_id)s AND status = 'active';

-- name: activate_deployment
UPDATE deployments SET status = 'active', served_model = %(served_model)s, endpoint = %(endpoint)s,
       activated_at = now(), error = NULL
WHERE workload_id = %(workload_id)s AND version = %(version)s AND status = 'pending';

-- name: upsert_route
INSERT INTO routing (workload_id, endpoint, model, base_model, version, updated_by, updated_at)
VALUES (%(workload_id)s, %(endpoint)s, %(model)s, %(base_model)s, %(version)s, %(updated_by)s, now())
ON CONFLICT (workload_id) DO UPDATE
SET endpoint = EXCLUDED.endpoint, model = EXCLUDED.model, base_model = EXCLUDED.base_model,
    version = EXCLUDED.version, updated_by = EXCLUDED.updated_by, updated_at = now();

-- name: routes
SELECT workload_id, endpoint, model, base_model, version, updated_by, updated_at FROM routing
WHERE (%(workload_id)s::text IS NULL OR workload_id = %(workload_id)s)
ORDER BY workload_id;

-- name: insert_deployment_event
INSERT INTO deployment_events (workload_id, action, outcome, version, from_version, to_version, actor,
                               reason, error)
VALUES (%(workload_id)s, %(action)s, %(outcome)s, %(version)s, %(from_version)s, %(to_version)s,
        %(actor)s, %(reason)s, %(error)s);

-- name: deployment_events
SELECT id, workload_id, action, outcome, version, from_version, to_version, actor, reason, error, created_at
FROM deployment_events
WHERE (%(workload_id)s::text IS NULL OR workload_id = %(workload_id)s)
ORDER BY id;

-- name: dataset_of_run
SELECT dataset_hash, n_in, n_accepted, n_quarantined, n_duplicates, n_eval, n_train, n_val, pii, uri
FROM datasets WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s;

-- name: anchor_items
SELECT item_id, slice, record, source, source_run_key, added_by, added_at FROM anchor_items
WHERE workload_id = %(workload_id)s ORDER BY added_at, item_id;

-- name: insert_anchor_item
INSERT INTO anchor_items (workload_id, item_id, slice, record, source, source_run_key, added_by)
VALUES (%(workload_id)s, %(item_id)s, %(slice)s, %(record)s, %(source)s, %(source_run_key)s, %(added_by)s)
ON CONFLICT (workload_id, item_id) DO NOTHING;

-- name: upsert_anchor_score
INSERT INTO anchor_scores (run_key, workload_id, candidate, strategy, item_id, slice, score, prediction)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(item_id)s, %(slice)s, %(score)s,
        %(prediction)s)
ON CONFLICT (run_key, workload_id, candidate, strategy, item_id) DO UPDATE
SET slice = EXCLUDED.slice, score = EXCLUDED.score, prediction = EXCLUDED.prediction;

-- name: anchor_scores_of_experiment
SELECT item_id, slice, score, prediction FROM anchor_scores
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s;

-- name: eval_items_of_experiment
SELECT item_id, slice, score, prediction FROM evaluations
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s AND score IS NOT NULL;

-- name: upsert_guard_verdict
INSERT INTO guard_verdicts (run_key, workload_id, candidate, strategy, passed, reason, checks,
                            active_version, baseline_version, budgets)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(passed)s, %(reason)s, %(checks)s,
        %(active_version)s, %(baseline_version)s, %(budgets)s)
ON CONFLICT (run_key, workload_id, candidate, strategy) DO UPDATE
SET passed = EXCLUDED.passed, reason = EXCLUDED.reason, checks = EXCLUDED.checks,
    active_version = EXCLUDED.active_version, baseline_version = EXCLUDED.baseline_version,
    budgets = EXCLUDED.budgets, created_at = now();

-- name: guard_verdicts_of_run
SELECT workload_id, candidate, strategy, passed, reason, checks, active_version, baseline_version, budgets
FROM guard_verdicts WHERE run_key = %(run_key)s ORDER BY workload_id, candidate, strategy;

-- name: insert_review_decision
INSERT INTO review_decisions (run_key, workload_id, candidate, strategy, outcome, reviewer, comment,
                              evidence_hash, detail, decided_at)
VALUES (%(run_key)s, %(workload_id)s, %(candidate)s, %(strategy)s, %(outcome)s, %(reviewer)s, %(comment)s,
        %(evidence_hash)s, %(detail)s, %(decided_at)s)
ON CONFLICT (run_key, workload_id, candidate, strategy) WHERE outcome <> 'refused' DO NOTHING
RETURNING id;

-- name: review_decisions
SELECT id, run_key, workload_id, candidate, strategy, outcome, reviewer, comment, evidence_hash, detail,
       decided_at, recorded_at
FROM review_decisions
WHERE (%(run_key)s::text IS NULL OR run_key = %(run_key)s)
  AND (%(workload_id)s::text IS NULL OR workload_id = %(workload_id)s)
ORDER BY id;

-- ---- issue 10: the flywheel page ----------------------------------------------------------------

-- name: latest_run_per_workload
SELECT DISTINCT ON (d.workload_id) d.workload_id, d.run_key, r.created_at, r.params, d.n_in, d.n_accepted,
       d.n_quarantined, d.n_duplicates, d.n_eval, d.n_train, d.n_val, d.pii, d.usable, d.reason
FROM datasets d JOIN runs r USING (run_key)
ORDER BY d.workload_id, r.created_at DESC;

-- name: score_history
SELECT r.run_key, r.created_at, max(s.score) AS best_score, count(*) AS n_experiments
FROM experiment_scores s JOIN runs r USING (run_key)
WHERE s.workload_id = %(workload_id)s AND s.score IS NOT NULL
GROUP BY r.run_key, r.created_at
ORDER BY r.created_at;

-- name: guard_verdicts_of_workload
SELECT g.run_key, r.created_at, g.candidate, g.strategy, g.passed, g.reason, g.checks, g.active_version,
       g.baseline_version, g.budgets
FROM guard_verdicts g JOIN runs r USING (run_key)
WHERE g.workload_id = %(workload_id)s
ORDER BY r.created_at, g.candidate, g.strategy;

-- name: experiment_metrics
SELECT status, metrics, gpu_seconds FROM experiments
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s;

-- name: insert_review_attempt
INSERT INTO review_attempts (dag_id, dag_run_id, task_id, map_index, subject, username, http_status, detail)
VALUES (%(dag_id)s, %(dag_run_id)s, %(task_id)s, %(map_index)s, %(subject)s, %(username)s, %(http_status)s,
        %(detail)s);

-- name: review_attempts
SELECT id, dag_id, dag_run_id, task_id, map_index, subject, username, http_status, detail, attempted_at
FROM review_attempts ORDER BY id;

-- ---------------------------------------------------------------- review DAG (issue 7)

-- name: review_of_experiment
-- The decision recorded for one reviewed experiment.
SELECT decision, reviewer, comment, decided_at FROM reviews
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s;

-- ---------------------------------------------------------------- failure isolation (issue 7)

-- name: record_curation_error
-- error NULL clears it (a retry that succeeded).
UPDATE workloads SET curation_error = %(error)s
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s;

-- name: start_experiment
UPDATE experiments SET status = 'running', started_at = now(), error = NULL, updated_at = now()
WHERE run_key = %(run_key)s AND workload_id = %(workload_id)s AND candidate = %(candidate)s
  AND strategy = %(strategy)s AND status <> 'succeeded';

-- name: run_failures
-- What failed in a run, with the reason: curations (stage curate) and experiments (prepare, GPU
-- job or evaluation; the stage is the prefix of the error).
SELECT workload_id, NULL AS candidate, NULL AS strategy, 'curate' AS stage, curation_error AS error
FROM workloads WHERE run_key = %(run_key)s AND curation_error IS NOT NULL
UNION ALL
SELECT workload_id, candidate, strategy, split_part(error, ':', 1) AS stage, error
FROM experiments WHERE run_key = %(run_key)s AND status = 'failed'
ORDER BY workload_id, candidate NULLS FIRST, strategy;
