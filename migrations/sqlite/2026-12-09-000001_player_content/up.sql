-- A content item is shared (owner_id 0) or one player's own (owner_id = the player's user id):
-- one row per (kind, subject_id, owner_id). 0 rather than NULL, since NULLs never collide in a
-- unique key and shared items must stay one per (kind, subject_id). SQLite cannot change a
-- table's UNIQUE constraint: the table is built again, ids kept (jobs name their item by id).
CREATE TABLE content_new (
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
    owner_id BIGINT NOT NULL DEFAULT 0,
    UNIQUE (kind, subject_id, owner_id)
);
INSERT INTO content_new (id, kind, subject_id, status, fields, context, model, reason, version, created_at, updated_at)
    SELECT id, kind, subject_id, status, fields, context, model, reason, version, created_at, updated_at FROM content;
DROP TABLE content;
ALTER TABLE content_new RENAME TO content;
