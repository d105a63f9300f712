-- Lobby chat. The nickname is the sender's at the time of sending; the mood starts
-- 'neutral' / 'pending' and a durable 'mood' job (same transaction) settles it.
CREATE TABLE messages (
    id BIGSERIAL PRIMARY KEY,
    user_id BIGINT NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    nickname TEXT NOT NULL,
    text TEXT NOT NULL,
    mood TEXT NOT NULL,
    mood_status TEXT NOT NULL,
    created_at TIMESTAMP NOT NULL
);
CREATE INDEX messages_user ON messages (user_id);
