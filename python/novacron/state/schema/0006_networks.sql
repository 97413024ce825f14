-- NovaCron node state, version 6: host networks (bridges, VLANs, VXLAN overlays).
-- The kernel's devices are rebuilt from these rows on start and on a timer; VM NICs
-- live in each VM's spec (vms.spec) and name a network here.
CREATE TABLE networks (
    name       TEXT PRIMARY KEY,
    tenant     TEXT NOT NULL,
    kind       TEXT NOT NULL,   -- bridge, vlan, vxlan
    spec       TEXT NOT NULL,   -- JSON: novacron.net.model.NetworkSpec
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX networks_tenant ON networks (tenant);
