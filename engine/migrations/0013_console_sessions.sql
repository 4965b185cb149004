-- Console sign-ins: an API token exchanged for a session cookie. Only the
-- cookie's sha256 is stored; `csrf` is the token every form of the session
-- must carry. Signing out deletes the row, so a replayed cookie is refused.
CREATE TABLE console_sessions (
    id_hash    TEXT   PRIMARY KEY,
    token_id   TEXT   NOT NULL,
    csrf       TEXT   NOT NULL,
    created_at BIGINT NOT NULL,
    expires_at BIGINT NOT NULL
);
CREATE INDEX console_sessions_by_expiry ON console_sessions (expires_at);
