-- Generation runs (WRITE / REWRITE / DESCRIBE). `run_id` is the public id; `dedup_key`
-- hashes (project, action, model, input). Usage in tokens, money in micro-dollars.
CREATE TABLE runs (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL UNIQUE,
    project_id TEXT NOT NULL,
    action TEXT NOT NULL,
    input TEXT NOT NULL,
    model TEXT NOT NULL,
    dedup_key TEXT NOT NULL,
    status TEXT NOT NULL,
    pinned BOOLEAN NOT NULL DEFAULT FALSE,
    -- WebSocket sessions waiting on the run, over every process.
    waiters INTEGER NOT NULL DEFAULT 0,
    attempts INTEGER NOT NULL DEFAULT 0,
    text TEXT NOT NULL DEFAULT '',
    input_tokens BIGINT NOT NULL DEFAULT 0,
    output_tokens BIGINT NOT NULL DEFAULT 0,
    cache_read_tokens BIGINT NOT NULL DEFAULT 0,
    cache_write_tokens BIGINT NOT NULL DEFAULT 0,
    cost_micros BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    error_code TEXT,
    error TEXT,
    created_at TIMESTAMP NOT NULL,
    started_at TIMESTAMP,
    finished_at TIMESTAMP,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX runs_project ON runs (project_id, id);
CREATE INDEX runs_status ON runs (status, id);
CREATE INDEX runs_dedup ON runs (dedup_key, status);
-- At most one queued or running run per dedup key: concurrent identical requests join it.
CREATE UNIQUE INDEX runs_active_dedup ON runs (dedup_key) WHERE status IN ('queued', 'running');

-- One row per charged attempt.
CREATE TABLE cost_events (
    id BIGSERIAL PRIMARY KEY,
    run_id TEXT NOT NULL,
    project_id TEXT NOT NULL,
    model TEXT NOT NULL,
    attempt INTEGER NOT NULL,
    input_tokens BIGINT NOT NULL,
    output_tokens BIGINT NOT NULL,
    cache_read_tokens BIGINT NOT NULL,
    cache_write_tokens BIGINT NOT NULL,
    cost_micros BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX cost_events_project ON cost_events (project_id, id);

-- Per-project spending limits; `spent + reserved <= limit` always.
CREATE TABLE budgets (
    project_id TEXT PRIMARY KEY,
    limit_micros BIGINT NOT NULL,
    spent_micros BIGINT NOT NULL,
    reserved_micros BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    CHECK (limit_micros >= 0 AND spent_micros >= 0 AND reserved_micros >= 0)
);

-- Prices per million tokens, in micro-dollars (1 USD = 1 000 000).
CREATE TABLE prices (
    model TEXT PRIMARY KEY,
    input_micros BIGINT NOT NULL,
    output_micros BIGINT NOT NULL,
    cache_read_micros BIGINT NOT NULL,
    cache_write_micros BIGINT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
-- The default models' list prices (USD per million tokens: input, output, cache read, cache write).
INSERT INTO prices (model, input_micros, output_micros, cache_read_micros, cache_write_micros, updated_at) VALUES
    ('claude-haiku-4-5-20251001', 1000000, 5000000, 100000, 1250000, '2026-11-23 00:00:00'),
    ('gpt-5-mini', 250000, 2000000, 25000, 250000, '2026-11-23 00:00:00');
