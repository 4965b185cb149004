-- Outbound webhooks: endpoints, the outbox of messages, and the attempt log.

CREATE TABLE webhook_endpoints (
    id                        TEXT   PRIMARY KEY,
    url                       TEXT   NOT NULL,
    description               TEXT,
    secret                    TEXT   NOT NULL,
    previous_secret           TEXT,
    previous_secret_expires_at BIGINT,
    event_types               TEXT   NOT NULL,
    connection_id             TEXT,
    enabled                   BIGINT NOT NULL,
    disabled_reason           TEXT,
    created_at                BIGINT NOT NULL,
    updated_at                BIGINT NOT NULL
);

CREATE TABLE webhook_messages (
    id               TEXT   PRIMARY KEY,
    event_id         TEXT   NOT NULL,
    endpoint_id      TEXT   NOT NULL,
    event_type       TEXT   NOT NULL,
    body             TEXT   NOT NULL,
    status           TEXT   NOT NULL,
    attempts         BIGINT NOT NULL,
    next_attempt_at  BIGINT NOT NULL,
    lease_owner      TEXT,
    lease_expires_at BIGINT,
    last_error       TEXT,
    created_at       BIGINT NOT NULL,
    delivered_at     BIGINT,
    UNIQUE (event_id, endpoint_id)
);
CREATE INDEX webhook_messages_due ON webhook_messages (status, next_attempt_at);
CREATE INDEX webhook_messages_by_endpoint ON webhook_messages (endpoint_id, created_at);

CREATE TABLE webhook_attempts (
    id            TEXT   PRIMARY KEY,
    message_id    TEXT   NOT NULL,
    attempt       BIGINT NOT NULL,
    started_at    BIGINT NOT NULL,
    status_code   BIGINT,
    latency_ms    BIGINT NOT NULL,
    error         TEXT,
    response_body TEXT
);
CREATE INDEX webhook_attempts_by_message ON webhook_attempts (message_id, started_at);
