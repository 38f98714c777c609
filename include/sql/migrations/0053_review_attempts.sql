-- Answers to a review that Airflow refused (issue 10): a user who is not an assigned reviewer
-- (HTTP 403), a second answer to a review already answered (HTTP 409). Recorded by the flywheel
-- plugin's middleware in the api-server, whatever the client (the UI, the CLI, the REST API).
-- Append-only.
CREATE TABLE review_attempts (
    id             BIGSERIAL PRIMARY KEY,
    dag_id         TEXT        NOT NULL,
    dag_run_id     TEXT        NOT NULL,
    task_id        TEXT        NOT NULL,
    map_index      INTEGER     NOT NULL,
    subject        TEXT,                        -- the review's subject, as Airflow holds it
    username       TEXT        NOT NULL,
    http_status    INTEGER     NOT NULL,
    detail         TEXT        NOT NULL,
    attempted_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE TRIGGER review_attempts_append_only BEFORE UPDATE OR DELETE ON review_attempts
    FOR EACH ROW EXECUTE FUNCTION flywheel_append_only();
