-- Players who log in with the studio's JWT are keyed by its (iss, sub); anonymous players
-- have neither. NULLs never collide in a unique index, so anonymous rows need no key.
ALTER TABLE users ADD COLUMN issuer TEXT;
ALTER TABLE users ADD COLUMN subject TEXT;
CREATE UNIQUE INDEX users_issuer_subject ON users (issuer, subject);
