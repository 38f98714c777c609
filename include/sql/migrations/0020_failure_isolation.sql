-- Failure isolation (issue 7): a workload's failed curation and an experiment's start are recorded,
-- so the leaderboard can say what failed, where and why, while the rest of the run goes on.
ALTER TABLE workloads ADD COLUMN curation_error TEXT;   -- NULL: curated (or not selected)
ALTER TABLE experiments ADD COLUMN started_at TIMESTAMPTZ;  -- when its GPU job last started
