-- Plugin registry: immutable name@version entries pointing at content-addressed bytes.

CREATE TABLE plugin_blobs (
    sha256     TEXT   PRIMARY KEY,
    size       BIGINT NOT NULL,
    bytes      BYTEA  NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE plugins (
    name        TEXT   NOT NULL,
    version     TEXT   NOT NULL,
    major       BIGINT NOT NULL,
    minor       BIGINT NOT NULL,
    patch       BIGINT NOT NULL,
    sha256      TEXT   NOT NULL,
    description TEXT,
    created_at  BIGINT NOT NULL,
    PRIMARY KEY (name, version)
);
