DROP INDEX jobs_player_turn;
DROP INDEX jobs_turn;
ALTER TABLE jobs DROP COLUMN turn;
ALTER TABLE jobs DROP COLUMN player_id;
