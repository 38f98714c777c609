-- Review decisions, append-only (issue 10). Every answer to a review request is one row: who,
-- when, what, the comment, and a hash of the evidence the reviewer was shown. A timeout is a row of
-- its own (no reviewer); an attempt the review refused (a second answer, a user who is not an
-- assigned reviewer) is recorded as 'refused' with the reason. Nothing is updated or deleted.
CREATE TABLE review_decisions (
    id             BIGSERIAL PRIMARY KEY,
    run_key        TEXT        NOT NULL,
    workload_id    TEXT        NOT NULL,
    candidate      TEXT        NOT NULL,
    strategy       TEXT        NOT NULL,
    outcome        TEXT        NOT NULL CHECK (outcome IN ('approved', 'rejected', 'timeout', 'refused')),
    reviewer       TEXT,                         -- NULL for a timeout
    comment        TEXT        NOT NULL DEFAULT '',
    evidence_hash  TEXT,                         -- sha256 of the subject and body the reviewer saw
    detail         TEXT,                         -- why an attempt was refused
    decided_at     TIMESTAMPTZ NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    CHECK ((outcome = 'timeout') = (reviewer IS NULL))
);
-- One decision per review request (a retried task records it once); refused attempts are many.
CREATE UNIQUE INDEX review_decisions_once ON review_decisions (run_key, workload_id, candidate, strategy)
    WHERE outcome <> 'refused';
CREATE TRIGGER review_decisions_append_only BEFORE UPDATE OR DELETE ON review_decisions
    FOR EACH ROW EXECUTE FUNCTION flywheel_append_only();

-- What the old table held carries over; the name `reviews` stays readable as the decisions.
INSERT INTO review_decisions (run_key, workload_id, candidate, strategy, outcome, reviewer, comment, decided_at)
SELECT run_key, workload_id, candidate, strategy, decision, reviewer, comment, decided_at FROM reviews;
DROP TABLE reviews;
CREATE VIEW reviews AS
SELECT run_key, workload_id, candidate, strategy,
       CASE outcome WHEN 'approved' THEN 'approved' ELSE 'rejected' END AS decision,
       COALESCE(reviewer, 'timeout') AS reviewer, comment, decided_at, outcome, evidence_hash
FROM review_decisions WHERE outcome <> 'refused';
