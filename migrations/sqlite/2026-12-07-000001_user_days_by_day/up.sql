-- Retention counts the first days that ended since the last count: their rows by day.
CREATE INDEX user_days_day ON user_days (day, user_id);
