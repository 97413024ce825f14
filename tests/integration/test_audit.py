"""The audit log through the real daemon and CLI: what is recorded, and that editing
or deleting a row in sqlite is caught by ``novacron audit verify``."""

from __future__ import annotations

import json
import sqlite3

from novacron import errors
from tests.daemon_harness import Daemon
from tests.integration.test_cli import cli


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
