"""The README's first command, minus the installation: ``./bootstrap.sh dev`` works."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_bootstrap_dev_starts_the_daemon_and_the_cli_answers(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "NOVACRON_SKIP_SETUP": "1",
        "NOVACRON_DEV_EXIT": "1",
        "XDG_RUNTIME_DIR": str(tmp_path / "run"),
        "XDG_STATE_HOME": str(tmp_path / "state"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    env.pop("NOVACRON_SOCKET", None)
    (tmp_path / "run").mkdir(mode=0o700)
    done = subprocess.run(
        ["bash", str(ROOT / "bootstrap.sh"), "dev"],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    assert "novacrond" in out  # novacron hello
    assert "test:///default" in out  # novacron node info
    assert "demo" in out and "paused" in out  # the demo VM went through its paces
    assert "dedicated, memory strict: node 0 vCPU 0-1 on 4,5" in out  # pinned by the engine
    assert "NUMA node 1" in out and "dedicated in use" in out  # node topology
    assert "daemon.stopped" in done.stderr  # and the daemon shut down cleanly
    assert not (tmp_path / "run" / "novacron" / "novacrond.sock").exists()
