DROP TABLE player_limits;
DROP TABLE usage_limits;
DROP TABLE usage_holds;
DROP TABLE usage_days;
