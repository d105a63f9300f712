-- A project's optional per-day limits (PROTOCOL §5), beside its budget: tokens and
-- micro-dollars per UTC day, NULL = none. Its day's spend is kept in usage_days at level
-- 'project', owner the project id.
CREATE TABLE project_limits (
    project_id TEXT PRIMARY KEY,
    daily_tokens BIGINT,
    daily_micros BIGINT,
    updated_at TIMESTAMP NOT NULL
);

-- The project a hold was reserved at (a run's), NULL for none.
ALTER TABLE usage_holds ADD COLUMN project TEXT;
