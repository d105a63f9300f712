DROP INDEX user_days_day;
