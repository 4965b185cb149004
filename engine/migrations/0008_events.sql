-- The event log: one row per engine or custom event that an `event` trigger
-- may start a flow on, written in the same transaction as what fired it.
-- Every `sluice serve` claims undispatched events (a lease, so a killed
-- process's claims are taken over), starts one run per matching flow (the
-- request key `event:<flow>:<event id>` makes that exactly once), then marks
-- the event dispatched. Dispatched events are pruned after the retention
-- (`SLUICE_EVENT_RETENTION`, default 7 days).

CREATE TABLE events (
    id               TEXT   PRIMARY KEY,
    event_type       TEXT   NOT NULL,
    connection_id    TEXT,
    body             TEXT   NOT NULL,
    created_at       BIGINT NOT NULL,
    dispatched_at    BIGINT,
    lease_owner      TEXT,
    lease_expires_at BIGINT
);
CREATE INDEX events_undispatched ON events (created_at) WHERE dispatched_at IS NULL;
CREATE INDEX events_by_created ON events (created_at);
