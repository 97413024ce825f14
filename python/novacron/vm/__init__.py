"""Virtual machines through libvirt: specs, domain XML, the driver, events, the service."""
