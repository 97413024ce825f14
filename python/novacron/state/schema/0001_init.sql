-- NovaCron node state, version 1.
-- libvirt is the truth for runtime state; this holds what the operator asked for.
CREATE TABLE vms (
    name          TEXT PRIMARY KEY,
    uuid          TEXT NOT NULL UNIQUE,
    tenant        TEXT NOT NULL,
    spec          TEXT NOT NULL,          -- JSON: the normalised vm.create parameters
    desired_state TEXT NOT NULL CHECK (desired_state IN ('stopped', 'running', 'paused', 'deleting')),
    created_at    REAL NOT NULL,
    updated_at    REAL NOT NULL
);
CREATE INDEX vms_tenant ON vms (tenant);
