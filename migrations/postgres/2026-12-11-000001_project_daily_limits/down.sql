ALTER TABLE usage_holds DROP COLUMN project;
DROP TABLE project_limits;
