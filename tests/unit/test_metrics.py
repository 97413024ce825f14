"""``novacron metrics``' text format: label values escaped so that any string reads back
as itself, every line of the exposition well formed, unknown figures left out."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from novacron.cli.metrics import (
    Family,
    escape,
    node_families,
    render,
    vm_families,
    write_atomically,
)

NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
LABEL_VALUE = r'"(?:[^"\\\n]|\\\\|\\"|\\n)*"'
SAMPLE = re.compile(rf"^({NAME})(\{{(?:{NAME}={LABEL_VALUE})(?:,{NAME}={LABEL_VALUE})*\}})? (\S+)$")


def unescape(text: str) -> str:
    """The reader's side of the format (Prometheus's own rules)."""
    out, i = [], 0
    while i < len(text):
        if text[i] == "\\":
            out.append({"\\": "\\", '"': '"', "n": "\n"}[text[i + 1]])
            i += 2
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def lines(text: str) -> list[str]:
    """The format's lines: ended by a line feed only (not by every character Python's
    ``splitlines`` breaks at: a label value may hold those)."""
    assert text == "" or text.endswith("\n")
    return text.split("\n")[:-1]


def samples(text: str) -> dict[str, float]:
    """Every sample line as 'name{labels}' -> value; every other line a HELP or TYPE."""
    found = {}
    for line in lines(text):
        if line.startswith("# "):
            assert re.match(rf"^# (HELP|TYPE) {NAME} ", line), line
            continue
        match = SAMPLE.match(line)
        assert match, line
        found[match[1] + (match[2] or "")] = float(match[3])
    return found


@given(st.text())
def test_any_label_value_reads_back_as_itself(value: str) -> None:
    escaped = escape(value)
    assert "\n" not in escaped
    assert re.fullmatch(LABEL_VALUE, f'"{escaped}"')
    assert unescape(escaped) == value


@given(
    st.lists(
        st.tuples(
            st.dictionaries(st.from_regex(r"[a-z_][a-z0-9_]{0,8}", fullmatch=True), st.text()),
            st.integers(-(2**63), 2**63) | st.floats(allow_nan=True, allow_infinity=True),
        ),
        max_size=5,
    )
)
def test_every_line_of_the_exposition_is_well_formed(
    rows: list[tuple[dict[str, str], float]],
) -> None:
    family = Family("x_total", "counter", "A test.")
    for labels, value in rows:
        family.add(labels, value)
    text = render([family])
    assert len(lines(text)) == (len(rows) + 2 if rows else 0)
    samples(text)


ROWS: list[dict[str, Any]] = [
    {
        "name": "web",
        "tenant": "acme",
        "state": "paused",
        "reason": "ioerror",
        "cpu": {"time_ns": 2_500_000_000, "vcpus": 2},
        "memory": {"rss_kib": 1024, "current_kib": None},
        "disks": [{"target": "vda", "rd_bytes": 10, "wr_bytes": None, "capacity_bytes": 4096}],
        "nics": [{"mac": "52:54:00:00:00:01", "rx_bytes": 7, "tx_bytes": 8}],
    },
    {
        "name": "off",
        "tenant": "acme",
        "state": "stopped",
        "reason": "shutdown",
        "cpu": None,
        "memory": None,
    },
]


def test_the_families_of_two_vms() -> None:
    got = samples(render(vm_families(ROWS)))
    web, off = 'tenant="acme",vm="web"', 'tenant="acme",vm="off"'
    assert got == {
        f'novacron_vm_info{{{web},state="paused",reason="ioerror"}}': 1,
        f'novacron_vm_info{{{off},state="stopped",reason="shutdown"}}': 1,
        f"novacron_vm_running{{{web}}}": 0,
        f"novacron_vm_running{{{off}}}": 0,
        f"novacron_vm_vcpus{{{web}}}": 2,
        f"novacron_vm_cpu_seconds_total{{{web}}}": 2.5,
        f"novacron_vm_memory_rss_bytes{{{web}}}": 1024 * 1024,
        f'novacron_vm_disk_read_bytes_total{{{web},device="vda"}}': 10,
        f'novacron_vm_disk_capacity_bytes{{{web},device="vda"}}': 4096,
        f'novacron_vm_network_receive_bytes_total{{{web},mac="52:54:00:00:00:01"}}': 7,
        f'novacron_vm_network_transmit_bytes_total{{{web},mac="52:54:00:00:00:01"}}': 8,
    }  # (a figure the hypervisor left out, nil, is not a zero)


def test_rows_of_a_cluster_carry_their_node_first() -> None:
    text = render(vm_families([{**ROWS[1], "node": "n1"}]))
    assert 'novacron_vm_running{node="n1",tenant="acme",vm="off"} 0' in lines(text)


def test_the_node_families() -> None:
    info = {
        "cordon": {"since": 1.0, "reason": "x", "by": "unix:root"},
        "daemon": {
            "managed_vms": 3,
            "uptime_s": 12.5,
            "keeper": {
                "restarted": 1,
                "start_failed": 0,
                "gave_up": 0,
                "followed": 2,
                "resumed": 5,
                "given_up": ["a"],
                "held": [],
            },
            "consoles": {"open": 2, "sessions": 5, "watching": 3, "pool": {}},
            "shaping": {"shaped_vms": 4, "changes": 7, "swept": 1},
        },
        "storage": {
            "pool": "novacron",
            "path": "/var/lib/novacron/images",
            "capacity_bytes": 100,
            "allocation_bytes": 40,
            "available_bytes": 60,
            "volumes": 2,
            "committed_bytes": 150,
            "reserve_bytes": 10,
        },
    }
    got = samples(render(node_families(info, {})))
    assert got["novacron_node_nic_shaped_vms"] == 4
    assert got['novacron_node_nic_shaper_total{what="changes"}'] == 7
    assert got['novacron_node_nic_shaper_total{what="swept"}'] == 1
    assert got["novacron_node_consoles_open"] == 2
    assert got['novacron_node_console_sessions{mode="typing"}'] == 2
    assert got['novacron_node_console_sessions{mode="watching"}'] == 3
    assert got["novacron_node_cordoned"] == 1 and got["novacron_node_vms"] == 3
    assert got['novacron_node_keeper_total{outcome="followed"}'] == 2
    assert got['novacron_node_keeper_total{outcome="resumed"}'] == 5
    assert got["novacron_node_vms_given_up"] == 1
    pool = '{pool="novacron"}'
    assert got[f"novacron_node_storage_capacity_bytes{pool}"] == 100
    assert got[f"novacron_node_storage_available_bytes{pool}"] == 60
    assert got[f"novacron_node_storage_committed_bytes{pool}"] == 150
    assert got[f"novacron_node_storage_reserve_bytes{pool}"] == 10
    assert samples(render(node_families({}, {"node": "n"}))) == {
        'novacron_node_cordoned{node="n"}': 0
    }


def test_the_file_is_replaced_whole(tmp_path: Path) -> None:
    target = tmp_path / "novacron.prom"
    target.write_text("old\n")
    write_atomically(target, "new\n")
    assert target.read_text() == "new\n" and oct(target.stat().st_mode & 0o777) == "0o644"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["novacron.prom"]  # no temporary left
