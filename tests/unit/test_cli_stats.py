"""``novacron.cli.stats``: rates from two samples of a VM's counters."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from novacron.cli import stats


def sample(at: float, cpu_ns: int | None, rd: int, wr: int, rx: int, tx: int) -> dict[str, Any]:
    return {
        "name": "v",
        "state": "running",
        "at": at,
        "cpu": None if cpu_ns is None else {"time_ns": cpu_ns, "vcpus": 2},
        "disks": [
            {"target": "vda", "rd_bytes": rd, "wr_bytes": wr},
            {"target": "vdb", "rd_bytes": rd, "wr_bytes": wr},
        ],
        "nics": [{"mac": "52:54:00:00:00:01", "rx_bytes": rx, "tx_bytes": tx}],
    }


def test_rates_between_two_samples() -> None:
    before = sample(100.0, 5_000_000_000, 1000, 2000, 10, 20)
    after = sample(102.0, 7_000_000_000, 5000, 2000, 4010, 20)
    got = stats.rates(before, after)
    assert got["seconds"] == 2.0
    assert got["cpu_percent"] == 50.0  # 1 s of CPU a second over 2 vCPUs
    assert got["disk_read_bps"] == 4000.0  # both disks: 2 x 4000 bytes in 2 s
    assert got["disk_write_bps"] == 0.0
    assert (got["net_rx_bps"], got["net_tx_bps"]) == (2000.0, 0.0)


def test_counters_that_went_back_have_no_rate() -> None:
    """The VM's QEMU restarted between the samples: its counters began again at zero."""
    before = sample(100.0, 9_000_000_000, 5000, 5000, 5000, 5000)
    after = sample(101.0, 1_000_000, 10, 10, 10, 10)
    got = stats.rates(before, after)
    assert all(got[k] is None for k in got if k != "seconds"), got


def test_a_stopped_vm_or_unknown_counter_has_no_rate() -> None:
    stopped = {"name": "v", "state": "stopped", "at": 101.0, "cpu": None, "disks": [], "nics": []}
    got = stats.rates(sample(100.0, 1, 1, 1, 1, 1), stopped)
    assert all(got[k] is None for k in got if k != "seconds"), got
    unknown = sample(101.0, 2, 2, 2, 2, 2)
    unknown["disks"][1]["rd_bytes"] = None  # one disk's counter missing: no sum to trust
    assert stats.rates(sample(100.0, 1, 1, 1, 1, 1), unknown)["disk_read_bps"] is None


@given(
    st.integers(0, 2**62),
    st.integers(0, 2**40),
    st.floats(0.001, 3600),
)
def test_rates_are_never_negative_and_invert_the_step(
    start: int, step: int, seconds: float
) -> None:
    got = stats.rates(
        sample(0.0, start, start, start, start, start),
        sample(seconds, start + step, start + step, start, start + step, start),
    )
    assert got["disk_read_bps"] is not None
    assert abs(got["disk_read_bps"] * seconds - 2 * step) <= 1e-6 * max(step, 1)
    assert got["disk_write_bps"] == 0.0
    assert got["cpu_percent"] is not None and got["cpu_percent"] >= 0


def test_sizes_in_binary_units() -> None:
    assert stats.size(None) == "-"
    assert stats.size(0) == "0 B"
    assert stats.size(1023) == "1023 B"
    assert stats.size(1536) == "1.5 KiB"
    assert stats.size(5 * 1024**3, "/s") == "5.0 GiB/s"
    assert stats.size(3 * 1024**5) == "3072.0 TiB"
