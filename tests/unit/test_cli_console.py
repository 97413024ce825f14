"""novacron.cli.console: the relay between standard input, the daemon's console
notifications and standard output, with a socket pair standing for the daemon's end of
the connection (the whole command against a real guest: tests/system/test_console.py)."""

from __future__ import annotations

import argparse
import io
import os
import socket
import threading
from typing import Any

import pytest

from novacron import errors
from novacron.cli.console import relay, run_console
from novacron.rpc import codec
from novacron.sync_client import SyncClient


def _peer(sock: socket.socket, writes: list[Any], replies: list[bytes]) -> None:
    """Answers every request (recording its method and params) after sending
    ``replies``; ends when the client closes."""
    with sock:
        sock.sendall(b"".join(replies))
        decoder = codec.Decoder(1 << 20)
        while data := sock.recv(65536):
            for message in decoder.feed(data):
                assert isinstance(message, codec.Request)
                writes.append((message.method, message.params))
                sock.sendall(codec.encode_response(message.msgid, None, {"written": 1}))


def _run(stdin_bytes: bytes, replies: list[bytes], linger: float = 0.3) -> tuple[Any, ...]:
    ours, theirs = socket.socketpair()
    writes: list[Any] = []
    peer = threading.Thread(target=_peer, args=(theirs, writes, replies), daemon=True)
    peer.start()
    read_end, write_end = os.pipe()
    os.write(write_end, stdin_bytes)
    os.close(write_end)
    out = io.BytesIO()
    client = SyncClient(sock=ours)
    try:
        reason = relay(client, 5, read_end, out, linger)
    finally:
        client.close()
        os.close(read_end)
        peer.join(5)
    return reason, out.getvalue(), writes


def test_output_of_its_console_is_printed_and_input_is_written() -> None:
    replies = [
        codec.encode_notification("console", {"console": 5, "data": b"hello "}),
        codec.encode_notification("console", {"console": 9, "data": b"not ours"}),
        codec.encode_notification("event", {"topic": "vm.state"}),
        codec.encode_notification("console", {"console": 5, "data": b"world"}),
    ]
    reason, printed, writes = _run(b"ls\r", replies)
    assert reason is None and printed == b"hello world"
    assert writes == [("vm.console.write", [{"console": 5, "data": b"ls\r"}])]


def test_ctrl_right_bracket_leaves_and_what_follows_it_is_not_sent() -> None:
    reason, _, writes = _run(b"ab\x1dcd", [], linger=30)  # (leaves at once, no linger)
    assert reason is None
    assert writes == [("vm.console.write", [{"console": 5, "data": b"ab"}])]


def test_the_consoles_end_is_reported() -> None:
    closed = {"console": 5, "vm": "v", "reason": "ended", "message": "the VM stopped"}
    replies = [codec.encode_notification("console.closed", closed)]
    reason, _, _ = _run(b"", replies, linger=30)
    assert reason == "the VM stopped"


def test_watching_prints_output_sends_nothing_and_ends_with_the_console() -> None:
    ours, theirs = socket.socketpair()
    writes: list[Any] = []
    closed = {"console": 5, "vm": "v", "reason": "taken", "message": "taken over"}
    replies = [
        codec.encode_notification("console", {"console": 5, "data": b"# uptime\r\n"}),
        codec.encode_notification("console.closed", closed),
    ]
    peer = threading.Thread(target=_peer, args=(theirs, writes, replies), daemon=True)
    peer.start()
    out = io.BytesIO()
    client = SyncClient(sock=ours)
    try:
        reason = relay(client, 5, None, out, 0)
    finally:
        client.close()
        peer.join(5)
    assert (reason, out.getvalue(), writes) == ("taken over", b"# uptime\r\n", [])


def test_a_refused_open_hints_at_watching(capsys: pytest.CaptureFixture[str]) -> None:
    ours, theirs = socket.socketpair()

    def refuse(sock: socket.socket) -> None:
        with sock:
            decoder = codec.Decoder(1 << 20)
            while data := sock.recv(65536):
                for message in decoder.feed(data):
                    assert isinstance(message, codec.Request)
                    denied = errors.PermissionDenied("viewer may not call vm.console.open")
                    sock.sendall(codec.encode_response(message.msgid, denied.to_wire(), None))

    peer = threading.Thread(target=refuse, args=(theirs,), daemon=True)
    peer.start()
    client = SyncClient(sock=ours)
    args = argparse.Namespace(vm="web1", watch=False, force=False, scrollback=0, linger=1.0)
    try:
        with pytest.raises(errors.PermissionDenied):
            run_console(client, args)
    finally:
        client.close()
        peer.join(5)
    assert "--watch" in capsys.readouterr().err
