"""Bad bytes, oversized messages and pipelining on real sockets."""

from __future__ import annotations

import socket

import msgpack
import pytest

from novacron.rpc import codec
from tests.daemon_harness import Daemon


def read_messages(sock: socket.socket, count: int) -> list[codec.Message]:
    decoder = codec.Decoder()
    out: list[codec.Message] = []
    while len(out) < count:
        data = sock.recv(65536)
        if not data:
            break
        out.extend(decoder.feed(data))
    return out


def read_responses(sock: socket.socket, count: int) -> list[codec.Response]:
    """``count`` messages, each of which must be a response."""
    out = read_messages(sock, count)
    responses = [m for m in out if isinstance(m, codec.Response)]
    assert len(responses) == len(out), out
    return responses


def read_until_closed(sock: socket.socket) -> list[codec.Message]:
    decoder = codec.Decoder()
    out: list[codec.Message] = []
    while data := sock.recv(65536):
        out.extend(decoder.feed(data))
    return out


GARBAGE = [
    pytest.param(b"\xc1", id="never-used-byte"),
    pytest.param(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", id="http"),
    pytest.param(msgpack.packb({"method": "vm.list"}), id="map-not-array"),
    pytest.param(msgpack.packb([0, "one", "vm.list", []]), id="string-msgid"),
    pytest.param(msgpack.packb([0, 1, "vm.list", {"name": "x"}]), id="params-map"),
    pytest.param(msgpack.packb([9, 1, "vm.list", []]), id="bad-type"),
    pytest.param(b"\x94\x00\x01\xa2\xff\xfe\x90", id="invalid-utf8"),
]


@pytest.mark.parametrize("payload", GARBAGE)
def test_garbage_gets_protocol_error_and_close(daemon: Daemon, payload: bytes) -> None:
    with daemon.raw() as bystander, daemon.raw() as bad:
        bad.sendall(payload)
        messages = read_until_closed(bad)
        assert len(messages) == 1
        note = messages[0]
        assert isinstance(note, codec.Notification)
        assert note.method == "protocol.error"
        assert note.params[0]["code"] == "invalid_request"
        assert note.params[0]["message"]
        # another connection carries on undisturbed
        bystander.sendall(codec.encode_request(5, "session.hello"))
        (reply,) = read_messages(bystander, 1)
        assert isinstance(reply, codec.Response) and reply.msgid == 5 and reply.error is None


def test_good_calls_before_garbage_are_answered(daemon: Daemon) -> None:
    with daemon.raw() as sock:
        sock.sendall(codec.encode_request(1, "vm.list") + b"\xc1")
        messages = read_until_closed(sock)
    kinds = {type(m).__name__ for m in messages}
    assert kinds == {"Response", "Notification"}
    response = next(m for m in messages if isinstance(m, codec.Response))
    assert response.msgid == 1 and response.result == []


def test_oversized_message_is_too_large(daemon: Daemon) -> None:
    with daemon.raw() as sock:
        blob = b"x" * (8 * 1024 * 1024 + 100)
        try:
            sock.sendall(codec.encode_request(1, "vm.create", {"name": "a", "cmdline": blob}))
        except (BrokenPipeError, ConnectionResetError):
            pass  # the daemon may close before it has read everything
        messages = read_until_closed(sock)
    assert messages, "expected a protocol.error notification"
    note = messages[0]
    assert isinstance(note, codec.Notification) and note.params[0]["code"] == "too_large"
    with daemon.client() as c:
        assert c.call("vm.list") == []


def test_message_just_under_the_limit_is_served(daemon: Daemon) -> None:
    with daemon.raw() as sock:
        sock.sendall(codec.encode_request(1, "session.hello", {"client": "x" * 100}))
        big = codec.encode_request(2, "vm.get", {"name": "a" * (7 * 1024 * 1024)})
        sock.sendall(big)
        replies = read_messages(sock, 2)
    by_id = {r.msgid: r for r in replies if isinstance(r, codec.Response)}
    assert by_id[1].error is None
    assert by_id[2].error["code"] == "invalid_params"


def test_wrong_param_shape_is_invalid_params_and_connection_stays(daemon: Daemon) -> None:
    with daemon.raw() as sock:
        sock.sendall(msgpack.packb([0, 1, "vm.get", ["positional"]]))
        sock.sendall(msgpack.packb([0, 2, "vm.get", [{"name": "a"}, {}]]))
        sock.sendall(msgpack.packb([0, 3, "vm.get", [{"name": 7}]]))
        sock.sendall(codec.encode_request(4, "session.hello"))
        replies = read_responses(sock, 4)
    codes = {r.msgid: (r.error or {}).get("code") for r in replies}
    assert codes == {1: "invalid_params", 2: "invalid_params", 3: "invalid_params", 4: None}


def test_non_string_map_keys_are_a_protocol_error(daemon: Daemon) -> None:
    # only str/bin keys are accepted: integer keys invite hash-collision floods
    with daemon.raw() as sock:
        sock.sendall(msgpack.packb([0, 3, "vm.get", [{1: "a"}]]))
        (note,) = read_until_closed(sock)
    assert isinstance(note, codec.Notification) and note.method == "protocol.error"


def test_a_key_twice_in_a_map_is_a_protocol_error(daemon: Daemon) -> None:
    # {"name": "a", "name": "b"}: which one counts would be up to the reader
    twice = b"\x94\x00\x03\xa6vm.get\x91\x82\xa4name\xa1a\xa4name\xa1b"
    with daemon.raw() as sock:
        sock.sendall(codec.encode_request(1, "session.hello") + twice)
        hello, note = read_until_closed(sock)
    assert isinstance(hello, codec.Response) and hello.error is None
    assert isinstance(note, codec.Notification) and note.method == "protocol.error"
    assert note.params == [
        {"code": "invalid_request", "message": "a map holds the key 'name' twice"}
    ]
    with daemon.client() as c:
        assert c.call("session.hello")["server"] == "novacrond"


def test_pipelined_responses_carry_their_msgids(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="p1")
    with daemon.raw() as sock:
        batch = b"".join(
            codec.encode_request(
                i, "vm.get" if i % 2 else "session.hello", {"name": "p1"} if i % 2 else None
            )
            for i in range(100)
        )
        sock.sendall(batch)
        replies = read_responses(sock, 100)
    assert sorted(r.msgid for r in replies) == list(range(100))
    for r in replies:
        assert r.error is None
        if r.msgid % 2:
            assert r.result["name"] == "p1"
        else:
            assert r.result["protocol"] == 1


def test_client_notifications_are_ignored(daemon: Daemon) -> None:
    with daemon.raw() as sock:
        sock.sendall(codec.encode_notification("whatever", {"a": 1}))
        sock.sendall(codec.encode_request(1, "session.hello"))
        (reply,) = read_responses(sock, 1)
    assert reply.msgid == 1 and reply.error is None


def test_client_responses_answer_nothing_and_are_ignored(daemon: Daemon) -> None:
    with daemon.raw() as sock:
        sock.sendall(codec.encode_response(7, None, {"x": 1}))
        sock.sendall(codec.encode_response(8, {"code": "internal", "message": "?"}, None))
        sock.sendall(codec.encode_request(1, "session.hello"))
        (reply,) = read_responses(sock, 1)
    assert reply.msgid == 1 and reply.error is None
