"""The sqlite state store: WAL mode, parameterised SQL only, versioned migrations.

Methods here are blocking; the daemon calls them through :class:`novacron.blocking.Pool`
so they run on a worker thread, one at a time. Each public write is one transaction:
a crash leaves either the old or the new row, never half of one.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class VmRecord:
    name: str
    uuid: str
    tenant: str
    spec: dict[str, Any]
    desired_state: str
    created_at: float
    updated_at: float
    placement: dict[str, Any] | None = None


def _migrations() -> list[tuple[int, str]]:
    folder = resources.files("novacron.state") / "schema"
    found = []
    for entry in folder.iterdir():
        if entry.name.endswith(".sql"):
            found.append((int(entry.name.split("_", 1)[0]), entry.read_text(encoding="utf-8")))
    return sorted(found)


def _statements(script: str) -> Iterator[str]:
    """Splits a migration script into statements (comments may contain ';')."""
    pending = ""
    for line in script.splitlines(keepends=True):
        pending += line
        if sqlite3.complete_statement(pending):
            yield pending
            pending = ""
    if pending.strip() and not all(
        part.strip().startswith("--") or not part.strip() for part in pending.splitlines()
    ):
        raise ValueError("migration script ends with an incomplete statement")


class StateStore:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._db = sqlite3.connect(path, check_same_thread=False, isolation_level=None)
        self._db.row_factory = sqlite3.Row
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        self._db.execute("PRAGMA busy_timeout=5000")
        self.schema_version = self._migrate()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield self._db
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _migrate(self) -> int:
        current: int = self._db.execute("PRAGMA user_version").fetchone()[0]
        for version, script in _migrations():
            if version <= current:
                continue
            with self._tx() as db:
                for statement in _statements(script):
                    db.execute(statement)
                # PRAGMA cannot take parameters; version is an int from a file name
                db.execute(f"PRAGMA user_version = {int(version)}")
            current = version
        return current

    # -- VMs ---------------------------------------------------------------------------

    @staticmethod
    def _vm(row: sqlite3.Row) -> VmRecord:
        return VmRecord(
            name=row["name"],
            uuid=row["uuid"],
            tenant=row["tenant"],
            spec=json.loads(row["spec"]),
            desired_state=row["desired_state"],
            created_at=row["created_at"],
            updated_at=row["updated_at"],
            placement=json.loads(row["placement"]) if row["placement"] else None,
        )

    def insert_vm(
        self,
        name: str,
        uuid: str,
        tenant: str,
        spec: dict[str, Any],
        placement: dict[str, Any] | None = None,
    ) -> VmRecord:
        now = time.time()
        placed = json.dumps(placement, sort_keys=True) if placement is not None else None
        with self._tx() as db:
            db.execute(
                "INSERT INTO vms (name, uuid, tenant, spec, desired_state, created_at,"
                " updated_at, placement) VALUES (?, ?, ?, ?, 'stopped', ?, ?, ?)",
                (name, uuid, tenant, json.dumps(spec, sort_keys=True), now, now, placed),
            )
        return VmRecord(name, uuid, tenant, spec, "stopped", now, now, placement)

    def get_vm(self, name: str) -> VmRecord | None:
        row = self._db.execute("SELECT * FROM vms WHERE name = ?", (name,)).fetchone()
        return self._vm(row) if row else None

    def list_vms(self) -> list[VmRecord]:
        return [self._vm(r) for r in self._db.execute("SELECT * FROM vms ORDER BY name")]

    def set_desired_state(self, name: str, state: str) -> float:
        """Records what the operator asked for; returns the new ``updated_at``."""
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE vms SET desired_state = ?, updated_at = ? WHERE name = ?",
                (state, now, name),
            )
        return now

    def set_uuid(self, name: str, uuid: str) -> float:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "UPDATE vms SET uuid = ?, updated_at = ? WHERE name = ?",
                (uuid, now, name),
            )
        return now

    def delete_vm(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM vms WHERE name = ?", (name,)).rowcount > 0

    def integrity_check(self) -> str:
        result: str = self._db.execute("PRAGMA integrity_check").fetchone()[0]
        return result
