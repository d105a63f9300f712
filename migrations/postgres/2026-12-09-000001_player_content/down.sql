DELETE FROM jobs WHERE kind = 'content' AND target_id IN (SELECT id FROM content WHERE owner_id <> 0);
DELETE FROM content WHERE owner_id <> 0;
ALTER TABLE content DROP CONSTRAINT content_kind_subject_id_owner_id_key;
ALTER TABLE content ADD CONSTRAINT content_kind_subject_id_key UNIQUE (kind, subject_id);
ALTER TABLE content DROP COLUMN owner_id;
