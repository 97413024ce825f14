"""The relay benchmark runs end to end (small sizes) and reports its figures."""

from __future__ import annotations

from bench.relay_bench import main


def test_relay_bench_reports_figures() -> None:
    result = main(["--mib", "8", "--rounds", "2", "--repeat", "1"])
    assert result["send_mb_s"] > 0 and result["receive_mb_s"] > 0
    # zero pages, duplicates and text compress: far fewer bytes on the wire
    assert 0 < result["wire_per_logical"] < 0.8
    assert result["logical_mb"] > 4
