"""pytest-benchmark view of the same round trips as ``rpc_bench.py`` (mean/median/IQR).

    .venv/bin/pytest bench/test_rpc_roundtrip.py --benchmark-enable \
        --benchmark-columns=min,median,mean,iqr,ops

``rpc_bench.py`` reports the p50/p99 and pipelined calls/s the issue asks for; this gives
pytest-benchmark's statistics for the single-client round trip, side by side.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import libvirt
import pytest

from bench.rpc_bench import start_daemon
from novacron.client import SyncClient


@pytest.fixture(scope="module")
def novacron_client() -> Iterator[SyncClient]:
    with tempfile.TemporaryDirectory() as tmp:
        proc, sock = start_daemon(Path(tmp))
        try:
            with SyncClient(sock) as client:
                yield client
        finally:
            proc.terminate()
            proc.wait(30)


@pytest.fixture(scope="module")
def libvirt_conn() -> Iterator[Any]:
    libvirt.registerErrorHandler(lambda *_: None, None)
    try:
        conn = libvirt.open("qemu:///system")
    except libvirt.libvirtError as exc:
        pytest.skip(f"qemu:///system unavailable: {exc.get_error_message()}")
    yield conn
    conn.close()


def test_novacron_session_hello(benchmark: Any, novacron_client: SyncClient) -> None:
    result = benchmark(novacron_client.call, "session.hello")
    assert result["protocol"] == 1


def test_libvirt_get_version(benchmark: Any, libvirt_conn: Any) -> None:
    assert benchmark(libvirt_conn.getVersion) > 0
