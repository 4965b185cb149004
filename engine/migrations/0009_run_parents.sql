-- Child runs: a run started by a `flow` step records the run and step that
-- started it (`parent_step` is the step id, with `[index]` for a `for_each`
-- item), so `runs show` and the API link parent and children both ways, and
-- a resumed parent finds the child it already started instead of starting a
-- second one.
ALTER TABLE runs ADD COLUMN parent_run_id TEXT;
ALTER TABLE runs ADD COLUMN parent_step TEXT;
CREATE INDEX runs_by_parent ON runs (parent_run_id, parent_step);
