-- The server: API tokens, flow settings, request keys (Idempotency-Key and
-- inbound `webhook-id` deduplication) and schedule ticks.

CREATE TABLE api_tokens (
    id           TEXT   PRIMARY KEY,
    name         TEXT   NOT NULL,
    scope        TEXT   NOT NULL,
    secret_hash  TEXT   NOT NULL,
    rate_per_sec BIGINT,
    created_at   BIGINT NOT NULL,
    revoked_at   BIGINT
);

-- Server-side state of a flow: whether triggers start it, and whether it
-- was deleted (its revisions stay, for the runs that used them).
CREATE TABLE flow_settings (
    id          TEXT   PRIMARY KEY,
    enabled     BIGINT NOT NULL,
    origin      TEXT   NOT NULL,
    deleted_at  BIGINT,
    updated_at  BIGINT NOT NULL
);

-- A request that started a run, by key: `idem:<token>:<Idempotency-Key>`
-- or `hook:<path>:<webhook-id>`. Keys expire after 24 hours.
CREATE TABLE request_keys (
    request_key TEXT   PRIMARY KEY,
    run_id      TEXT   NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX request_keys_by_created ON request_keys (created_at);

-- One row per fired schedule tick: the primary key makes a tick fire once
-- however many processes share the database.
CREATE TABLE schedule_ticks (
    flow_id     TEXT   NOT NULL,
    trigger_key TEXT   NOT NULL,
    tick_at     BIGINT NOT NULL,
    run_id      TEXT   NOT NULL,
    fired_at    BIGINT NOT NULL,
    PRIMARY KEY (flow_id, trigger_key, tick_at)
);
