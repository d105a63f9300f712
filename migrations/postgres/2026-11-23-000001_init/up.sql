-- Players: the token is stored only as its SHA-256.
CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    nickname TEXT NOT NULL,
    token_hash TEXT NOT NULL UNIQUE,
    created_at TIMESTAMP NOT NULL,
    last_seen_at TIMESTAMP NOT NULL
);

-- One row per user per UTC day seen (retention).
CREATE TABLE user_days (
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    day TEXT NOT NULL,
    PRIMARY KEY (user_id, day)
);

-- Game content: one row per (kind, subject_id).
CREATE TABLE content (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    fields TEXT NOT NULL,
    context TEXT NOT NULL,
    model TEXT,
    reason TEXT,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (kind, subject_id)
);

-- Durable work queue. A row lives while its work is queued or running.
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    target_id BIGINT NOT NULL,
    priority INTEGER NOT NULL DEFAULT 0,
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    run_after TIMESTAMP NOT NULL,
    locked_by TEXT,
    locked_at TIMESTAMP,
    last_error TEXT,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL
);
CREATE INDEX jobs_claim ON jobs (status, priority DESC, run_after, id);
CREATE UNIQUE INDEX jobs_target ON jobs (kind, target_id);

-- Singleton (id = 1): upstream LLM settings and the persisted circuit breaker.
CREATE TABLE llm_config (
    id BIGINT PRIMARY KEY,
    provider TEXT NOT NULL,
    model TEXT NOT NULL,
    base_url TEXT NOT NULL,
    api_key TEXT,
    last_error TEXT,
    circuit_state TEXT NOT NULL,
    circuit_failures TEXT NOT NULL,
    circuit_opened_at TIMESTAMP,
    circuit_resets_at TIMESTAMP,
    retry_after_until TIMESTAMP,
    updated_at TIMESTAMP NOT NULL
);
