-- Parked runs: a `wait_for` step parks its run (status `waiting`, no lease,
-- no run slot) until a signal, a matching event or its deadline. One row
-- per waiting step; resolving it deletes the row in the transaction that
-- stores the step's result and queues the run again, so a signal sent twice
-- is taken once.
CREATE TABLE run_waits (
    run_id     TEXT   NOT NULL,
    step_id    TEXT   NOT NULL,
    signal     TEXT,
    event_type TEXT,
    deadline   BIGINT,
    spec       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    PRIMARY KEY (run_id, step_id)
);
CREATE INDEX run_waits_by_event ON run_waits (event_type);
CREATE INDEX run_waits_by_deadline ON run_waits (deadline);
