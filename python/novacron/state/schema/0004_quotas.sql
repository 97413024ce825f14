-- NovaCron node state, version 4: per-tenant quotas (NULL = no limit).
CREATE TABLE quotas (
    tenant         TEXT PRIMARY KEY,
    max_vcpus      INTEGER,
    max_memory_mib INTEGER,
    max_vms        INTEGER,
    updated_at     REAL NOT NULL
);
