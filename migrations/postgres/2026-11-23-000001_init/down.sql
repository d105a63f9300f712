DROP TABLE llm_config;
DROP TABLE jobs;
DROP TABLE content;
DROP TABLE user_days;
DROP TABLE users;
