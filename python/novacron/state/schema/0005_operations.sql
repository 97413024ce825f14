-- NovaCron node state, version 5: long-running operations (live migrations, both ends).
-- An operation still 'running' when the daemon starts was interrupted by a restart.
CREATE TABLE operations (
    id         TEXT PRIMARY KEY,
    kind       TEXT NOT NULL,   -- 'migrate_out' (this node is the source) or 'migrate_in'
    vm         TEXT NOT NULL,
    tenant     TEXT NOT NULL,
    peer       TEXT NOT NULL,   -- the other node (address or certificate name)
    state      TEXT NOT NULL,   -- running, succeeded, failed, cancelled
    params     TEXT NOT NULL,   -- JSON: the options it ran with
    result     TEXT,            -- JSON summary once it ended well
    error      TEXT,            -- JSON {code, message} once it ended badly
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX operations_vm ON operations (vm);
CREATE INDEX operations_state ON operations (state);
