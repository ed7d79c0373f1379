-- The embedded log. The table is keyed only by its integer position, so every append is an
-- append at the end of one B-tree: no secondary index on a random key (event id) or on one
-- insertion point per stream. Lookups by event id and by stream are answered from the
-- in-memory index the writer rebuilds on open (see docs/ARCHITECTURE.md).
CREATE TABLE IF NOT EXISTS events (
    position       INTEGER PRIMARY KEY,
    stream         TEXT    NOT NULL,
    version        INTEGER NOT NULL,
    event_id       TEXT    NOT NULL,
    event_type     TEXT    NOT NULL,
    schema_version INTEGER NOT NULL,
    recorded_at    TEXT    NOT NULL,
    data           TEXT    NOT NULL,
    hash           TEXT    NOT NULL,
    prev_hash      TEXT    NOT NULL
);
