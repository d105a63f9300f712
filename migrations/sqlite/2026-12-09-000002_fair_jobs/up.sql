-- The player a job works for (0: none, e.g. the game server's or an adopted orphan's) and its
-- turn: at each priority, queued jobs are claimed by turn, and a player's next job takes the
-- turn after its last one (a new player's, the turn being served), so players take turns.
ALTER TABLE jobs ADD COLUMN player_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN turn BIGINT NOT NULL DEFAULT 0;
CREATE INDEX jobs_turn ON jobs (status, priority, turn, id);
CREATE INDEX jobs_player_turn ON jobs (player_id, priority, turn);
