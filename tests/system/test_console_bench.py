"""``bench/console_bench.py`` runs end to end on the suite's guest and prints its shape
(a small flood: the figures themselves are in docs/benchmarks.md)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.system.libvirt_host import LibvirtHost

ROOT = Path(__file__).resolve().parents[2]


def test_the_console_bench_prints_each_client_count(libvirt_host: LibvirtHost) -> None:
    args = ["--kib", "16", "--watchers", "0,2", "--trips", "2", "--json"]
    done = subprocess.run(
        [sys.executable, str(ROOT / "bench/console_bench.py"), *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    runs = json.loads(done.stdout)["runs"]
    assert [r["watchers"] for r in runs] == ["direct", 0, 2]
    for r in runs:
        assert r["flood_bytes"] >= 16 * 1024 and r["flood_kib_per_s"] > 0
    assert runs[2]["watchers_got_the_same_bytes"] is True
    assert all(r["round_trip_median_ms"] > 0 for r in runs[1:])
