-- Consecutive failed syncs per connection and entity, for `system.error`
-- when a sync keeps failing (reset by a success).
ALTER TABLE sync_state ADD COLUMN failures BIGINT NOT NULL DEFAULT 0;
