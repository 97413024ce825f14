from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron.sync_client import SyncClient
from tests.daemon_harness import Daemon
from tests.pki_harness import Pki, client, free_port, tls_daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon.under(tmp_path).start()
    yield d
    rc = d.stop()
    assert rc in (0, None), d.log_text()
    assert "Traceback" not in d.log_text(), d.log_text()


@pytest.fixture
def callers(tmp_path: Path) -> Iterator[tuple[SyncClient, SyncClient]]:
    """A daemon over mutual TLS, and two callers: an operator of tenant acme, an admin."""
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(tmp_path, pki, port).start()
    try:
        with (
            client(port, pki.issue("alice", "operator", ("acme",))) as alice,
            client(port, pki.issue("root", "admin", ())) as admin,
        ):
            yield alice, admin
    finally:
        assert d.stop() in (0, None)


def by_id(entry: dict[str, Any]) -> int:
    """Audit entries in the order they were written."""
    return int(entry["id"])
