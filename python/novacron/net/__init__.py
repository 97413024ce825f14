"""Host networking through netlink: networks, their kernel devices, VM NICs."""
