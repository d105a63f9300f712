ALTER TABLE runs DROP COLUMN user_id;
DROP TABLE player_limits;
DROP TABLE usage_limits;
DROP TABLE usage_holds;
DROP TABLE usage_days;
