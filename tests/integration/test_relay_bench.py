"""The relay benchmark runs end to end (small sizes) and reports its figures."""

from __future__ import annotations

from bench.relay_bench import main


def test_relay_bench_reports_figures() -> None:
    result = main(["--mib", "8", "--rounds", "2", "--repeat", "1"])
    assert result["send_mb_s"] > 0 and result["receive_mb_s"] > 0
    # zero pages, duplicates and text compress: far fewer bytes on the wire
    assert 0 < result["wire_per_logical"] < 0.8
    assert result["logical_mb"] > 4


def test_relay_bench_relays_through_both_loops() -> None:
    """``--relayed``: the stream crosses both relay loops whole (the bench's QEMU
    stand-in counts every byte) and the event loop's lateness is reported."""
    result = main(["--mib", "8", "--rounds", "2", "--repeat", "1", "--relayed"])
    relayed = result["relayed"]
    assert relayed["wall_mb_s"] > 0
    late = relayed["loop_late_max_ms"][0]
    assert 0 <= relayed["loop_late_median_ms"][0] <= relayed["loop_late_p99_ms"][0] <= late
