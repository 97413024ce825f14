"""The cluster benchmark runs end to end (small sizes) and reports every figure."""

from __future__ import annotations

from bench.cluster_bench import main


def test_cluster_bench_reports_figures() -> None:
    result = main(
        ["--nodes", "20", "--vms", "100", "--calls", "10", "--creates", "5", "--quiet-s", "2"]
    )
    for key in ("cluster_place", "vm_create_auto", "cluster_vms", "switch_over_txn"):
        assert result[key]["p50_ms"] > 0 and result[key]["p99_ms"] >= result[key]["p50_ms"]
    assert result["placed_on"] == ["node1"]
    assert result["quiet_writes_per_s"] == 0
