"""novacron.sync_client: the blocking client's own parts (its calls against a real
server are in test_client.py, through the re-export in novacron.client)."""

from __future__ import annotations

import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron import client, errors
from novacron.sync_client import MAX_TIMEOUT_S, SyncClient, TlsFiles, split_address


def test_the_cli_and_the_blocking_client_do_not_import_trio() -> None:
    # a CLI command pays for every import at start (the trio client is not needed)
    probe = "import sys, novacron.cli.main; print(sorted(m for m in sys.modules if m == 'trio'))"
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == "[]"


def test_the_trio_client_module_re_exports_the_blocking_parts() -> None:
    assert client.SyncClient is SyncClient
    assert client.TlsFiles is TlsFiles
    assert client.split_address is split_address


@given(
    host=st.from_regex(r"[a-z0-9][a-z0-9.-]{0,30}", fullmatch=True),
    port=st.integers(min_value=1, max_value=65535),
)
def test_split_address_round_trips_host_and_port(host: str, port: int) -> None:
    assert split_address(f"{host}:{port}") == (host, port)


def test_split_address_takes_bracketed_ipv6_and_refuses_the_rest() -> None:
    assert split_address("[fd00::1]:7443") == ("fd00::1", 7443)
    for bad in ("node1", "node1:", ":7443", "node1:74x3", "", "node1:0", "[::1]:99999"):
        with pytest.raises(errors.InvalidParams):
            split_address(bad)


def test_unusable_tls_files_are_invalid_params(tmp_path: Path) -> None:
    missing = TlsFiles(tmp_path / "c.crt", tmp_path / "c.key", tmp_path / "ca.crt")
    with pytest.raises(errors.InvalidParams, match="TLS files unusable"):
        missing.context()


def test_an_absent_socket_is_unavailable(tmp_path: Path) -> None:
    with pytest.raises(errors.Unavailable, match="cannot connect"):
        SyncClient(tmp_path / "absent.sock")


def test_notifications_are_taken_apart_from_responses_which_wait_for_their_call() -> None:
    import socket

    from novacron.rpc import codec

    ours, theirs = socket.socketpair()
    c = SyncClient(sock=ours)
    try:
        assert c.notifications(0) == []  # nothing yet: no wait
        theirs.sendall(
            codec.encode_notification("console", {"console": 1, "data": b"a"})
            + codec.encode_response(1, None, {"ok": True})
            + codec.encode_notification("console", {"console": 1, "data": b"b"})
        )
        notes = c.notifications(5)
        assert [n.params[0]["data"] for n in notes] == [b"a", b"b"]
        assert c.notifications(0) == []
        assert c.call("session.hello") == {"ok": True}  # (msgid 1: the queued response)
        theirs.sendall(codec.encode_notification("protocol.error", {"code": "x", "message": "m"}))
        with pytest.raises(errors.ProtocolError):
            c.notifications(5)
        theirs.close()
        with pytest.raises(errors.Unavailable, match="novacrond"):
            c.notifications(5)
    finally:
        c.close()


@pytest.mark.parametrize("timeout", [0.0, -1.0, float("nan"), float("inf"), MAX_TIMEOUT_S + 1])
def test_a_timeout_that_is_not_a_positive_time_is_refused(timeout: float) -> None:
    a, b = socket.socketpair()
    with a, b, pytest.raises(errors.InvalidParams, match="timeout must be"):
        SyncClient(timeout=timeout, sock=a)


@pytest.mark.parametrize("timeout", [1e-9, 0.25, 90.5])
def test_a_timeout_is_the_sockets_receive_timeout_never_zero(timeout: float) -> None:
    """A timeout under a microsecond was written as 0, which the kernel reads as none.
    (The kernel keeps it in clock ticks: it reads back rounded up to one.)"""
    a, b = socket.socketpair()
    with a, b:
        SyncClient(timeout=timeout, sock=a)
        raw = a.getsockopt(socket.SOL_SOCKET, socket.SO_RCVTIMEO, struct.calcsize("ll"))
        sec, usec = struct.unpack("ll", raw)
        assert timeout <= sec + usec / 1e6 < timeout + 0.011
