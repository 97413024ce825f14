"""The sqlite state store: WAL mode, parameterised SQL only, versioned migrations.

Methods here are blocking; the daemon calls them through :class:`novacron.blocking.Pool`
so they run on a worker thread, one at a time. Each public write is one transaction:
a crash leaves either the old or the new row, never half of one.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

from novacron.state.backups import Backups

GENESIS = "0" * 64


def audit_hash(entry: dict[str, Any]) -> str:
    """sha256 over an audit entry's fields (canonical JSON) and its predecessor's hash."""
    fields = [
        entry["id"],
        entry["ts"],
        entry["principal"],
        entry["tenant"],
        entry["method"],
        entry["params_digest"],
        entry["outcome"],
        entry["prev_hash"],
    ]
    return hashlib.sha256(json.dumps(fields, separators=(",", ":")).encode()).hexdigest()


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


def _op_row(op: dict[str, Any]) -> dict[str, Any]:
    row = {k: op.get(k) for k in ("id", "kind", "vm", "tenant", "peer", "state")}
    row["params"] = json.dumps(op.get("params") or {}, sort_keys=True)
    for key in ("result", "error"):
        row[key] = json.dumps(op[key], sort_keys=True) if op.get(key) is not None else None
    row["created_at"], row["updated_at"] = op["created_at"], op["updated_at"]
    return row


def _op_doc(row: sqlite3.Row) -> dict[str, Any]:
    doc = dict(row)
    for key in ("params", "result", "error"):
        doc[key] = json.loads(doc[key]) if doc[key] else None
    return doc


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
        desired_state: str = "stopped",
    ) -> VmRecord:
        """A new VM's record; ``desired_state`` is written with it (a VM that arrives
        running is never recorded as meant to be stopped, not even for a moment)."""
        now = time.time()
        placed = json.dumps(placement, sort_keys=True) if placement is not None else None
        with self._tx() as db:
            db.execute(
                "INSERT INTO vms (name, uuid, tenant, spec, desired_state, created_at,"
                " updated_at, placement) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (
                    name,
                    uuid,
                    tenant,
                    json.dumps(spec, sort_keys=True),
                    desired_state,
                    now,
                    now,
                    placed,
                ),
            )
        return VmRecord(name, uuid, tenant, spec, desired_state, now, now, placement)

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

    def set_spec(self, name: str, spec: dict[str, Any], placement: dict[str, Any] | None) -> float:
        """Replaces a VM's spec and placement (a NIC attached, a resize); returns the new
        ``updated_at``."""
        now = time.time()
        placed = json.dumps(placement, sort_keys=True) if placement is not None else None
        with self._tx() as db:
            db.execute(
                "UPDATE vms SET spec = ?, placement = ?, updated_at = ? WHERE name = ?",
                (json.dumps(spec, sort_keys=True), placed, now, name),
            )
        return now

    # -- networks ------------------------------------------------------------------------

    def insert_network(self, name: str, tenant: str, kind: str, spec: dict[str, Any]) -> None:
        now = time.time()
        with self._tx() as db:
            db.execute(
                "INSERT INTO networks (name, tenant, kind, spec, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (name, tenant, kind, json.dumps(spec, sort_keys=True), now, now),
            )

    def list_networks(self) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM networks ORDER BY name")
        return [{**dict(r), "spec": json.loads(r["spec"])} for r in rows]

    def delete_network(self, name: str) -> bool:
        with self._tx() as db:
            return db.execute("DELETE FROM networks WHERE name = ?", (name,)).rowcount > 0

    # -- the node's own settings ---------------------------------------------------------

    def get_setting(self, key: str) -> Any:
        """A node setting's value (JSON), None if unset."""
        row = self._db.execute("SELECT value FROM node_settings WHERE key = ?", (key,)).fetchone()
        return json.loads(row["value"]) if row else None

    def set_setting(self, key: str, value: Any) -> None:
        """Sets a node setting; ``None`` removes it."""
        with self._tx() as db:
            if value is None:
                db.execute("DELETE FROM node_settings WHERE key = ?", (key,))
                return
            db.execute(
                "INSERT INTO node_settings (key, value, updated_at) VALUES (?, ?, ?)"
                " ON CONFLICT (key) DO UPDATE SET value = excluded.value,"
                " updated_at = excluded.updated_at",
                (key, json.dumps(value, sort_keys=True), time.time()),
            )

    # -- role bindings -----------------------------------------------------------------

    def list_bindings(self) -> list[tuple[str, str, list[str]]]:
        rows = self._db.execute(
            "SELECT principal, role, tenants FROM role_bindings ORDER BY principal"
        )
        return [(r["principal"], r["role"], json.loads(r["tenants"])) for r in rows]

    def set_binding(self, principal: str, role: str, tenants: list[str]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO role_bindings (principal, role, tenants, created_at)"
                " VALUES (?, ?, ?, ?) ON CONFLICT (principal) DO UPDATE SET role = excluded.role,"
                " tenants = excluded.tenants",
                (principal, role, json.dumps(sorted(tenants)), time.time()),
            )

    def delete_binding(self, principal: str) -> bool:
        with self._tx() as db:
            return (
                db.execute("DELETE FROM role_bindings WHERE principal = ?", (principal,)).rowcount
                > 0
            )

    # -- quotas --------------------------------------------------------------------------

    def list_quotas(self) -> list[dict[str, Any]]:
        rows = self._db.execute(
            "SELECT tenant, max_vcpus, max_memory_mib, max_vms, max_disk_gib, disk_limits,"
            " nic_limits FROM quotas ORDER BY tenant"
        )
        maps = ("disk_limits", "nic_limits")
        return [{**dict(r), **{k: json.loads(r[k]) if r[k] else None for k in maps}} for r in rows]

    def set_quota(self, tenant: str, limits: dict[str, Any]) -> None:
        """``limits``: ``max_vcpus``, ``max_memory_mib``, ``max_vms``, ``max_disk_gib``
        (int or None), ``disk_limits`` and ``nic_limits`` (a map or None)."""
        values = {**limits, "tenant": tenant, "now": time.time()}
        for key in ("disk_limits", "nic_limits"):
            values[key] = json.dumps(limits[key]) if limits.get(key) else None
        with self._tx() as db:
            db.execute(
                "INSERT INTO quotas (tenant, max_vcpus, max_memory_mib, max_vms, max_disk_gib,"
                " disk_limits, nic_limits, updated_at) VALUES (:tenant, :max_vcpus,"
                " :max_memory_mib, :max_vms, :max_disk_gib, :disk_limits, :nic_limits, :now)"
                " ON CONFLICT (tenant) DO UPDATE"
                " SET max_vcpus = excluded.max_vcpus, max_memory_mib = excluded.max_memory_mib,"
                " max_vms = excluded.max_vms, max_disk_gib = excluded.max_disk_gib,"
                " disk_limits = excluded.disk_limits, nic_limits = excluded.nic_limits,"
                " updated_at = excluded.updated_at",
                values,
            )

    # -- operations ----------------------------------------------------------------------

    def insert_operation(self, op: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "INSERT INTO operations (id, kind, vm, tenant, peer, state, params, result,"
                " error, created_at, updated_at) VALUES (:id, :kind, :vm, :tenant, :peer,"
                " :state, :params, :result, :error, :created_at, :updated_at)",
                _op_row(op),
            )

    def update_operation(self, op: dict[str, Any]) -> None:
        with self._tx() as db:
            db.execute(
                "UPDATE operations SET state = :state, params = :params, result = :result,"
                " error = :error, updated_at = :updated_at WHERE id = :id",
                _op_row(op),
            )

    def list_operations(self, limit: int, state: str | None = None) -> list[dict[str, Any]]:
        if state is None:
            rows = self._db.execute(
                "SELECT * FROM operations ORDER BY created_at DESC LIMIT ?", (limit,)
            )
        else:
            rows = self._db.execute(
                "SELECT * FROM operations WHERE state = ? ORDER BY created_at DESC LIMIT ?",
                (state, limit),
            )
        return [_op_doc(r) for r in rows]

    def get_operation(self, op_id: str) -> dict[str, Any] | None:
        row = self._db.execute("SELECT * FROM operations WHERE id = ?", (op_id,)).fetchone()
        return _op_doc(row) if row else None

    # -- audit ---------------------------------------------------------------------------

    def append_audit(
        self,
        ts: float,
        principal: str,
        tenant: str | None,
        method: str,
        params_digest: str,
        outcome: str,
    ) -> dict[str, Any]:
        """Appends one entry chained to the last (in one transaction: no two share a parent)."""
        with self._tx() as db:
            last = db.execute("SELECT id, hash FROM audit ORDER BY id DESC LIMIT 1").fetchone()
            entry: dict[str, Any] = {
                "id": (last["id"] + 1) if last else 1,
                "ts": ts,
                "principal": principal,
                "tenant": tenant,
                "method": method,
                "params_digest": params_digest,
                "outcome": outcome,
                "prev_hash": last["hash"] if last else GENESIS,
            }
            entry["hash"] = audit_hash(entry)
            db.execute(
                "INSERT INTO audit (id, ts, principal, tenant, method, params_digest, outcome,"
                " prev_hash, hash) VALUES (:id, :ts, :principal, :tenant, :method,"
                " :params_digest, :outcome, :prev_hash, :hash)",
                entry,
            )
        return entry

    def audit_entries(self, after_id: int = 0, limit: int | None = None) -> list[dict[str, Any]]:
        sql = "SELECT * FROM audit WHERE id > ? ORDER BY id"
        args: tuple[Any, ...] = (after_id,)
        if limit is not None:
            sql += " LIMIT ?"
            args = (after_id, limit)
        return [dict(r) for r in self._db.execute(sql, args)]

    def audit_tail(self, limit: int) -> list[dict[str, Any]]:
        rows = self._db.execute("SELECT * FROM audit ORDER BY id DESC LIMIT ?", (limit,))
        return [dict(r) for r in reversed(list(rows))]

    def backup(self, backups: Backups) -> dict[str, Any]:
        """A consistent copy of the whole store among ``backups`` (:mod:`.backups`)."""
        return backups.take(self._db)

    def integrity_check(self) -> str:
        result: str = self._db.execute("PRAGMA integrity_check").fetchone()[0]
        return result
