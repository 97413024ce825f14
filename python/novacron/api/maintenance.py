"""``node.cordon``, ``node.uncordon`` and ``node.drain``: a host's maintenance (admin).

See :mod:`novacron.vm.cordon` (what a cordon refuses) and :mod:`novacron.migration.drain`
(how a node is emptied). ``node.drain`` answers at once with an operation id; the
drain reports through ``op.progress`` / ``op.finished`` and ``op.get`` like a migration.
"""

from __future__ import annotations

from typing import Any

from novacron import errors
from novacron.api.services import Services
from novacron.migration import drain
from novacron.migration.options import parse_destination, parse_options
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.vm.cordon import MAX_REASON


def register(registry: Registry, services: Services) -> None:
    cordon = services.vms.cordon

    def status() -> dict[str, Any]:
        return {"node": services.config.node_name, "cordon": cordon.to_wire()}

    @registry.method("node.cordon")
    async def node_cordon(ctx: CallContext, p: Params) -> dict[str, Any]:
        """This node takes no new VMs and no incoming migrations until uncordoned."""
        reason = p.text("reason", default="", max_len=MAX_REASON)
        p.done()
        await cordon.set(reason, ctx.identity.principal)
        return status()

    @registry.method("node.uncordon")
    async def node_uncordon(ctx: CallContext, p: Params) -> dict[str, Any]:
        """This node takes new VMs and incoming migrations again."""
        p.done()
        was = await cordon.clear()
        return {**status(), "was_cordoned": was}

    @registry.method("node.drain")
    async def node_drain(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Cordon this node and move every VM away, one at a time; returns ``{"op"}``."""
        destination = parse_destination(p, required=False)
        keep_stopped = p.flag("keep_stopped")
        reason = p.text("reason", default="drain", max_len=MAX_REASON)
        options = parse_options(p)
        p.done()
        if services.migrations is None:
            raise errors.Unavailable("live migration is not available on this node")
        return await drain.start(
            services.migrations, destination, options, keep_stopped, reason, ctx.identity.principal
        )
