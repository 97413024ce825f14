"""How many connections a daemon keeps open, per identity and in all, with real TLS
clients and the real Unix socket; and the deadline of a message begun."""

from __future__ import annotations

import socket
import ssl
import time
from contextlib import ExitStack
from pathlib import Path

import msgpack
import pytest

from novacron import errors
from novacron.client import TlsFiles
from novacron.rpc import codec
from novacron.server.limits import FREE_PENDING
from tests.daemon_harness import Daemon
from tests.pki_harness import Pki, client, free_port, tls_daemon


def refusal(port: int, files: TlsFiles) -> errors.ProtocolError:
    """The error a call on a new connection gets (the test fails if the call works)."""
    with client(port, files, timeout=10) as c, pytest.raises(errors.ProtocolError) as info:
        c.call("session.hello")
    return info.value


def test_connections_past_a_share_or_the_total_are_told_why_and_closed(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    limits = ("--max-connections", "3", "--max-connections-per-identity", "2")
    d = tls_daemon(tmp_path, pki, port, *limits).start()
    alice = pki.issue("alice", "operator", ("acme",))
    bob = pki.issue("bob", "viewer", ("acme",))
    try:
        with ExitStack() as held:
            first = held.enter_context(client(port, alice))
            second = held.enter_context(client(port, alice))
            for c in (first, second):
                assert c.call("session.hello")["identity"]["user"] == "alice"
            refused = refusal(port, alice)
            assert refused.code == "too_many_connections"
            assert refused.message == "tls:alice has 2 connections open, at most 2 per identity"
            # bob has his own share, but the daemon's total is reached with him
            assert held.enter_context(client(port, bob)).call("auth.whoami")
            refused = refusal(port, bob)
            assert refused.code == "too_many_connections"
            assert refused.message == "the daemon has 3 connections open, at most 3"
            # the local admin is never refused, and sees the count
            with d.client() as admin:
                counted = admin.call("node.info")["daemon"]["connections"]
                assert counted == {
                    "open": 4,
                    "identities": 3,
                    "refused": 2,
                    "max": 3,
                    "max_per_identity": 2,
                }
            first.close()
            # the closed connection is counted out: alice may open one again
            deadline = time.monotonic() + 10
            while True:
                try:
                    with client(port, alice, timeout=10) as again:
                        assert again.call("session.hello")
                    break
                except errors.ProtocolError:
                    assert time.monotonic() < deadline, "alice's closed connection still counted"
                    time.sleep(0.1)
        log = d.log_text()
        assert "event=connection.refused principal=tls:alice" in log
    finally:
        rc = d.stop()
        assert rc in (0, None), d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()


def test_a_message_begun_and_not_finished_in_time_closes_its_connection(tmp_path: Path) -> None:
    daemon = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
        extra=["--message-timeout-s", "2"],
    ).start()
    try:
        served_after(daemon)
    finally:
        rc = daemon.stop()
        assert rc in (0, None), daemon.log_text()
        assert "Traceback" not in daemon.log_text(), daemon.log_text()


def served_after(daemon: Daemon) -> None:
    request = codec.encode_request(1, "session.hello", None)
    with daemon.client() as idle:  # a connection idle between messages is kept
        with socket.socket(socket.AF_UNIX) as sock:
            sock.settimeout(30)
            sock.connect(str(daemon.socket))
            sock.sendall(request[:5])
            began = time.monotonic()
            received = b""
            while chunk := sock.recv(65536):
                received += chunk
            took = time.monotonic() - began
        assert msgpack.unpackb(received) == [
            2,
            "protocol.error",
            [{"code": "timeout", "message": "a message was not complete 2 s after it began"}],
        ]
        assert 1.5 <= took < 20, took
        assert idle.call("session.hello")["server"] == "novacrond"


def tls_socket(port: int, files: TlsFiles) -> ssl.SSLSocket:
    """A raw TLS connection to the daemon with ``files``' certificate."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.load_cert_chain(files.cert, files.key)
    ctx.load_verify_locations(cafile=str(files.ca))
    raw = socket.create_connection(("127.0.0.1", port), timeout=30)
    return ctx.wrap_socket(raw, server_hostname="node1")


def test_requests_being_received_share_the_daemons_budget(tmp_path: Path) -> None:
    """Two identities each begin a large request; the second does not fit in what is
    left of ``max_pending_bytes`` and is told ``overloaded``; the first, which fits,
    completes and is answered, and the budget is free again after."""
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(tmp_path, pki, port, "--max-pending-bytes", "100000").start()
    alice = pki.issue("alice", "operator", ("acme",))
    bob = pki.issue("bob", "viewer", ("acme",))
    big = codec.encode_request(1, "session.hello", {"client": "x" * (FREE_PENDING + 90_000)})
    part = big[: FREE_PENDING + 60_000]
    try:
        with tls_socket(port, alice) as first, tls_socket(port, bob) as second:
            first.sendall(part)
            with d.client() as admin:  # once the daemon read it, it holds it
                deadline = time.monotonic() + 10
                while admin.call("node.info")["daemon"]["pending"]["bytes"] < 60_000:
                    assert time.monotonic() < deadline, "the first part never arrived"
                    time.sleep(0.05)
            second.sendall(part)
            received = b""
            while chunk := second.recv(65536):
                received += chunk
            assert msgpack.unpackb(received) == [
                2,
                "protocol.error",
                [
                    {
                        "code": "overloaded",
                        "message": "the daemon holds its limit of requests being received; "
                        "retry later",
                    }
                ],
            ]
            first.sendall(big[len(part) :])
            answer = codec.Decoder().feed(first.recv(65536))
            assert isinstance(answer[0], codec.Response) and answer[0].error is not None
            assert answer[0].error["code"] == "invalid_params"  # (answered: read whole)
        with d.client() as admin:
            deadline = time.monotonic() + 10
            while (pending := admin.call("node.info")["daemon"]["pending"])["bytes"]:
                assert time.monotonic() < deadline, pending
                time.sleep(0.05)
        assert (pending["max_bytes"], pending["refused"]) == (100_000, 1), pending
        assert 60_000 <= pending["peak_bytes"] <= 100_000, pending
    finally:
        rc = d.stop()
        assert rc in (0, None), d.log_text()
        assert "Traceback" not in d.log_text(), d.log_text()
