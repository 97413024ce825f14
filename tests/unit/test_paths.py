"""Default locations the daemon and its clients agree on (novacron/paths.py)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from novacron import paths


def test_the_dev_runtime_dir_is_under_xdg_runtime_dir_or_per_user_in_tmp(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert paths.dev_runtime_dir() == tmp_path / "novacron"
    assert paths.dev_socket() == tmp_path / "novacron" / "novacrond.sock"
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    assert paths.dev_runtime_dir() == Path(f"/tmp/novacron-{os.getuid()}")
    monkeypatch.setenv("XDG_RUNTIME_DIR", "")  # set but empty: as unset
    assert paths.dev_runtime_dir() == Path(f"/tmp/novacron-{os.getuid()}")


def test_migration_sockets_fit_in_a_unix_socket_path(monkeypatch: pytest.MonkeyPatch) -> None:
    # (names only: nothing is made on disk)
    monkeypatch.setenv("XDG_RUNTIME_DIR", "/run/user/4242")
    assert paths.dev_migration_streams() == Path("/run/user/4242/novacron/migration")
    # a runtime dir so long that <dir>/<16 hex>/qemu.sock would not fit in sun_path
    deep = "/run/user/" + "d" * 80
    monkeypatch.setenv("XDG_RUNTIME_DIR", deep)
    streams = paths.dev_migration_streams()
    assert streams == Path(f"/tmp/novacron-{os.getuid()}/migration")
    socket = streams / ("0" * 16) / "qemu.sock"
    assert len(str(socket).encode()) <= paths.MAX_SOCKET_PATH
    # the longest directory taken as it is leaves exactly room for the socket inside it
    longest = "/" + "x" * (paths.MAX_MIGRATION_STREAM_DIR - 1)
    assert len((longest + "/" + "0" * 16 + "/qemu.sock").encode()) == paths.MAX_SOCKET_PATH


def test_the_dev_state_dir_follows_xdg_state_home(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path))
    assert paths.dev_state_dir() == tmp_path / "novacron-dev"
    monkeypatch.delenv("XDG_STATE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert paths.dev_state_dir() == tmp_path / "home" / ".local" / "state" / "novacron-dev"


def test_a_client_takes_novacron_socket_then_the_system_socket_then_the_dev_one(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    system = tmp_path / "system.sock"
    monkeypatch.setattr(paths, "SYSTEM_SOCKET", system)
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path / "run"))
    monkeypatch.setenv("NOVACRON_SOCKET", str(tmp_path / "given.sock"))
    assert paths.default_client_socket() == tmp_path / "given.sock"
    monkeypatch.delenv("NOVACRON_SOCKET")
    assert paths.default_client_socket() == tmp_path / "run" / "novacron" / "novacrond.sock"
    system.touch()  # a daemon installed on this host
    assert paths.default_client_socket() == system
