-- Usage limits (PROTOCOL §5): what each level (studio, player, project) spent and holds per
-- UTC day, in tokens and micro-dollars. A row is created on its first reservation; a
-- reservation is one conditional UPDATE (spent + reserved + bound <= limit), so concurrent
-- reservations on any number of processes never overshoot.
CREATE TABLE usage_days (
    level TEXT NOT NULL,
    owner TEXT NOT NULL,
    day TEXT NOT NULL,
    spent_tokens BIGINT NOT NULL DEFAULT 0,
    spent_micros BIGINT NOT NULL DEFAULT 0,
    reserved_tokens BIGINT NOT NULL DEFAULT 0,
    reserved_micros BIGINT NOT NULL DEFAULT 0,
    updated_at TIMESTAMP NOT NULL,
    PRIMARY KEY (level, owner, day)
);
CREATE INDEX usage_days_by_day ON usage_days (level, day, spent_micros);

-- What one upstream call (or the calls of one target) holds at the levels it was reserved at,
-- until it is settled: target is 'content:<id>', 'mood:<id>' or 'run:<id>'.
CREATE TABLE usage_holds (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    target TEXT NOT NULL,
    user_id BIGINT NOT NULL,
    studio BOOLEAN NOT NULL,
    day TEXT NOT NULL,
    model TEXT NOT NULL,
    tokens BIGINT NOT NULL,
    micros BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX usage_holds_target ON usage_holds (target);

-- The studio's and the default player's daily limits (one row, id 1); NULL = no limit.
CREATE TABLE usage_limits (
    id BIGINT PRIMARY KEY,
    studio_daily_tokens BIGINT,
    studio_daily_micros BIGINT,
    player_daily_tokens BIGINT,
    player_daily_micros BIGINT,
    player_llm_rate TEXT NOT NULL,
    updated_at TIMESTAMP NOT NULL
);

-- Per player: blocked, and overrides of the default daily limits (NULL = the default).
CREATE TABLE player_limits (
    user_id BIGINT PRIMARY KEY REFERENCES users (id),
    blocked BOOLEAN NOT NULL DEFAULT FALSE,
    daily_tokens BIGINT,
    daily_micros BIGINT,
    updated_at TIMESTAMP NOT NULL
);

-- Who started a run: its later attempts are charged to that player too.
ALTER TABLE runs ADD COLUMN user_id BIGINT;
