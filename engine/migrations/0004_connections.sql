-- Connections: a definition + parameters + credential references (secret names, never values).

CREATE TABLE connections (
    id          TEXT   PRIMARY KEY,
    definition  TEXT   NOT NULL,
    config      TEXT   NOT NULL,
    status      TEXT   NOT NULL,
    status_reason TEXT,
    status_at   BIGINT NOT NULL,
    created_at  BIGINT NOT NULL,
    updated_at  BIGINT NOT NULL
);

CREATE TABLE connection_status_events (
    id            TEXT   PRIMARY KEY,
    connection_id TEXT   NOT NULL,
    from_status   TEXT   NOT NULL,
    to_status     TEXT   NOT NULL,
    reason        TEXT   NOT NULL,
    at            BIGINT NOT NULL
);

CREATE INDEX connection_status_events_by_connection ON connection_status_events (connection_id, at);
