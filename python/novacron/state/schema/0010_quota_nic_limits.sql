-- NovaCron node state, version 10: a tenant's default bandwidth limits for the NICs its VMs
-- get (JSON map of vm.nic.limit's keys; NULL: none), see docs/networking.md "Bandwidth limits".
ALTER TABLE quotas ADD COLUMN nic_limits TEXT;
