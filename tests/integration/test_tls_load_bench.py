"""The TLS load benchmark runs (small) and reports the figures it promises."""

from __future__ import annotations

from bench.tls_load import main


def test_tls_load_bench_shape() -> None:
    result = main(["--idle", "60", "--active", "5", "--calls", "10", "--json"])
    assert result["idle_connections"] == 60
    for phase in ("baseline", "with_idle"):
        figures = result[phase]
        assert 0 < figures["p50_ms"] <= figures["p99_ms"]
        assert figures["calls_per_s"] > 0
