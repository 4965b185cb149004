-- Compact storage: a finished run with large outputs keeps its step outputs
-- and its output in one zstd-compressed JSON archive (see
-- `store::archive`); its `step_runs.output` and `runs.output` are then NULL.
-- BYTEA is PostgreSQL's binary type; SQLite stores the blob as it is.
ALTER TABLE runs ADD COLUMN archive BYTEA;
-- How many step results the archive holds (their rows are deleted), so a
-- prune still reports every step result it deletes.
ALTER TABLE runs ADD COLUMN archived_steps BIGINT;
