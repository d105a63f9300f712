DROP TABLE moderation_flags;
ALTER TABLE messages DROP COLUMN masked;
