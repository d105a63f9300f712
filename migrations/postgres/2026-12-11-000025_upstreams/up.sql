-- Several upstreams (PROTOCOL §7): llm_config holds one row per upstream; row 1 is the first,
-- seeded from LOREWIRE_LLM_*, the one /admin/api/llm shows. New rows take the next id.
CREATE SEQUENCE llm_config_id_seq START WITH 2 OWNED BY llm_config.id;
ALTER TABLE llm_config ALTER COLUMN id SET DEFAULT nextval('llm_config_id_seq');
ALTER TABLE llm_config ADD COLUMN weight INTEGER NOT NULL DEFAULT 1;
ALTER TABLE llm_config ADD COLUMN priority INTEGER NOT NULL DEFAULT 0;
ALTER TABLE llm_config ADD COLUMN enabled BOOLEAN NOT NULL DEFAULT TRUE;
-- The failure (a 401 or 403) that parked it until its key or URL changes or its circuit is reset.
ALTER TABLE llm_config ADD COLUMN parked TEXT;
