-- A content item is shared (owner_id 0) or one player's own (owner_id = the player's user id):
-- one row per (kind, subject_id, owner_id). 0 rather than NULL, since NULLs never collide in a
-- unique key and shared items must stay one per (kind, subject_id).
ALTER TABLE content ADD COLUMN owner_id BIGINT NOT NULL DEFAULT 0;
ALTER TABLE content DROP CONSTRAINT content_kind_subject_id_key;
ALTER TABLE content ADD CONSTRAINT content_kind_subject_id_owner_id_key UNIQUE (kind, subject_id, owner_id);
