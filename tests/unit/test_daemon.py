"""novacron.daemon: how a failed start is reported (the daemon's runs are the integration
and system tests)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from novacron import errors
from novacron.daemon import expected_failure
from novacron.server.tls import TlsConfigError
from novacron.server.unix import SocketInUse


def test_a_start_refused_for_known_reasons_is_reported_however_deep_in_task_groups() -> None:
    refused = errors.InvalidParams("libvirt: XML error")
    # as trio's nurseries raise it: a group in a group
    nested = BaseExceptionGroup("root", [ExceptionGroup("start", [refused])])
    assert expected_failure(nested) is refused
    for plain in (SocketInUse("taken"), TlsConfigError("no key"), PermissionError(13, "no")):
        assert expected_failure(plain) is plain
        assert expected_failure(ExceptionGroup("x", [plain, OSError(5, "io")])) is plain


def test_anything_else_is_a_bug_whose_traceback_is_kept() -> None:
    assert expected_failure(KeyError("x")) is None
    mixed = ExceptionGroup("x", [errors.Conflict("busy"), ZeroDivisionError()])
    assert expected_failure(mixed) is None
    assert expected_failure(KeyboardInterrupt()) is None


def test_a_bad_pool_name_is_a_configuration_error_not_a_crash(tmp_path: Path) -> None:
    """'/srv/pool' reached libvirt, which refused it in a task group: a traceback."""
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "novacron.daemon",
            "--dev",
            "--socket",
            str(tmp_path / "s.sock"),
            "--state-dir",
            str(tmp_path / "state"),
            "--storage-pool",
            "/srv/pool",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert "configuration error: [hypervisor] storage_pool" in done.stderr
