-- A chat line stored with its listed words masked says so.
ALTER TABLE messages ADD COLUMN masked BOOLEAN NOT NULL DEFAULT FALSE;

-- Every flag of the moderation checks (PROTOCOL §6): what was said, where, by whom.
CREATE TABLE moderation_flags (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    surface TEXT NOT NULL,
    user_id BIGINT,
    text TEXT NOT NULL,
    -- JSON list of the categories that flagged it (word_list, the endpoint's).
    categories TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX moderation_flags_by_user ON moderation_flags (user_id, created_at);
