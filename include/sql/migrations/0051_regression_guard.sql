-- The regression guard (issue 10): a frozen anchor eval set per workload, every candidate's scores
-- on it, and the guard's verdict per candidate.

-- Fixed at a workload's first deployment (that run's eval items), extended only by review. Rows
-- are the curated records (redacted request, production response, slice); never changed or deleted.
CREATE TABLE anchor_items (
    workload_id    TEXT        NOT NULL,
    item_id        TEXT        NOT NULL,
    slice          TEXT        NOT NULL,
    record         JSONB       NOT NULL,
    source         TEXT        NOT NULL CHECK (source IN ('first_deployment', 'review')),
    source_run_key TEXT        NOT NULL,
    added_by       TEXT        NOT NULL,
    added_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workload_id, item_id)
);
CREATE TRIGGER anchor_items_append_only BEFORE UPDATE OR DELETE ON anchor_items
    FOR EACH ROW EXECUTE FUNCTION flywheel_append_only();

-- An experiment's score per anchor item (the same scorer as its eval items).
CREATE TABLE anchor_scores (
    run_key      TEXT NOT NULL,
    workload_id  TEXT NOT NULL,
    candidate    TEXT NOT NULL,
    strategy     TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    slice        TEXT NOT NULL,
    score        DOUBLE PRECISION NOT NULL CHECK (score >= 0 AND score <= 1),
    prediction   TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_key, workload_id, candidate, strategy, item_id)
);

CREATE TABLE guard_verdicts (
    run_key          TEXT    NOT NULL,
    workload_id      TEXT    NOT NULL,
    candidate        TEXT    NOT NULL,
    strategy         TEXT    NOT NULL,
    passed           BOOLEAN NOT NULL,
    reason           TEXT    NOT NULL,
    checks           JSONB   NOT NULL DEFAULT '[]',
    active_version   INTEGER,
    baseline_version INTEGER,
    budgets          JSONB   NOT NULL DEFAULT '{}',
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, workload_id, candidate, strategy)
);
