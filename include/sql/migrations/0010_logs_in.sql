-- Issue 6, "logs in": imported files identified by content, records stored once and redacted,
-- datasets that count records beyond the size limit and keep their class table.

-- One row per imported file content (sha256 of the decompressed bytes): importing the very same
-- content again is recognised and stores nothing; a corrected file is new content.
CREATE TABLE log_imports (
    id              BIGSERIAL PRIMARY KEY,
    content_sha256  TEXT        NOT NULL UNIQUE,
    name            TEXT        NOT NULL,          -- the file name given (for people, not identity)
    lines           INTEGER     NOT NULL,
    blank           INTEGER     NOT NULL,
    stored          INTEGER     NOT NULL,
    already_stored  INTEGER     NOT NULL,
    quarantined     INTEGER     NOT NULL,
    reasons         JSONB       NOT NULL DEFAULT '{}',
    pii             JSONB       NOT NULL DEFAULT '{}',   -- counts per entity type, never values
    redacted        BOOLEAN     NOT NULL,
    imported_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK (lines = blank + stored + already_stored + quarantined)
);

-- production_logs now holds each record once, as stored by `flywheel logs import` or the capture
-- client: `raw` is the canonical JSON of the (redacted) record. line_no is NULL for captured records.
ALTER TABLE production_logs
    ALTER COLUMN line_no DROP NOT NULL,
    ADD COLUMN client_id   TEXT,
    ADD COLUMN record_hash TEXT,
    ADD COLUMN request_key TEXT,
    ADD COLUMN redacted    BOOLEAN NOT NULL DEFAULT false,
    ADD COLUMN import_id   BIGINT REFERENCES log_imports ON DELETE SET NULL;
CREATE UNIQUE INDEX production_logs_record_hash ON production_logs (record_hash);
-- Raw (unredacted) records are deleted after logs.raw_retention_days: find them by age.
CREATE INDEX production_logs_raw_age ON production_logs (ingested_at) WHERE NOT redacted;

ALTER TABLE datasets
    ADD COLUMN n_over_limit   INTEGER NOT NULL DEFAULT 0,   -- unique records beyond max_records
    ADD COLUMN class_counts   JSONB   NOT NULL DEFAULT '{}', -- {split: {class: n}}
    ADD COLUMN warnings       JSONB   NOT NULL DEFAULT '[]';
DO $$
DECLARE c record;
BEGIN
    FOR c IN SELECT conname FROM pg_constraint
             WHERE conrelid = 'datasets'::regclass AND contype = 'c'
               AND pg_get_constraintdef(oid) LIKE '%n_eval%'
    LOOP
        EXECUTE format('ALTER TABLE datasets DROP CONSTRAINT %I', c.conname);
    END LOOP;
END $$;
ALTER TABLE datasets ADD CONSTRAINT datasets_splits_add_up
    CHECK (n_accepted = n_eval + n_train + n_val + n_over_limit OR NOT usable);
