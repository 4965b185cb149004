-- Core tables: flows with revisions, runs, step results, attempt log.
-- Portable SQL: runs unchanged on SQLite and PostgreSQL. Times are
-- milliseconds since the Unix epoch; JSON is stored as text.

CREATE TABLE flows (
    id          TEXT   NOT NULL,
    revision    BIGINT NOT NULL,
    hash        TEXT   NOT NULL,
    source      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (id, revision)
);

CREATE TABLE runs (
    id               TEXT   PRIMARY KEY,
    flow_id          TEXT   NOT NULL,
    flow_revision    BIGINT NOT NULL,
    status           TEXT   NOT NULL,
    inputs           TEXT   NOT NULL,
    trigger_data     TEXT   NOT NULL,
    output           TEXT,
    error            TEXT,
    created_at       BIGINT NOT NULL,
    started_at       BIGINT,
    finished_at      BIGINT,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    resumes          BIGINT NOT NULL DEFAULT 0
);
CREATE INDEX runs_by_flow ON runs (flow_id, status, created_at);
CREATE INDEX runs_by_status ON runs (status, lease_expires_at);
CREATE INDEX runs_by_created ON runs (created_at);

CREATE TABLE step_runs (
    run_id      TEXT   NOT NULL,
    step_id     TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    attempts    BIGINT NOT NULL,
    output      TEXT,
    error       TEXT,
    started_at  BIGINT,
    finished_at BIGINT,
    PRIMARY KEY (run_id, step_id)
);

CREATE TABLE step_attempts (
    id              TEXT   PRIMARY KEY,
    run_id          TEXT   NOT NULL,
    step_id         TEXT   NOT NULL,
    idempotency_key TEXT   NOT NULL,
    attempt         BIGINT NOT NULL,
    started_at      BIGINT NOT NULL
);
CREATE INDEX step_attempts_by_run ON step_attempts (run_id, step_id);
CREATE INDEX step_attempts_by_key ON step_attempts (idempotency_key);
