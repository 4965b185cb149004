-- A step's input: its config with the expressions evaluated, as it went to
-- the system (secrets redacted), shown next to its output by `runs show`,
-- the API and the console. JSON text, like `output`; archived runs keep it
-- in their archive.
ALTER TABLE step_runs ADD COLUMN input TEXT;
