-- Serving, routing and rollback (issue 10).
--
-- deployments: a version is registered as 'pending', becomes 'active' once the serving endpoint
-- has loaded it, or 'failed' (with the error) when the endpoint is down or refuses it. A rollback
-- is a new version that restores an earlier one's model (rollback_of), so the (run, workload,
-- candidate, strategy) key is unique only among versions that are not rollbacks.
ALTER TABLE deployments DROP CONSTRAINT deployments_status_check;
ALTER TABLE deployments ADD CONSTRAINT deployments_status_check
    CHECK (status IN ('pending', 'active', 'superseded', 'rolled_back', 'failed'));
ALTER TABLE deployments DROP CONSTRAINT deployments_run_key_workload_id_candidate_strategy_key;
CREATE UNIQUE INDEX deployments_once_per_experiment ON deployments (run_key, workload_id, candidate, strategy)
    WHERE rollback_of IS NULL;
ALTER TABLE deployments
    ADD COLUMN base_model       TEXT,            -- the candidate (base model) name the endpoint serves
    ADD COLUMN template_version TEXT,            -- prompt format / chat template the adapter was trained with
    ADD COLUMN dataset_hash     TEXT,
    ADD COLUMN scores           JSONB NOT NULL DEFAULT '{}',
    ADD COLUMN served_model     TEXT,            -- the name it is served under (vLLM lora_name)
    ADD COLUMN serving_path     TEXT,            -- the staged, immutable copy of the adapter the endpoint loads
    ADD COLUMN endpoint         TEXT,
    ADD COLUMN error            TEXT,
    ADD COLUMN activated_at     TIMESTAMPTZ;

-- The routing record: which model serves each workload now, and where. Applications (and the
-- capture client) read it; only a deployment or a rollback writes it, in the same transaction.
CREATE TABLE routing (
    workload_id  TEXT PRIMARY KEY,
    endpoint     TEXT        NOT NULL,
    model        TEXT        NOT NULL,           -- the "model" of an OpenAI request for this workload
    base_model   TEXT        NOT NULL,
    version      INTEGER     NOT NULL,
    updated_by   TEXT        NOT NULL,
    updated_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every deploy and rollback attempt, whatever its outcome (succeeded, failed, refused): who, why,
-- when. Append-only: the database refuses to change or delete a row.
CREATE TABLE deployment_events (
    id              BIGSERIAL PRIMARY KEY,
    workload_id     TEXT        NOT NULL,
    action          TEXT        NOT NULL CHECK (action IN ('deploy', 'rollback')),
    outcome         TEXT        NOT NULL CHECK (outcome IN ('succeeded', 'failed', 'refused')),
    version         INTEGER,                     -- the version this attempt created (none when refused)
    from_version    INTEGER,                     -- the version active before
    to_version      INTEGER,                     -- a rollback's target
    actor           TEXT        NOT NULL,
    reason          TEXT        NOT NULL DEFAULT '',
    error           TEXT,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX deployment_events_workload ON deployment_events (workload_id, id);

CREATE FUNCTION flywheel_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION '% is append-only: % is not allowed', TG_TABLE_NAME, TG_OP;
END $$;
CREATE TRIGGER deployment_events_append_only BEFORE UPDATE OR DELETE ON deployment_events
    FOR EACH ROW EXECUTE FUNCTION flywheel_append_only();
