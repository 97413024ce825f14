"""The audit chain on a real store: appends link up, every kind of tampering is found."""

from __future__ import annotations

import sqlite3
from pathlib import Path

from novacron.auth.audit import AuditLog, params_digest, verify
from novacron.auth.identity import Identity
from novacron.blocking import Pool
from novacron.state.db import StateStore


async def filled(tmp_path: Path, n: int = 5) -> StateStore:
    store = StateStore(tmp_path / "s.db")
    log = AuditLog(store, Pool("sqlite", 1))
    who = Identity(kind="unix", user="root")
    for i in range(n):
        await log.record(who, "vm.start", {"name": f"vm{i}"}, "ok", "acme")
    return store


async def test_chain_verifies_and_finds_edits(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    assert verify(store)["ok"] and verify(store)["entries"] == 5
    db = sqlite3.connect(tmp_path / "s.db")
    with db:
        db.execute("UPDATE audit SET outcome = 'not_found' WHERE id = 4")
    bad = verify(store)
    assert (bad["ok"], bad["first_bad"], bad["entries"]) == (False, 4, 3)
    with db:
        db.execute("UPDATE audit SET outcome = 'ok' WHERE id = 4")
        db.execute("DELETE FROM audit WHERE id = 1")
    assert verify(store)["first_bad"] == 1
    db.close()
    store.close()


async def test_a_forged_row_with_a_fresh_hash_breaks_the_link(tmp_path: Path) -> None:
    from novacron.state.db import audit_hash

    store = await filled(tmp_path)
    row = store.audit_entries(1, 1)[0]  # entry 2
    row["principal"] = "unix:mallory"
    row["hash"] = audit_hash(row)  # recomputed, so entry 2 alone looks fine
    db = sqlite3.connect(tmp_path / "s.db")
    with db:
        db.execute(
            "UPDATE audit SET principal = ?, hash = ? WHERE id = 2", (row["principal"], row["hash"])
        )
    assert verify(store)["first_bad"] == 3  # entry 3 no longer points at entry 2
    db.close()
    store.close()


def test_digest_is_canonical() -> None:
    assert params_digest({"b": 1, "a": [1, 2]}) == params_digest({"a": [1, 2], "b": 1})
    assert params_digest({"a": b"\x00"}) != params_digest({"a": "x"})
