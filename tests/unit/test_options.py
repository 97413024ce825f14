"""vm.migrate options: defaults, refusals, and libvirt's bandwidth unit."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.errors import InvalidParams
from novacron.migration.options import (
    COMPRESSIONS,
    STALL_ACTIONS,
    MigrateOptions,
    parse_destination,
    parse_migrate,
    parse_options,
)
from novacron.rpc.params import Params


def parse(**params: Any) -> tuple[str, str, MigrateOptions]:
    return parse_migrate(Params({"name": "web", "destination": "node2:7443", **params}))


def test_defaults() -> None:
    name, dest, options = parse()
    assert (name, dest) == ("web", "node2:7443")
    assert options == MigrateOptions()
    assert options.engine() == {"compression": "lz4", "zstd_level": 1, "dedup": True}
    assert options.bandwidth_mib_s() == 0
    assert options.disk_compression == "lz4"
    assert parse(disk_compression="none")[2].disk_compression == "none"


def test_auto_converge_becomes_the_default_stall_action() -> None:
    assert parse(auto_converge=True)[2].stall_action == "auto_converge"


@pytest.mark.parametrize(
    ("params", "param"),
    [
        ({"parallel": 2}, "parallel"),
        ({"stall_action": "auto_converge"}, "stall_action"),
        ({"max_downtime_ms": 5000, "max_downtime_cap_ms": 1000}, "max_downtime_cap_ms"),
        ({"zstd_level": 3}, "zstd_level"),
        ({"compression": "gzip"}, "compression"),
        ({"disk_compression": "gzip"}, "disk_compression"),
        ({"max_downtime_ms": 0}, "max_downtime_ms"),
        ({"bandwidth_mbps": -1}, "bandwidth_mbps"),
        ({"dedup": "yes"}, "dedup"),
        ({"destination": "a b"}, "destination"),
        ({"destination": ""}, "destination"),
        ({"destination": "../../etc/passwd"}, "destination"),
        ({"destination": "host/x:7443"}, "destination"),
        ({"destination": "h\u00f6st"}, "destination"),
    ],
)
def test_refused_up_front(params: dict[str, Any], param: str) -> None:
    with pytest.raises(InvalidParams) as caught:
        parse(**params)
    assert caught.value.details.get("param") == param


def test_unknown_options_are_refused() -> None:
    with pytest.raises(InvalidParams, match="unknown parameter"):
        parse(postcopy=True)


@pytest.mark.parametrize(("mbps", "mib_s"), [(0, 0), (1, 1), (8, 1), (100, 12), (1000, 120)])
def test_bandwidth_in_libvirts_unit(mbps: int, mib_s: int) -> None:
    assert MigrateOptions(bandwidth_mbps=mbps).bandwidth_mib_s() == mib_s


@given(
    downtime=st.integers(1, 60_000),
    bandwidth=st.integers(0, 400_000),
    compression=st.sampled_from(COMPRESSIONS),
    dedup=st.booleans(),
    auto_converge=st.booleans(),
    action=st.sampled_from(STALL_ACTIONS),
)
def test_valid_combinations_parse_and_round_trip(
    downtime: int, bandwidth: int, compression: str, dedup: bool, auto_converge: bool, action: str
) -> None:
    params = {
        "max_downtime_ms": downtime,
        "bandwidth_mbps": bandwidth,
        "compression": compression,
        "dedup": dedup,
        "auto_converge": auto_converge,
        "stall_action": action,
    }
    if action == "auto_converge" and not auto_converge:
        with pytest.raises(InvalidParams):
            parse(**params)
        return
    options = parse(**params)[2]
    assert options.max_downtime_cap_ms >= options.max_downtime_ms
    assert MigrateOptions.from_dict(options.to_dict()) == options
    assert options.bandwidth_mib_s() * (1 << 20) * 8 >= bandwidth * 1_000_000


def test_destination_optional_for_a_drain() -> None:
    p = Params({"destination": None})
    assert parse_destination(p, required=False) is None
    p.done()  # (an explicit nil is taken: nothing unknown left)
    for ok in ("hostb", "hostb.example.org:7443", "10.0.0.2:7443", "[fd00::2]:7443"):
        assert parse_destination(Params({"destination": ok}), required=False) == ok
    with pytest.raises(InvalidParams) as missing:
        parse_destination(Params({}))
    assert missing.value.details == {"param": "destination"}
    options = parse_options(Params({"compression": "zstd", "zstd_level": 3}))
    assert options == MigrateOptions(compression="zstd", zstd_level=3)
