-- Flywheel schema, version 1. Applied once by flywheel.store.migrate (recorded in schema_migrations).
-- Every table that a task writes is keyed so that a retried task upserts instead of duplicating.

-- The embedded log store: what the production apps logged, raw and untouched. In production this
-- is an Elasticsearch index; the routing fields are extracted best-effort at import.
CREATE TABLE production_logs (
    id           BIGSERIAL PRIMARY KEY,
    source       TEXT        NOT NULL,          -- import batch (file name)
    line_no      INTEGER     NOT NULL,
    ts           TIMESTAMPTZ,                    -- NULL when the record has no valid timestamp
    workload_id  TEXT,                           -- NULL when the record has no valid workload id
    raw          TEXT        NOT NULL,           -- the line exactly as received
    ingested_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (source, line_no)
);
CREATE INDEX production_logs_workload_ts ON production_logs (workload_id, ts);

CREATE TABLE runs (
    run_key         TEXT PRIMARY KEY,            -- "<dag_id>/<airflow run_id>"
    dag_id          TEXT        NOT NULL,
    airflow_run_id  TEXT        NOT NULL,
    interval_start  TIMESTAMPTZ NOT NULL,
    interval_end    TIMESTAMPTZ NOT NULL,
    params          JSONB       NOT NULL,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

CREATE TABLE workloads (
    run_key      TEXT    NOT NULL REFERENCES runs ON DELETE CASCADE,
    workload_id  TEXT    NOT NULL,
    n_records    INTEGER NOT NULL,
    selected     BOOLEAN NOT NULL,
    reason       TEXT,                           -- why it was skipped
    PRIMARY KEY (run_key, workload_id)
);

CREATE TABLE datasets (
    run_key        TEXT    NOT NULL REFERENCES runs ON DELETE CASCADE,
    workload_id    TEXT    NOT NULL,
    kind           TEXT,
    n_in           INTEGER NOT NULL,
    n_accepted     INTEGER NOT NULL,
    n_quarantined  INTEGER NOT NULL,
    n_duplicates   INTEGER NOT NULL,
    n_eval         INTEGER NOT NULL,
    n_train        INTEGER NOT NULL,
    n_val          INTEGER NOT NULL,
    usable         BOOLEAN NOT NULL,
    reason         TEXT,
    pii            JSONB   NOT NULL DEFAULT '{}',
    dataset_hash   TEXT,
    uri            TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, workload_id),
    CHECK (n_in = n_accepted + n_quarantined + n_duplicates),
    CHECK (n_accepted = n_eval + n_train + n_val OR NOT usable)
);

-- Records that could not be used, with the reason. stage = ingest (no valid routing fields) or
-- curate (malformed request/response). Nothing is dropped silently.
CREATE TABLE quarantine (
    id           BIGSERIAL PRIMARY KEY,
    run_key      TEXT,                          -- NULL for the ingest stage
    stage        TEXT NOT NULL,
    source_ref   TEXT NOT NULL,                 -- "<source>:<line_no>"
    workload_id  TEXT,
    reason       TEXT NOT NULL,
    field        TEXT,
    detail       TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX quarantine_once ON quarantine (COALESCE(run_key, ''), stage, source_ref);

CREATE TABLE experiments (
    run_key      TEXT NOT NULL REFERENCES runs ON DELETE CASCADE,
    workload_id  TEXT NOT NULL,
    candidate    TEXT NOT NULL,
    strategy     TEXT NOT NULL,
    status       TEXT NOT NULL CHECK (status IN ('planned', 'running', 'succeeded', 'failed')),
    backend      TEXT,
    gpus         INTEGER,
    gpu_seconds  DOUBLE PRECISION,
    output_uri   TEXT,
    metrics      JSONB NOT NULL DEFAULT '{}',
    error        TEXT,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (run_key, workload_id, candidate, strategy)
);

CREATE TABLE evaluations (
    run_key      TEXT NOT NULL,
    workload_id  TEXT NOT NULL,
    candidate    TEXT NOT NULL,
    strategy     TEXT NOT NULL,
    item_id      TEXT NOT NULL,
    slice        TEXT NOT NULL,
    method       TEXT NOT NULL,
    score        DOUBLE PRECISION NOT NULL CHECK (score >= 0 AND score <= 1),
    reference    TEXT NOT NULL,
    prediction   TEXT NOT NULL,
    detail       JSONB NOT NULL DEFAULT '{}',
    PRIMARY KEY (run_key, workload_id, candidate, strategy, item_id),
    FOREIGN KEY (run_key, workload_id, candidate, strategy) REFERENCES experiments ON DELETE CASCADE
);

CREATE TABLE experiment_scores (
    run_key        TEXT NOT NULL,
    workload_id    TEXT NOT NULL,
    candidate      TEXT NOT NULL,
    strategy       TEXT NOT NULL,
    method         TEXT NOT NULL,
    n              INTEGER NOT NULL,
    score          DOUBLE PRECISION CHECK (score >= 0 AND score <= 1),
    ci_low         DOUBLE PRECISION,
    ci_high        DOUBLE PRECISION,
    avg_tokens     DOUBLE PRECISION NOT NULL,
    cost_per_1k    DOUBLE PRECISION NOT NULL,   -- USD per 1,000 requests at the candidate's price
    PRIMARY KEY (run_key, workload_id, candidate, strategy),
    FOREIGN KEY (run_key, workload_id, candidate, strategy) REFERENCES experiments ON DELETE CASCADE
);

CREATE TABLE reviews (
    run_key      TEXT NOT NULL,
    workload_id  TEXT NOT NULL,
    candidate    TEXT NOT NULL,
    strategy     TEXT NOT NULL,
    decision     TEXT NOT NULL CHECK (decision IN ('approved', 'rejected')),
    reviewer     TEXT NOT NULL,
    comment      TEXT NOT NULL DEFAULT '',
    decided_at   TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (run_key, workload_id, candidate, strategy)
);

-- Versioned releases: never overwritten; a newer version supersedes the active one and a rollback
-- is a new version that points back (rollback_of) at the one it restores.
CREATE TABLE deployments (
    id           BIGSERIAL PRIMARY KEY,
    workload_id  TEXT    NOT NULL,
    version      INTEGER NOT NULL,
    candidate    TEXT    NOT NULL,
    strategy     TEXT    NOT NULL,
    model_path   TEXT    NOT NULL,
    adapter_uri  TEXT,
    run_key      TEXT    NOT NULL,
    status       TEXT    NOT NULL CHECK (status IN ('active', 'superseded', 'rolled_back')),
    rollback_of  INTEGER,
    approved_by  TEXT    NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    UNIQUE (workload_id, version),
    UNIQUE (run_key, workload_id, candidate, strategy)
);
CREATE UNIQUE INDEX deployments_one_active ON deployments (workload_id) WHERE status = 'active';
