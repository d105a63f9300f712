DELETE FROM llm_config WHERE id <> 1;
ALTER TABLE llm_config DROP COLUMN parked;
ALTER TABLE llm_config DROP COLUMN enabled;
ALTER TABLE llm_config DROP COLUMN priority;
ALTER TABLE llm_config DROP COLUMN weight;
ALTER TABLE llm_config ALTER COLUMN id DROP DEFAULT;
DROP SEQUENCE llm_config_id_seq;
