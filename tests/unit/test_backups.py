"""Backups of the state store: a consistent, checked, self-contained copy that a store
opens as it was; the newest ``kept`` stay; a failure leaves nothing half-written."""

from __future__ import annotations

import sqlite3
import stat
import threading
from pathlib import Path

import pytest

from novacron import errors
from novacron.auth import audit
from novacron.state.backups import Backups
from novacron.state.db import StateStore

DAY = 86_400.0


def filled(path: Path, vms: int = 3) -> StateStore:
    store = StateStore(path)
    for i in range(vms):
        store.insert_vm(f"vm{i}", f"00000000-0000-4000-8000-{i:012d}", "acme", {"name": f"vm{i}"})
    store.set_binding("user:alice", "operator", ["acme"])
    for i in range(5):
        store.append_audit(1000.0 + i, "unix:root", "acme", "vm.create", f"d{i}", "ok")
    return store


def test_a_backup_is_the_store_as_it_was_in_one_checked_file(tmp_path: Path) -> None:
    store = filled(tmp_path / "state.db")
    backups = Backups(tmp_path / "backups", kept=7)
    made = store.backup(backups)
    path = Path(made["path"])
    assert path.parent == tmp_path / "backups" and path.name.startswith("state-")
    assert (made["vms"], made["audit_entries"], made["integrity"]) == (3, 5, "ok")
    assert made["schema_version"] == store.schema_version and made["bytes"] == path.stat().st_size
    assert made["kept"] == [path.name] and made["removed"] == []
    # only the owner reads it (it holds the audit log and the bindings)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert sorted(p.name for p in path.parent.iterdir()) == [path.name]  # no -wal, no partial
    store.insert_vm("later", "00000000-0000-4000-8000-00000000ffff", "acme", {"name": "later"})
    store.close()

    copy = sqlite3.connect(path)
    assert copy.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    copy.close()
    restored = StateStore(path)  # what a restore opens
    assert [v.name for v in restored.list_vms()] == ["vm0", "vm1", "vm2"]  # not "later"
    assert restored.list_bindings() == [("user:alice", "operator", ["acme"])]
    assert audit.verify(restored)["ok"] is True  # the chain came whole
    restored.close()


def test_the_newest_are_kept(tmp_path: Path) -> None:
    store = filled(tmp_path / "state.db", vms=1)
    backups = Backups(tmp_path / "backups", kept=2)
    names = []
    for day in range(4):
        made = backups.take(store._db, now=day * DAY)
        names.append(Path(made["path"]).name)
    assert names == sorted(names)  # named so that they sort by time
    assert backups.names() == names[2:]
    assert made["removed"] == [names[1]] and made["kept"] == names[2:]
    # several in one second get names of their own, in order, and a new one is never the
    # one rotated away (the names of a second sort by their count, not by a suffix)
    for n in range(1, 12):
        again = backups.take(store._db, now=3 * DAY)
        assert Path(again["path"]).name == names[3].replace("-000.db", f"-{n:03d}.db")
        assert Path(again["path"]).exists() and backups.names()[-1] == Path(again["path"]).name
        assert len(backups.names()) == 2
    store.close()


def test_a_backup_that_cannot_be_written_fails_cleanly(tmp_path: Path) -> None:
    store = filled(tmp_path / "state.db", vms=1)
    blocked = tmp_path / "backups"
    blocked.write_text("a file where the directory goes")
    with pytest.raises(errors.Internal, match="backup failed"):
        store.backup(Backups(blocked, kept=3))
    assert blocked.read_text() == "a file where the directory goes"
    # a copy that fails half-way (here: its source is gone) leaves nothing behind
    backups = Backups(tmp_path / "other", kept=3)
    gone = sqlite3.connect(tmp_path / "state.db")
    gone.close()
    with pytest.raises(errors.Internal, match="backup failed"):
        backups.take(gone)
    assert list((tmp_path / "other").iterdir()) == []
    store.close()


def test_a_backup_taken_while_the_store_is_written_is_consistent(tmp_path: Path) -> None:
    """Writers go on (another connection to the same file, as a second process would);
    every copy holds a whole number of committed writes and a sound audit chain."""
    store = filled(tmp_path / "state.db", vms=0)
    writer = StateStore(tmp_path / "state.db")
    stop = threading.Event()

    def write() -> None:
        i = 0
        while not stop.is_set():
            writer.append_audit(2000.0 + i, "unix:root", None, "vm.start", f"w{i}", "ok")
            i += 1

    t = threading.Thread(target=write)
    t.start()
    try:
        backups = Backups(tmp_path / "backups", kept=20)
        copies = [Path(backups.take(store._db, now=i)["path"]) for i in range(10)]
    finally:
        stop.set()
        t.join()
        writer.close()
    counts = []
    for path in copies:
        copy = StateStore(path)
        assert audit.verify(copy)["ok"] is True
        counts.append(len(copy.audit_entries()))
        copy.close()
    assert counts == sorted(counts) and counts[-1] > 5  # the writer ran meanwhile
    store.close()
