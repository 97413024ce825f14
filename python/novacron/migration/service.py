"""Live migration in the daemon: both ends, their operations, the migration channel
listener and the page store kept across migrations.

Started by the daemon after the hypervisor is attached (``await nursery.start(svc.run)``):
it closes or resumes operations a restart interrupted, sweeps away the stream directories
of migrations that no longer run (``qemu_socket.sweep``), listens for migration channels
(when the node has a TLS listener) and runs every migration as a task of its own
nursery.
"""

from __future__ import annotations

import logging
import ssl
from collections.abc import Awaitable, Callable
from functools import partial
from pathlib import Path
from typing import Any

import trio

from novacron import errors
from novacron._core import PAGE_SIZE, PageStore
from novacron.blocking import Pool
from novacron.client import TlsFiles
from novacron.cluster.locks import MigrationLocks
from novacron.config import Config
from novacron.eventbus import EventBus
from novacron.logs import kv
from novacron.migration import (
    incoming,
    kept_volumes,
    nbd_relay,
    offline,
    outgoing,
    qemu_socket,
    snapshot_moves,
    volume_copies,
)
from novacron.migration.channel import ChannelListener, same_token
from novacron.migration.ops import Operation, Operations
from novacron.migration.options import MigrateOptions
from novacron.server.tls import bind_tcp
from novacron.vm import domain_xml
from novacron.vm.service import VmService

log = logging.getLogger("novacron.migration")


