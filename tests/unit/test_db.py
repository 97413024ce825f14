from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest

from novacron.state.db import StateStore, VmRecord


def vm(store: StateStore, name: str) -> VmRecord:
    got = store.get_vm(name)
    assert got is not None, name
    return got


@pytest.fixture
def store(tmp_path: Path) -> Iterator[StateStore]:
    s = StateStore(tmp_path / "state.db")
    yield s
    s.close()


def test_wal_and_schema_version(store: StateStore) -> None:
    mode = store._db.execute("PRAGMA journal_mode").fetchone()[0]
    assert mode == "wal"
    assert store.schema_version >= 1
    assert store.integrity_check() == "ok"


def test_reopen_keeps_data_and_does_not_remigrate(tmp_path: Path) -> None:
    s = StateStore(tmp_path / "a.db")
    s.insert_vm("v1", "u1", "t", {"vcpus": 1, "memory_mib": 64})
    s.close()
    s2 = StateStore(tmp_path / "a.db")
    assert vm(s2, "v1").spec == {"vcpus": 1, "memory_mib": 64}
    s2.close()


def test_crud(store: StateStore) -> None:
    rec = store.insert_vm("v1", "u1", "t", {"a": 1})
    assert rec.desired_state == "stopped"
    store.set_desired_state("v1", "running")
    store.set_uuid("v1", "u2")
    got = vm(store, "v1")
    assert (got.desired_state, got.uuid) == ("running", "u2")
    assert [r.name for r in store.list_vms()] == ["v1"]
    assert store.delete_vm("v1")
    assert not store.delete_vm("v1")
    assert store.get_vm("v1") is None


def test_a_record_is_written_with_its_desired_state(store: StateStore) -> None:
    """A VM that arrives running is recorded so in one write: no reader (or restart)
    ever finds it meant to be stopped."""
    rec = store.insert_vm("v1", "u1", "t", {}, None, "paused")
    assert rec.desired_state == "paused"
    assert store.get_vm("v1") == rec


def test_duplicate_name_is_refused_and_changes_nothing(store: StateStore) -> None:
    store.insert_vm("v1", "u1", "t", {})
    with pytest.raises(sqlite3.IntegrityError):
        store.insert_vm("v1", "u9", "t", {})
    assert vm(store, "v1").uuid == "u1"


def test_hostile_names_are_data(store: StateStore) -> None:
    evil = "x'); DROP TABLE vms; --"
    store.insert_vm(evil, "u1", "t", {})
    assert vm(store, evil).name == evil
    assert len(store.list_vms()) == 1


def test_invalid_desired_state_is_refused(store: StateStore) -> None:
    store.insert_vm("v1", "u1", "t", {})
    with pytest.raises(sqlite3.IntegrityError):
        store.set_desired_state("v1", "flying")
    assert vm(store, "v1").desired_state == "stopped"


def test_node_settings_set_replace_remove_and_persist(tmp_path: Path) -> None:
    path = tmp_path / "settings.db"
    s = StateStore(path)
    assert s.get_setting("cordon") is None
    s.set_setting("cordon", {"reason": "a"})
    s.set_setting("cordon", {"reason": "b", "since": 1.5})
    s.set_setting("other", [1, 2])
    s.close()
    s = StateStore(path)
    assert s.get_setting("cordon") == {"reason": "b", "since": 1.5}
    s.set_setting("cordon", None)
    s.set_setting("cordon", None)  # (removing what is not there changes nothing)
    assert s.get_setting("cordon") is None and s.get_setting("other") == [1, 2]
    s.close()
