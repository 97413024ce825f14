"""The RPC benchmark runs end to end (NovaCron's side) and prints its documented shape."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_rpc_bench_json_on_a_short_run() -> None:
    done = subprocess.run(
        [sys.executable, "bench/rpc_bench.py", "--calls", "200", "--no-libvirt", "--json"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    figures = result["figures"]
    for name in ("novacron session.hello", "novacron vm.list(100 VMs)"):
        row = figures[name]
        assert 0 < row["p50_us"] <= row["p99_us"], row
        assert row["calls_per_s"] > 0, row
    assert "not asked for" in figures["libvirt"]["skipped"]
