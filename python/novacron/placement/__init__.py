"""NUMA placement: host topology discovery and the daemon's use of the Rust engine."""
