"""``vm.migrate``, ``op.*`` and the daemon-to-daemon ``migration.*`` methods.

``vm.migrate`` answers at once with an operation id; the migration runs as a task
and reports through ``op.progress`` / ``op.finished`` events and ``op.get``.
``migration.*`` are called by the source daemon on the destination with its node
certificate (role ``node``); the caller's certificate name ties the calls of one
migration together.
"""

from __future__ import annotations

from typing import Any

from novacron import errors, paths
from novacron.api.services import Services
from novacron.api.vm import visible_vm
from novacron.auth.policy import check_tenant
from novacron.migration import snapshot_moves
from novacron.migration.options import parse_migrate
from novacron.migration.service import MigrationService
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params

MAX_XML = 1 << 20
OP_ID_LEN = 64


def register(registry: Registry, services: Services) -> None:
    def migrations() -> MigrationService:
        if services.migrations is None:
            raise errors.Unavailable("live migration is not available on this node")
        return services.migrations

    @registry.method("vm.migrate")
    async def migrate(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Live-migrate a running or paused VM to another node, or move a stopped one;
        returns ``{"op": id}`` at once."""
        name, destination, options = parse_migrate(p)
        await visible_vm(services.vms, ctx, name)
        return await migrations().migrate(name, destination, options)

    async def visible_op(ctx: CallContext, op_id: str) -> dict[str, Any]:
        doc = await migrations().ops.get(op_id)
        check_tenant(ctx.identity, doc["tenant"], "op", op_id)
        ctx.tenant = doc["tenant"]
        return doc

    @registry.method("op.get")
    async def op_get(ctx: CallContext, p: Params) -> dict[str, Any]:
        """One operation: state, phase, last progress, and its result or error."""
        op_id = p.text("op", max_len=OP_ID_LEN)
        p.done()
        return await visible_op(ctx, op_id)

    @registry.method("op.list")
    async def op_list(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """Running operations, then the most recent ended ones (newest first)."""
        limit = p.integer("limit", 1, 1000, default=50)
        p.done()
        docs = await migrations().ops.list(limit)
        return [d for d in docs if ctx.identity.sees(d["tenant"])]

    @registry.method("op.cancel")
    async def op_cancel(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Cancel a running operation (a migration is aborted; the VM stays on the source)."""
        op_id = p.text("op", max_len=OP_ID_LEN)
        p.done()
        doc = await visible_op(ctx, op_id)
        op = migrations().ops.running(op_id)
        if op is None:
            raise errors.Conflict(f"operation {op_id} already ended ({doc['state']})")
        migrations().cancel(op)
        return {"op": op_id, "cancelling": True}

    @registry.method("migration.prepare")
    async def prepare(ctx: CallContext, p: Params) -> dict[str, Any]:
        """(node) Get ready to receive a VM: placement, token, channel and libvirt URI
        (``offline``: a stopped VM, placement and libvirt URI only)."""
        name = p.name("vm")
        xml = p.text("xml", max_len=MAX_XML, multiline=True)
        if p.given("stream_port"):  # a source of an earlier release (loopback TCP)
            raise errors.InvalidParams(
                "stream_port is no longer taken: QEMU's stream crosses a Unix socket "
                "(stream_socket); both nodes must run the same NovaCron release",
                {"param": "stream_port"},
            )
        offline = p.flag("offline")  # a stopped VM: its definition moves, no stream
        stream_socket = p.opt_text("stream_socket", max_len=paths.MAX_SOCKET_PATH)
        options = p.mapping("options")
        # what the volumes to copy hold on the source (checked against this pool's room)
        disk_bytes = p.integer("disk_bytes", 0, 1 << 60, default=0)
        # the VM's snapshots (their descriptions; its images hold them)
        snapshots = (
            p.array("snapshots", snapshot_moves.MAX_SNAPSHOTS) if p.given("snapshots") else None
        )
        p.done()
        return await migrations().prepare(
            ctx.identity.user, name, xml, stream_socket, options, offline, disk_bytes, snapshots
        )

    @registry.method("migration.result")
    async def result(ctx: CallContext, p: Params) -> dict[str, Any]:
        """(node) How an incoming migration ended (waits until it has)."""
        op_id = p.text("op", max_len=OP_ID_LEN)
        p.done()
        return await migrations().result(ctx.identity.user, op_id)

    @registry.method("migration.abort")
    async def abort(ctx: CallContext, p: Params) -> dict[str, Any]:
        """(node) The source gave up: stop waiting for its channel."""
        op_id = p.text("op", max_len=OP_ID_LEN)
        p.done()
        return await migrations().abort_incoming(ctx.identity.user, op_id)
