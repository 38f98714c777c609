-- Evaluation that can be trusted (issue 9): scores against production and gold, per slice, with
-- the judge's reliability and cost, and the cost/savings figures; the judge's result cache; gold
-- references; human labels and the judge's calibration against them.

-- Per item: the score against production and against gold; an item the judge could not score
-- has no score and says why (it is counted, never averaged in as 0).
ALTER TABLE evaluations ALTER COLUMN score DROP NOT NULL;
ALTER TABLE evaluations
    ADD COLUMN score_vs_prod    DOUBLE PRECISION CHECK (score_vs_prod >= 0 AND score_vs_prod <= 1),
    ADD COLUMN score_vs_gold    DOUBLE PRECISION CHECK (score_vs_gold >= 0 AND score_vs_gold <= 1),
    ADD COLUMN reference_source TEXT NOT NULL DEFAULT 'production' CHECK (reference_source IN ('production', 'gold')),
    ADD COLUMN failure          TEXT,
    ADD CONSTRAINT evaluations_scored_or_failed CHECK (score IS NOT NULL OR failure IS NOT NULL);

-- Per experiment (one row of the leaderboard).
ALTER TABLE experiment_scores
    ADD COLUMN scorer            TEXT NOT NULL DEFAULT 'deterministic' CHECK (scorer IN ('deterministic', 'judge')),
    ADD COLUMN n_items           INTEGER,
    ADD COLUMN score_vs_prod     DOUBLE PRECISION,
    ADD COLUMN score_vs_gold     DOUBLE PRECISION,
    ADD COLUMN n_gold            INTEGER NOT NULL DEFAULT 0,
    ADD COLUMN unscored          JSONB NOT NULL DEFAULT '{}',   -- reason -> items
    ADD COLUMN worst_slice       TEXT,
    ADD COLUMN worst_slice_score DOUBLE PRECISION,
    ADD COLUMN worst_slice_n     INTEGER,
    ADD COLUMN tool_metrics      JSONB,                         -- name_accuracy, exact_match, arg_accuracy, n
    ADD COLUMN judge             JSONB,                         -- model, prompt_version, calls, cached, failures, agreement, tokens, cost_usd
    ADD COLUMN avg_prompt_tokens     DOUBLE PRECISION,
    ADD COLUMN avg_completion_tokens DOUBLE PRECISION,
    ADD COLUMN tokens_source     TEXT,                          -- measured | tokenizer
    ADD COLUMN prod_cost_per_1k  DOUBLE PRECISION,              -- USD per 1,000 requests on the production model
    ADD COLUMN saving_per_1k     DOUBLE PRECISION,
    ADD COLUMN monthly_savings   DOUBLE PRECISION,              -- USD per 30 days at the window's traffic
    ADD COLUMN training_gpu_seconds DOUBLE PRECISION,
    ADD COLUMN training_cost     DOUBLE PRECISION,              -- USD
    ADD COLUMN payback_days      DOUBLE PRECISION,
    ADD COLUMN cost_note         TEXT NOT NULL DEFAULT '';

-- Per experiment and slice (the stratification class of the eval items).
CREATE TABLE experiment_slices (
    run_key      TEXT NOT NULL,
    workload_id  TEXT NOT NULL,
    candidate    TEXT NOT NULL,
    strategy     TEXT NOT NULL,
    slice        TEXT NOT NULL,
    n            INTEGER NOT NULL,
    score        DOUBLE PRECISION CHECK (score >= 0 AND score <= 1),
    ci_low       DOUBLE PRECISION,
    ci_high      DOUBLE PRECISION,
    PRIMARY KEY (run_key, workload_id, candidate, strategy, slice),
    FOREIGN KEY (run_key, workload_id, candidate, strategy) REFERENCES experiments ON DELETE CASCADE
);

-- Per run and workload: production usage and traffic, the base of every saving.
CREATE TABLE workload_traffic (
    run_key               TEXT NOT NULL REFERENCES runs ON DELETE CASCADE,
    workload_id           TEXT NOT NULL,
    requests_in_window    INTEGER NOT NULL,
    window_days           DOUBLE PRECISION NOT NULL,
    requests_per_month    DOUBLE PRECISION NOT NULL,
    n_records             INTEGER NOT NULL,
    n_with_usage          INTEGER NOT NULL,
    avg_prompt_tokens     DOUBLE PRECISION,
    avg_completion_tokens DOUBLE PRECISION,
    prod_cost_per_1k      DOUBLE PRECISION,
    note                  TEXT NOT NULL DEFAULT '',
    PRIMARY KEY (run_key, workload_id)
);

-- The judge's replies, so that a rerun of the same comparison costs nothing. The key is the judge
-- model, the prompt version, the comparison (item_hash: request, reference, candidate) and the
-- order the two answers were shown in. The raw reply is kept and parsed on read.
CREATE TABLE judge_cache (
    judge_model       TEXT NOT NULL,
    prompt_version    TEXT NOT NULL,
    item_hash         TEXT NOT NULL,
    position          TEXT NOT NULL,
    reply             TEXT NOT NULL,
    prompt_tokens     INTEGER NOT NULL DEFAULT 0,
    completion_tokens INTEGER NOT NULL DEFAULT 0,
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (judge_model, prompt_version, item_hash, position)
);

-- Human-corrected reference answers (gold items), imported from a file or entered during review.
-- One per workload and request; a newer correction replaces the older one (updated_at, author).
CREATE TABLE gold_references (
    workload_id   TEXT NOT NULL,
    request_hash  TEXT NOT NULL,
    item_id       TEXT,
    reference     JSONB NOT NULL,
    author        TEXT NOT NULL,
    source        TEXT NOT NULL CHECK (source IN ('import', 'review')),
    note          TEXT NOT NULL DEFAULT '',
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (workload_id, request_hash)
);
CREATE INDEX gold_references_item ON gold_references (workload_id, item_id);

-- Human grades of (request, reference, candidate) comparisons: what the judge is calibrated on.
CREATE TABLE human_labels (
    item_hash   TEXT NOT NULL,           -- flywheel.judge.JudgeItem.item_hash()
    labeler     TEXT NOT NULL,
    score       DOUBLE PRECISION NOT NULL CHECK (score >= 0 AND score <= 1),
    source      TEXT NOT NULL CHECK (source IN ('import', 'review')),
    item        JSONB NOT NULL,          -- the JudgeItem (request, reference, candidate, what)
    workload_id TEXT,
    created_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (item_hash, labeler)
);

-- Agreement of a judge (model + prompt version) with the human labels, each time it is measured.
CREATE TABLE judge_calibration (
    id              BIGSERIAL PRIMARY KEY,
    judge_model     TEXT NOT NULL,
    prompt_version  TEXT NOT NULL,
    n               INTEGER NOT NULL,
    kappa           DOUBLE PRECISION,
    spearman        DOUBLE PRECISION,
    pass_mark       DOUBLE PRECISION NOT NULL,
    n_unscored      INTEGER NOT NULL DEFAULT 0,
    note            TEXT NOT NULL DEFAULT '',
    computed_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX judge_calibration_latest ON judge_calibration (judge_model, prompt_version, computed_at DESC);
