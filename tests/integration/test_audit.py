"""The audit log through the real daemon and CLI: what is recorded, and that editing
or deleting a row in sqlite is caught by ``novacron audit verify``."""

from __future__ import annotations

import hashlib
import json
import sqlite3

import msgpack

from novacron import errors
from novacron.rpc import codec
from tests.daemon_harness import Daemon
from tests.integration.test_cli import cli
from tests.integration.test_protocol import read_messages


def test_changes_and_refusals_are_chained_and_tampering_is_caught(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="au1", tenant="acme", memory_mib=64)
        c.call("vm.start", name="au1")
        c.call("vm.list")  # reads are not audited
        try:
            c.call("vm.get", name="nope")
        except errors.NotFound:
            pass
        c.call("vm.stop", name="au1")
        c.call("auth.bind", principal="user:nobody", role="viewer", tenants=["acme"])
        tail = c.call("audit.tail", limit=10)
    assert [e["method"] for e in tail] == ["vm.create", "vm.start", "vm.stop", "auth.bind"]
    assert all(e["outcome"] == "ok" for e in tail)
    assert tail[0]["tenant"] == "acme" and tail[0]["principal"].startswith("unix:")
    assert len(tail[0]["params_digest"]) == 64 and "au1" not in json.dumps(tail)
    assert tail[1]["prev_hash"] == tail[0]["hash"]
    verified = json.loads(cli(daemon, "--json", "audit", "verify").stdout)
    assert verified == {"ok": True, "entries": 4, "head": tail[-1]["hash"]}
    assert "vm.start" in cli(daemon, "audit", "tail").stdout

    db = sqlite3.connect(daemon.state_dir / "state.db")
    with db:
        db.execute("UPDATE audit SET principal = 'unix:someone-else' WHERE id = 2")
    done = cli(daemon, "audit", "verify", check=False)
    assert done.returncode == 1
    assert "BROKEN at entry 2" in done.stderr and "edited" in done.stderr
    with db:
        db.execute("UPDATE audit SET principal = ? WHERE id = 2", (tail[1]["principal"],))
        db.execute("DELETE FROM audit WHERE id = 3")
    done = cli(daemon, "--json", "audit", "verify", check=False)
    assert done.returncode == 1
    assert json.loads(done.stdout)["first_bad"] == 3
    db.close()


def test_a_call_whose_params_hold_bin_keys_is_still_recorded(daemon: Daemon) -> None:
    """A map with a str and a bin key (both allowed on the wire) once made the digest
    fail, and the call went unrecorded; its entry now carries the documented digest."""
    params = [{"name": "au2", b"name": b"x"}]
    with daemon.raw() as s:
        s.sendall(msgpack.packb([codec.REQUEST, 7, "vm.start", params]))
        (reply,) = read_messages(s, 1)
    assert isinstance(reply, codec.Response) and reply.error is not None
    assert reply.error["code"] == "invalid_params"
    with daemon.client() as c:
        (entry,) = c.call("audit.tail", limit=1)
        assert c.call("audit.verify")["ok"]
    text = 'bin:[{"b:6e616d65":"b:78","s:name":"s:au2"}]'
    assert entry["method"] == "vm.start" and entry["outcome"] == "invalid_params"
    assert entry["params_digest"] == hashlib.sha256(text.encode()).hexdigest()
    assert "audit.append_failed" not in daemon.log_text()


def test_the_digest_of_plain_params_is_their_json(daemon: Daemon) -> None:
    with daemon.client() as c:
        c.call("vm.create", name="au3", memory_mib=64, vcpus=1)
        (entry,) = c.call("audit.tail", limit=1)
    text = '[{"memory_mib":64,"name":"au3","vcpus":1}]'
    assert entry["params_digest"] == hashlib.sha256(text.encode()).hexdigest()