class MigrationService:
    def __init__(
        self,
        config: Config,
        vms: VmService,
        bus: EventBus,
        tls_context: Callable[[], ssl.SSLContext] | None = None,
    ) -> None:
        self.config = config
        self.vms = vms
        self.ops = Operations(vms.store, vms.db_pool, bus)
        self.page_store = PageStore(config.migration_page_store_mib * (1 << 20) // PAGE_SIZE)
        self.migration_limiter = trio.CapacityLimiter(config.migration_max_concurrent)
        # the page engine's calls of every migration, off the trio thread: at most one
        # at a time per migration and side, and a node may be both source and
        # destination of as many migrations as it allows
        self.engine_pool = Pool("migration-engine", 2 * config.migration_max_concurrent)
        self.incoming: dict[bytes, incoming.Incoming] = {}
        self.arrivals: dict[str, offline.Arrival] = {}  # stopped VMs coming, by operation
        self._tls_context = tls_context
        self._nursery: trio.Nursery | None = None
        self.channel_port = 0
        self.interrupted: list[dict[str, Any]] = []
        self.locks: MigrationLocks | None = None  # in a cluster (set by the daemon)

    def tls_files(self) -> TlsFiles | None:
        c = self.config
        if not (c.tls_cert and c.tls_key and c.tls_ca):
            return None
        return TlsFiles(Path(c.tls_cert), Path(c.tls_key), Path(c.tls_ca))

    def spawn(
        self, fn: Callable[..., Awaitable[Any]], *args: Any, op: Operation | None = None
    ) -> None:
        """Runs ``fn`` as a task of the service; a bug in one migration is logged and
        ends that migration (``op`` fails as ``internal``), never the daemon."""
        if self._nursery is None:
            raise errors.Unavailable("the migration service is not running")
        self._nursery.start_soon(self._guarded, fn, args, op)

    async def _guarded(
        self, fn: Callable[..., Awaitable[Any]], args: tuple[Any, ...], op: Operation | None
    ) -> None:
        try:
            await fn(*args)
        except Exception:
            log.exception("migration.task_crashed", extra=kv(task=fn.__name__))
            if op is not None and op.state == "running":
                await self.ops.finish(
                    op, "failed", None, errors.Internal("the migration task failed; see the log")
                )

    async def load_interrupted(self) -> frozenset[str]:
        """Reads the operations a restart interrupted (before reconciliation, which
        needs them); returns the VMs that were leaving this node."""
        self.interrupted = await self.ops.recover()
        return self._interrupted_vms("migrate_out")

    def arriving(self) -> frozenset[str]:
        """The VMs that were coming to this node when a restart interrupted it (after
        :meth:`load_interrupted`): reconciliation does not adopt their domains, whose
        outcome :meth:`_resume_incoming` waits for."""
        return self._interrupted_vms("migrate_in")

    def _interrupted_vms(self, kind: str) -> frozenset[str]:
        return frozenset(r["vm"] for r in self.interrupted if r["kind"] == kind)

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        streams = self.config.migration_stream_dir
        swept = await trio.to_thread.run_sync(qemu_socket.sweep, streams)
        if swept:
            log.warning(
                "migration.stream_dirs_swept", extra=kv(stream_dir=str(streams), names=swept)
            )
        async with trio.open_nursery() as nursery:
            self._nursery = nursery
            for row in self.interrupted:
                if row["kind"] == "migrate_in":
                    nursery.start_soon(self._resume_incoming, row)
            address = self.config.migration_address
            if address and self._tls_context is not None:
                listener = ChannelListener(
                    bind_tcp(address),
                    self._tls_context,
                    self._deliver,
                    self.config.migration_link_timeout_s,
                )
                self.channel_port = listener.address[1]
                await nursery.start(listener.run)
                log.info("migration.listening", extra=kv(address=address))
            # volumes earlier moves kept here, deleted once their destinations confirm
            nursery.start_soon(self._guarded, kept_volumes.keep_sweeping, (self,), None)
            task_status.started()
            await trio.sleep_forever()  # migrations run here for as long as the service

    # -- the source's calls ------------------------------------------------------------

    async def migrate(self, name: str, destination: str, options: MigrateOptions) -> dict[str, Any]:
        return await outgoing.start(self, name, destination, options)

    def cancel(self, op: Operation) -> None:
        """An operator's ``op.cancel``. A stopped VM's move is cancelled on its source
        only: this side cannot stop the source's libvirt, which may define the VM here
        a moment later."""
        if op.id in self.arrivals:
            raise errors.Conflict(
                f"{op.id} moves stopped vm {op.vm!r} here: cancel it on its source node "
                f"({op.peer})",
                {"op": op.id, "vm": op.vm},
            )
        self.ops.cancel(op)

    # -- the destination's calls (node role) -------------------------------------------

    async def prepare(
        self,
        source: str,
        name: str,
        xml: str,
        stream_socket: str | None,
        options: dict[str, Any],
        offline_move: bool = False,
        disk_bytes: int = 0,
        snapshots: list[Any] | None = None,
    ) -> dict[str, Any]:
        self.vms.cordon.refuse("incoming migrations")
        if offline_move:
            return await offline.prepare(self, source, name, xml, options, disk_bytes, snapshots)
        if stream_socket is None:
            raise errors.InvalidParams("a live migration needs stream_socket")
        return await incoming.prepare(
            self, source, name, xml, stream_socket, options, disk_bytes, snapshots
        )

    def _deliver(self, token: bytes, peer: str, stream: trio.SSLStream[trio.SocketStream]) -> bool:
        """Hands a migration channel to the migration (or the volume copy) waiting for
        it: the token it was given, from the node it was given to."""
        for inc in self.incoming.values():  # an NBD connection of a disk's copy
            if inc.nbd_token is not None and same_token(inc.nbd_token, token):
                if inc.source != peer:
                    return False
                qemu_pid = partial(self.vms.hv_pool.run, self.vms.hv.qemu_pid, inc.op.vm)
                self.spawn(
                    nbd_relay.relay_in,
                    stream,
                    inc.qemu_dir.path,
                    inc.qemu_uid,
                    qemu_pid,
                    inc.nbd,
                    self.engine_pool,
                )
                return True
        waiting = [(known, inc.source, inc.send) for known, inc in self.incoming.items()]
        for arrival in self.arrivals.values():
            if arrival.copy is not None:
                waiting.append((arrival.copy.token, arrival.source, arrival.copy.send))
        for known, source, send in waiting:
            if same_token(known, token) and source == peer:
                try:
                    send.send_nowait(stream)
                except (trio.WouldBlock, trio.ClosedResourceError):
                    return False
                return True
        return False

    def _incoming_op(self, op_id: str, source: str) -> Operation:
        op = self.ops.running(op_id)
        if op is None or op.kind != "migrate_in" or op.peer != source:
            raise errors.NotFound(f"operation {op_id!r} not found", {"op": op_id})
        return op

    async def result(self, source: str, op_id: str) -> dict[str, Any]:
        """The incoming operation's end (waits for it); for the source's summary."""
        op = self.ops.running(op_id)
        if op is not None:
            self._incoming_op(op_id, source)
            await op.ended.wait()
        doc = await self.ops.get(op_id)
        if doc["kind"] != "migrate_in" or doc["peer"] != source:
            raise errors.NotFound(f"operation {op_id!r} not found", {"op": op_id})
        return {"state": doc["state"], "result": doc["result"], "error": doc["error"]}

    async def abort_incoming(self, source: str, op_id: str) -> dict[str, Any]:
        self.ops.cancel(self._incoming_op(op_id, source))
        return {"op": op_id, "aborting": True}

    # -- after a restart ---------------------------------------------------------------

    async def _resume_incoming(self, row: dict[str, Any]) -> None:
        """An incoming migration this daemon was receiving when it stopped: libvirt
        finishes or cleans it up; the store follows (its operation was closed as failed
        at start; a VM that arrives after all is adopted and reported; what a failed
        Finish left is removed). Reconciliation leaves the domain to this (see
        :meth:`arriving`): a domain still arriving may yet fail."""
        name = row["vm"]
        # (a record already: the daemon stopped after recording the arrival, before it
        # closed the operation)
        if await self.vms.records.get(name) is None:
            if (row.get("params") or {}).get("offline"):
                state = await self._offline_outcome(row)
            else:
                state = await self._live_outcome(row)
            if state is None:
                return
            async with self.vms.locked(name):
                if await self.vms.records.get(name) is None:
                    await self._adopt(name, str(row["peer"]), state)
        log.warning("migration.arrived_across_restart", extra=kv(vm=name, op=row["id"]))
        result: dict[str, Any] = {"node": self.config.node_name, "restarted": True}
        carried = (row.get("params") or {}).get(snapshot_moves.CARRIED)
        if isinstance(carried, list) and carried:  # (the source forgot them: they are here)
            refused = await snapshot_moves.redefine(self.vms, name, carried)
            result["snapshots"] = snapshot_moves.defined(carried, refused)
        await self.ops.amend(row, "succeeded", result)

    async def _live_outcome(self, row: dict[str, Any]) -> str | None:
        """libvirt's verdict on a live migration's domain here: the state it arrived in,
        or None (it did not arrive; what a failed Finish left is removed)."""
        name = row["vm"]
        state = await incoming.wait_outcome(self, name)
        if state == "failed":
            uuid = row["params"].get("uuid")
            removed, _ = await incoming.remove_failed_arrival(
                self, name, uuid if isinstance(uuid, str) else None
            )
            state = "absent" if removed else state
        if state in incoming.ARRIVED:
            return state
        await self._delete_copies(row, state)
        return None

    async def _offline_outcome(self, row: dict[str, Any]) -> str | None:
        """A stopped VM's move: libvirt defined it here, or will shortly, or never will
        (the source, which outlives this restart, then keeps it): its state, or None."""
        uuid = row["params"].get("uuid")
        if not isinstance(uuid, str):
            return None
        state = await offline.wait_defined(self, row["vm"], uuid, offline.ARRIVAL_WAIT_S)
        if offline.arrived(state):
            return state
        await self._delete_copies(row, state)
        return None

    async def _delete_copies(self, row: dict[str, Any], state: str) -> None:
        """The volumes an interrupted arrival made here (its operation's ``volumes``),
        deleted when libvirt holds no domain of it (``absent``): no VM uses them."""
        volumes = row["params"].get("volumes")
        if isinstance(volumes, list) and state == "absent":
            await volume_copies.delete(self.vms, [str(v) for v in volumes])

    async def _adopt(self, name: str, source: str, desired: str) -> None:
        """Records a VM that arrived while this daemon was down, from its metadata
        (``desired``: ``running``, or ``paused`` as it arrived)."""
        vms = self.vms
        managed = domain_xml.parse_managed(await vms.hv_pool.run(vms.hv.xml, name))
        if managed is None:
            raise errors.Conflict(f"domain {name!r} carries no NovaCron metadata")
        if managed.placement is not None:
            try:
                vms.placement.restore(name, managed.placement)
            except errors.NovaCronError as exc:
                log.warning("migration.placement_conflict", extra=kv(vm=name, error=exc.message))
        await vms.adopt(managed, desired)
        await vms.arrived(name, managed.tenant, source)

    async def settle_outgoing(self, findings: list[dict[str, Any]]) -> None:
        """Outgoing migrations a restart interrupted whose VM libvirt moved after all
        (reconciliation found it gone and dropped the record): they succeeded."""
        moved = {f["vm"] for f in findings if f["finding"] == "migrated_away"}
        for row in self.interrupted:
            if row["kind"] != "migrate_out":
                continue
            params = row.get("params") or {}
            held = params.pop(snapshot_moves.HELD, None)  # (the destination has them if it moved)
            if row["vm"] in moved:
                await self.ops.amend(row, "succeeded", {"restarted": True})
                continue
            if held and row["vm"] in self.vms.managed:  # still here: its snapshots too
                refused = await snapshot_moves.redefine(self.vms, row["vm"], held)
                log.warning(
                    "migration.snapshots_given_back",
                    extra=kv(vm=row["vm"], op=row["id"], snapshots=len(held), refused=refused),
                )
            if held is not None:
                await self.ops.rewrite(row)
            dest = params.get("destination_node")
            if self.locks is not None and dest and row["vm"] in self.vms.managed:
                # still here: a switch-over committed before the restart is undone
                await self.locks.take_back(row["tenant"], row["vm"], str(dest))
