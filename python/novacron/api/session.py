"""``session.*``, ``node.*`` and ``events.*`` methods."""

from __future__ import annotations

import time
from typing import Any

from novacron import __version__
from novacron.api.services import Services
from novacron.errors import Conflict, InvalidParams, NotFound, Unavailable
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params, check_text
from novacron.state.backups import Backups
from novacron.vm import storage_room

PROTOCOL_VERSION = 1
TOPICS = frozenset(
    {
        "vm.state",
        "vm.restart",
        "op.progress",
        "op.finished",
        "net.changed",
        "net.link",
        "cluster.node",
        "cluster.conflict",
    }
)


def register(registry: Registry, services: Services) -> None:
    @registry.method("session.hello", inline=True)
    async def hello(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Protocol and server versions, the node's name and the caller's identity."""
        p.opt_text("client", max_len=128)
        p.done()
        return {
            "protocol": PROTOCOL_VERSION,
            "server": "novacrond",
            "version": __version__,
            "node": services.config.node_name,
            "identity": ctx.identity.to_wire(),
        }

    @registry.method("node.info")
    async def node_info(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Host, hypervisor, CPUs, memory, NUMA topology and placement, plus daemon status."""
        p.done()
        vms = services.vms
        daemon = {
            "version": __version__,
            "uptime_s": round(time.time() - services.started_at, 3),
            "managed_vms": len(vms.managed),
            "reconcile": services.reconcile_findings,
            "pools": [vms.hv_pool.statistics(), vms.db_pool.statistics()]
            + ([services.migrations.engine_pool.statistics()] if services.migrations else []),
            "events": services.bus.statistics(),
            "connections": (
                services.connections.statistics() if services.connections is not None else None
            ),
            "pending": services.pending.statistics() if services.pending is not None else None,
            "hypervisor_ready": services.hypervisor_ready,
            "keeper": services.keeper.statistics() if services.keeper is not None else None,
            "consoles": (services.consoles.statistics() if services.consoles is not None else None),
            "shaping": services.shaper.statistics() if services.shaper is not None else None,
        }
        try:
            info: dict[str, Any] = await vms.hv_pool.run(vms.hv.node_info)
        except Unavailable as exc:
            # the daemon's own status stays reachable while libvirt is down
            raise Unavailable(exc.message, {"daemon": daemon}) from None
        try:
            storage: dict[str, Any] | None = await vms.hv_pool.run(
                vms.hv.pool_space, services.config.storage_pool
            )
        except NotFound:  # (undefined outside NovaCron since the daemon started)
            storage = None
        if storage is not None:
            storage["reserve_bytes"] = storage_room.reserve_bytes(vms)
            storage["overcommit"] = services.config.storage_overcommit or None
        info["hypervisor"]["cpu_model"] = {
            "configured": services.config.cpu_model or None,
            "problem": services.cpu_model_problem,
        }
        info["hypervisor"]["disk_discard"] = services.config.disk_discard
        info.update(
            node=services.config.node_name,
            daemon=daemon,
            storage=storage,
            topology=vms.placement.report(),
            cordon=vms.cordon.to_wire(),
        )
        return info

    @registry.method("node.backup")
    async def node_backup(ctx: CallContext, p: Params) -> dict[str, Any]:
        """A consistent copy of this node's state store in ``<state_dir>/backups``; the
        oldest past ``[daemon] backups_kept`` are removed."""
        p.done()
        config, vms = services.config, services.vms
        backups = Backups(config.state_dir / "backups", config.backups_kept)
        return await vms.db_pool.run(vms.store.backup, backups)

    @registry.method("events.subscribe")
    async def subscribe(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Start receiving ``event`` notifications on this connection."""
        raw = p.array("topics", 16)
        p.done()
        topics = frozenset(check_text(t, "topics", 64) for t in raw) if raw else None
        if topics is not None and not topics <= TOPICS:
            raise InvalidParams(
                f"unknown topic(s): {', '.join(sorted(topics - TOPICS))}",
                {"known": sorted(TOPICS)},
            )
        if ctx.subscription is not None:
            raise Conflict("this connection is already subscribed")
        if ctx.bus is None or ctx.on_subscribe is None:
            raise Conflict("this connection cannot receive events")
        # a caller sees only events of the tenants it sees
        ctx.subscription = ctx.bus.subscribe(topics, tenants=ctx.identity.tenants)
        ctx.on_subscribe(ctx.subscription)
        return {"subscribed": True, "topics": sorted(topics or TOPICS)}

    @registry.method("events.unsubscribe")
    async def unsubscribe(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Stop receiving events on this connection."""
        p.done()
        was = ctx.subscription is not None
        if ctx.subscription is not None:
            ctx.subscription.close()
            ctx.subscription = None
        return {"subscribed": False, "was_subscribed": was}
