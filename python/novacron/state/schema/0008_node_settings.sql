-- NovaCron node state, version 8: settings of the node itself, one JSON value per key
-- ('cordon': the node takes no new VMs, see docs/operations.md "Host maintenance").
CREATE TABLE node_settings (
    key        TEXT PRIMARY KEY,
    value      TEXT NOT NULL,   -- JSON
    updated_at REAL NOT NULL
);
