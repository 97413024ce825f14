"""Long-running operations (live migrations): their state in memory while they run,
one row each in the state store, and the ``op.progress`` / ``op.finished`` events.

States: ``running`` until it ends as ``succeeded``, ``failed`` or ``cancelled``.
An operation the daemon finds ``running`` in its store at start was interrupted by a
restart; :meth:`Operations.recover` closes it as ``failed`` (what that means for the
VM is decided by reconciliation, see :mod:`novacron.vm.reconcile`).
"""

from __future__ import annotations

import logging
import secrets
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import trio

from novacron import errors
from novacron.blocking import Pool
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.state.db import StateStore

log = logging.getLogger("novacron.ops")

ENDED = ("succeeded", "failed", "cancelled")
KEEP_IN_MEMORY = 256  # ended operations kept in memory; older ones are read from the store


# parameters kept for a restart that op.get and op.list show by name only: the
# descriptions of the snapshots a move carries (snapshot_moves)
NAMES_ONLY = ("snapshots", "snapshots_held")


def wire_params(params: dict[str, Any]) -> dict[str, Any]:
    """An operation's parameters as callers see them."""
    out = dict(params)
    for key in NAMES_ONLY:
        if isinstance(out.get(key), list):
            out[key] = [s.get("name") if isinstance(s, dict) else s for s in out[key]]
    return out


def _stored_to_wire(row: dict[str, Any]) -> dict[str, Any]:
    """An ended operation read from the store, as op.get and op.list show it."""
    row["phase"], row["progress"] = row["state"], {}
    row["params"] = wire_params(row.get("params") or {})
    return row


@dataclass
class Operation:
    id: str
    kind: str  # migrate_out | migrate_in | drain (vm and tenant: "")
    vm: str
    tenant: str
    peer: str
    params: dict[str, Any]
    state: str = "running"
    phase: str = "preparing"
    progress: dict[str, Any] = field(default_factory=dict)
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None
    created_at: float = field(default_factory=time.time)
    updated_at: float = field(default_factory=time.time)
    cancel_requested: bool = False
    on_cancel: Callable[[], None] | None = None
    ended: trio.Event = field(default_factory=trio.Event)

    def row(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "kind": self.kind,
            "vm": self.vm,
            "tenant": self.tenant,
            "peer": self.peer,
            "state": self.state,
            "params": self.params,
            "result": self.result,
            "error": self.error,
            "created_at": self.created_at,
            "updated_at": self.updated_at,
        }

    def to_wire(self) -> dict[str, Any]:
        doc = self.row()
        doc["params"] = wire_params(self.params)
        doc["phase"] = self.phase
        doc["progress"] = dict(self.progress)
        return doc


