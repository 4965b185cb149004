-- Compact storage, second step: a run's archive is compressed against a
-- base, the uncompressed archive of an earlier run of the same flow (a zstd
-- raw-content dictionary), so what successive runs read again (the same
-- purchase orders polled every few minutes) is stored once per base instead
-- of once per run (see `store::archive`). `base` holds that earlier archive,
-- zstd-compressed on its own. A flow's current base is the one not
-- superseded; prune deletes a superseded base no run refers to.
CREATE TABLE archive_bases (
    id            TEXT   PRIMARY KEY,
    flow_id       TEXT   NOT NULL,
    base          BYTEA  NOT NULL,
    created_at    BIGINT NOT NULL,
    superseded_at BIGINT
);
CREATE INDEX archive_bases_by_flow ON archive_bases (flow_id, superseded_at);
-- The base a run's archive is compressed against (NULL: on its own).
ALTER TABLE runs ADD COLUMN archive_base TEXT;
-- The attempt log of an archived run moves into its archive too. Nothing
-- looks attempts up by idempotency key, so that index only cost space.
DROP INDEX step_attempts_by_key;
