-- NovaCron node state, version 3: role bindings for Unix-socket callers, and the
-- hash-chained audit log.
CREATE TABLE role_bindings (
    principal  TEXT PRIMARY KEY,          -- 'user:<name>' or 'group:<name>'
    role       TEXT NOT NULL,
    tenants    TEXT NOT NULL,             -- JSON array of tenant names
    created_at REAL NOT NULL
);

CREATE TABLE audit (
    id            INTEGER PRIMARY KEY,    -- 1, 2, 3, ... in order of appending
    ts            REAL NOT NULL,
    principal     TEXT NOT NULL,          -- 'unix:alice', 'tls:ci-runner'
    tenant        TEXT,                   -- the tenant acted on, when known
    method        TEXT NOT NULL,
    params_digest TEXT NOT NULL,          -- sha256 of the canonical parameters
    outcome       TEXT NOT NULL,          -- 'ok' or the error code
    prev_hash     TEXT NOT NULL,          -- hash of entry id-1 ('0' * 64 for the first)
    hash          TEXT NOT NULL           -- sha256 over this entry's fields and prev_hash
);
