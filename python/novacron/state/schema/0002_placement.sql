-- NovaCron node state, version 2: each VM's NUMA placement (JSON from the placement
-- engine: cells with host node, vCPUs, memory and threads), NULL when unplaced.
ALTER TABLE vms ADD COLUMN placement TEXT;
