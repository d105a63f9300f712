DELETE FROM jobs WHERE kind = 'content' AND target_id IN (SELECT id FROM content WHERE owner_id <> 0);
CREATE TABLE content_old (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    kind TEXT NOT NULL,
    subject_id BIGINT NOT NULL,
    status TEXT NOT NULL,
    fields TEXT NOT NULL,
    context TEXT NOT NULL,
    model TEXT,
    reason TEXT,
    version BIGINT NOT NULL,
    created_at TIMESTAMP NOT NULL,
    updated_at TIMESTAMP NOT NULL,
    UNIQUE (kind, subject_id)
);
INSERT INTO content_old (id, kind, subject_id, status, fields, context, model, reason, version, created_at, updated_at)
    SELECT id, kind, subject_id, status, fields, context, model, reason, version, created_at, updated_at
    FROM content WHERE owner_id = 0;
DROP TABLE content;
ALTER TABLE content_old RENAME TO content;
