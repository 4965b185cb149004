-- Syncs: per connection and entity, the sync state and a cache of the records seen.

CREATE TABLE sync_state (
    connection_id   TEXT   NOT NULL,
    entity          TEXT   NOT NULL,
    state           TEXT   NOT NULL,
    mode            TEXT,
    sync_id         TEXT,
    cursor_ms       BIGINT,
    checkpoint      TEXT,
    lease_until     BIGINT,
    started_at      BIGINT,
    last_success_at BIGINT,
    last_failure_at BIGINT,
    last_error      TEXT,
    counts          TEXT,
    duration_ms     BIGINT,
    PRIMARY KEY (connection_id, entity)
);

CREATE TABLE synced_records (
    connection_id     TEXT   NOT NULL,
    entity            TEXT   NOT NULL,
    remote_id         TEXT   NOT NULL,
    hash              TEXT   NOT NULL,
    data              TEXT   NOT NULL,
    remote_updated_at BIGINT NOT NULL,
    deleted           BIGINT NOT NULL,
    seen_sync         TEXT   NOT NULL,
    PRIMARY KEY (connection_id, entity, remote_id)
);
