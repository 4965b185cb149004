-- Credentials entered in the console's connect flow, sealed (XChaCha20-
-- Poly1305) with the key `sluice serve` reads from SLUICE_CREDENTIALS_KEY
-- (see `connectors::vault`). A connection's config names them like
-- environment secrets (`stored:<connection>.<credential>`).
CREATE TABLE connection_credentials (
    secret_name   TEXT   PRIMARY KEY,
    connection_id TEXT   NOT NULL,
    sealed        BYTEA  NOT NULL,
    updated_at    BIGINT NOT NULL
);
CREATE INDEX connection_credentials_by_connection ON connection_credentials (connection_id);
-- Connect links: a one-time, expiring link to connect one system. Only the
-- link token's sha256 is stored.
CREATE TABLE connect_links (
    id_hash       TEXT   PRIMARY KEY,
    definition    TEXT   NOT NULL,
    connection_id TEXT   NOT NULL,
    created_at    BIGINT NOT NULL,
    expires_at    BIGINT NOT NULL,
    used_at       BIGINT
);
