-- NovaCron node state, version 9: a tenant's default throttle for the disks its VMs get
-- (JSON map of vm.disk.limit's keys; NULL: none), see docs/operations.md "Disk limits".
ALTER TABLE quotas ADD COLUMN disk_limits TEXT;