class Operations:
    def __init__(self, store: StateStore, pool: Pool, bus: EventBus) -> None:
        self._store = store
        self._pool = pool
        self._bus = bus
        self._running: dict[str, Operation] = {}
        self._ended: dict[str, Operation] = {}

    async def rewrite(self, row: dict[str, Any]) -> None:
        """Stores an ended operation's row as the caller changed it (its parameters)."""
        row["updated_at"] = time.time()
        await self._pool.run(self._store.update_operation, row)

    async def amend(self, row: dict[str, Any], state: str, result: dict[str, Any]) -> None:
        """Corrects how an ended operation ended (or what it left), once that became known."""
        row.update(state=state, result=result, error=None, updated_at=time.time())
        await self._pool.run(self._store.update_operation, row)
        kept = self._ended.get(row["id"])  # (what op.get answers from while it is here)
        if kept is not None:
            kept.state, kept.phase, kept.result, kept.error = state, state, result, None
        log.info("op.amended", extra=kv(op=row["id"], vm=row["vm"], state=state))

    async def recover(self) -> list[dict[str, Any]]:
        """Closes operations a restart interrupted; returns them (as stored, now failed)."""
        rows = await self._pool.run(self._store.list_operations, 10_000, "running")
        for row in rows:
            row["state"] = "failed"
            row["error"] = errors.MigrationFailed(
                "interrupted: the daemon restarted while it ran"
            ).to_wire()
            row["updated_at"] = time.time()
            await self._pool.run(self._store.update_operation, row)
            log.warning("op.interrupted", extra=kv(op=row["id"], kind=row["kind"], vm=row["vm"]))
        return rows

    @staticmethod
    def new_id() -> str:
        return "op-" + secrets.token_hex(8)

    async def start(
        self,
        kind: str,
        vm: str,
        tenant: str,
        peer: str,
        params: dict[str, Any],
        op_id: str | None = None,
    ) -> Operation:
        if self.active_for(vm) is not None:
            raise errors.Conflict(f"vm {vm!r} is already being migrated", {"vm": vm})
        op_id = op_id or self.new_id()
        op = Operation(id=op_id, kind=kind, vm=vm, tenant=tenant, peer=peer, params=params)
        self._running[op.id] = op  # before the await: a second start sees it
        try:
            await self._pool.run(self._store.insert_operation, op.row())
        except BaseException:
            del self._running[op.id]
            raise
        log.info("op.started", extra=kv(op=op.id, kind=kind, vm=vm, peer=peer))
        return op

    async def note(self, op: Operation, **params: Any) -> None:
        """Adds to a running operation's stored parameters (what a restart needs)."""
        op.params.update(params)
        op.updated_at = time.time()
        await self._pool.run(self._store.update_operation, op.row())

    def active_for(self, vm: str) -> Operation | None:
        return next((op for op in self._running.values() if op.vm == vm), None)

    def running_of(self, kind: str) -> Operation | None:
        return next((op for op in self._running.values() if op.kind == kind), None)

    def report(self, op: Operation, phase: str, progress: dict[str, Any] | None = None) -> None:
        """Updates a running operation and publishes ``op.progress``."""
        op.phase = phase
        if progress is not None:
            op.progress = progress
        op.updated_at = time.time()
        self._bus.publish(
            {
                "topic": "op.progress",
                "op": op.id,
                "kind": op.kind,
                "vm": op.vm,
                "tenant": op.tenant,
                "phase": phase,
                **op.progress,
            }
        )

    async def finish(
        self,
        op: Operation,
        state: str,
        result: dict[str, Any] | None = None,
        error: errors.NovaCronError | None = None,
    ) -> None:
        assert state in ENDED
        op.state, op.phase = state, state
        op.result = result
        op.error = error.to_wire() if error is not None else None
        op.updated_at = time.time()
        with trio.CancelScope(shield=True):
            await self._pool.run(self._store.update_operation, op.row())
        self._running.pop(op.id, None)
        self._ended[op.id] = op
        while len(self._ended) > KEEP_IN_MEMORY:
            self._ended.pop(next(iter(self._ended)))
        op.ended.set()
        self._bus.publish(
            {
                "topic": "op.finished",
                "op": op.id,
                "kind": op.kind,
                "vm": op.vm,
                "tenant": op.tenant,
                "state": state,
                "result": op.result,
                "error": op.error,
            }
        )
        level = logging.INFO if state == "succeeded" else logging.WARNING
        log.log(
            level,
            "op.finished",
            extra=kv(op=op.id, vm=op.vm, state=state, error=(op.error or {}).get("message")),
        )

    async def get(self, op_id: str) -> dict[str, Any]:
        op = self._running.get(op_id) or self._ended.get(op_id)
        if op is not None:
            return op.to_wire()
        row = await self._pool.run(self._store.get_operation, op_id)
        if row is None:
            raise errors.NotFound(f"operation {op_id!r} not found", {"op": op_id})
        return _stored_to_wire(row)

    def running(self, op_id: str) -> Operation | None:
        return self._running.get(op_id)

    async def list(self, limit: int) -> list[dict[str, Any]]:
        """Running operations first, then the most recent ended ones."""
        docs = [op.to_wire() for op in self._running.values()]
        rows = await self._pool.run(self._store.list_operations, limit)
        seen = {d["id"] for d in docs}
        for row in rows:
            if row["id"] not in seen:
                docs.append(_stored_to_wire(row))
        return docs[:limit]

    def cancel(self, op: Operation) -> None:
        op.cancel_requested = True
        if op.on_cancel is not None:
            op.on_cancel()
