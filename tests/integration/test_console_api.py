"""``vm.console.*`` against the real daemon on libvirt's test driver, whose domains have
no serial port: every refusal is a stable code and changes nothing. The console itself,
on a real guest: ``tests/system/test_console.py``."""

from __future__ import annotations

import socket

import msgpack
import pytest

from novacron import errors
from novacron.rpc import codec
from tests.daemon_harness import Daemon


def test_a_vm_without_a_pty_console_is_refused_with_conflict(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="c1", memory_mib=64, start=True)
        with pytest.raises(errors.Conflict, match="no interactive console"):
            c.call("vm.console.open", name="c1")
        c.call("vm.stop", name="c1")
        with pytest.raises(errors.Conflict, match="not running"):
            c.call("vm.console.open", name="c1", force=True)
        with pytest.raises(errors.NotFound):
            c.call("vm.console.open", name="nope")
        assert c.call("vm.get", name="c1")["state"] == "stopped"  # nothing changed


@pytest.mark.parametrize(
    ("params", "error"),
    [
        ({"console": 1, "data": b"x"}, errors.NotFound),  # none open on this connection
        ({"console": 0, "data": b"x"}, errors.InvalidParams),
        ({"console": "1", "data": b"x"}, errors.InvalidParams),
        ({"console": 1}, errors.InvalidParams),
        ({"console": 1, "data": 5}, errors.InvalidParams),
        ({"console": 1, "data": b""}, errors.InvalidParams),
        ({"console": 1, "data": b"x" * (64 * 1024 + 1)}, errors.InvalidParams),
        ({"console": 1, "data": b"x", "extra": 1}, errors.InvalidParams),
    ],
)
def test_writes_to_no_console_or_with_bad_data_are_refused(
    daemon: Daemon, params: dict[str, object], error: type[errors.NovaCronError]
) -> None:
    with daemon.client() as c:
        # an unknown console is not_found; malformed parameters are invalid_params
        with pytest.raises(error):
            c.call("vm.console.write", **params)
        with pytest.raises(errors.NotFound):
            c.call("vm.console.close", console=7)
        assert c.call("session.hello")["server"] == "novacrond"  # still serving


def test_console_calls_are_audited_on_open_only(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="c2", memory_mib=64, start=True)
        with pytest.raises(errors.Conflict):
            c.call("vm.console.open", name="c2")
        with pytest.raises(errors.NotFound):
            c.call("vm.console.write", console=3, data=b"secret keystrokes")
        methods = [e["method"] for e in c.call("audit.tail", limit=20)]
    assert "vm.console.open" in methods
    assert "vm.console.write" not in methods  # (a session's keystrokes are not kept)


def test_text_data_is_taken_as_utf8(daemon: Daemon) -> None:
    """(Text reaches the same check as bytes: a string, not a number, passes to the
    console lookup.)"""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    sock.connect(str(daemon.socket))
    try:
        sock.sendall(codec.encode_request(1, "vm.console.write", {"console": 2, "data": "é"}))
        unpacker = msgpack.Unpacker(raw=False)
        while True:
            unpacker.feed(sock.recv(65536))
            for message in unpacker:
                assert message[0] == 1 and message[1] == 1
                assert message[2]["code"] == "not_found"
                return
    finally:
        sock.close()


def test_the_log_of_a_test_driver_vm_is_refused_and_bad_reads_are_invalid(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="c3", memory_mib=64)
        with pytest.raises(errors.Conflict, match="no console log"):
            c.call("vm.console.log", name="c3")
        for bad in ({"limit": 0}, {"limit": (1 << 20) + 1}, {"offset": -1}, {"offset": "0"}):
            with pytest.raises(errors.InvalidParams):
                c.call("vm.console.log", name="c3", **bad)
        with pytest.raises(errors.NotFound):
            c.call("vm.console.log", name="ghost")
