-- NovaCron node state, version 7: a tenant's quota of disk space for new volumes (GiB, NULL = no limit).
ALTER TABLE quotas ADD COLUMN max_disk_gib INTEGER;
