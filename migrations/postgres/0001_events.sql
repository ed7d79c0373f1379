-- The PostgreSQL log. Duplicates and version conflicts are impossible at the database level
-- (unique event id, unique stream version); gap-free positions come from appending under a
-- transaction-scoped advisory lock, one transaction per group commit.
CREATE TABLE IF NOT EXISTS events (
    position       BIGINT      PRIMARY KEY CHECK (position > 0),
    stream         TEXT        NOT NULL,
    version        BIGINT      NOT NULL CHECK (version > 0),
    event_id       UUID        NOT NULL UNIQUE,
    event_type     TEXT        NOT NULL,
    schema_version INTEGER     NOT NULL,
    recorded_at    TIMESTAMPTZ NOT NULL,
    data           JSONB       NOT NULL,
    hash           TEXT        NOT NULL,
    prev_hash      TEXT        NOT NULL,
    UNIQUE (stream, version)
);
