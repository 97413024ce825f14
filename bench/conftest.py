"""Benchmarks are opt-in: ``pytest bench --benchmark-enable`` (the suite runs them disabled)."""
