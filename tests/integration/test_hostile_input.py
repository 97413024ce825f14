"""A bounded fuzz run of random and near-valid messages on the live daemon's socket:
the daemon answers (an error) or closes the offending connection, never hangs or
crashes, and keeps serving a bystander throughout. (The injection sweep over every
string parameter runs against real libvirt: ``tests/system/test_injection.py``.)"""

from __future__ import annotations

import socket

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron.auth import policy
from novacron.rpc import codec
from tests.daemon_harness import Daemon
from tests.integration.test_protocol import read_messages


def test_fuzzing_the_live_socket(daemon: Daemon) -> None:
    requests = st.one_of(
        st.binary(max_size=300),
        st.builds(
            lambda kind, msgid, method, params: msgpack.packb([kind, msgid, method, params]),
            st.integers(-2, 5),
            st.one_of(st.integers(-(2**33), 2**33), st.text(max_size=4), st.none()),
            st.one_of(st.sampled_from(sorted(policy.METHOD_PERMISSIONS)), st.text(max_size=20)),
            st.one_of(
                st.lists(
                    st.dictionaries(
                        st.text(max_size=12),
                        st.one_of(
                            st.integers(-(2**63), 2**64 - 1),
                            st.text(max_size=30),
                            st.booleans(),
                            st.none(),
                        ),
                        max_size=4,
                    ),
                    max_size=2,
                ),
                st.integers(-(2**63), 2**64 - 1),
            ),
        ),
    )

    with daemon.raw() as bystander:

        @settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))
        @given(st.lists(requests, min_size=1, max_size=4))
        def one_connection(chunks: list[bytes]) -> None:
            with socket.socket(socket.AF_UNIX) as s:
                s.settimeout(10)
                s.connect(str(daemon.socket))
                for chunk in chunks:
                    try:
                        s.sendall(chunk)
                    except (BrokenPipeError, ConnectionResetError):
                        break  # closed after garbage: allowed
                s.shutdown(socket.SHUT_WR)
                try:
                    while s.recv(65536):  # answers, then the close; never a hang
                        pass
                except ConnectionResetError:
                    pass
            bystander.sendall(codec.encode_request(1, "session.hello"))
            (reply,) = read_messages(bystander, 1)
            assert isinstance(reply, codec.Response) and reply.error is None

        one_connection()
    assert "Traceback" not in daemon.log_text()
    with daemon.client() as c:
        assert c.call("session.hello")["server"] == "novacrond"
