"""``cluster.*`` methods: the cluster as etcd holds it, served by any node.

They fail fast with ``unavailable`` when etcd cannot be reached (or when this node is
not in a cluster); local VM calls never depend on them.
"""

from __future__ import annotations

from typing import Any

from novacron import errors
from novacron.api.services import Services
from novacron.cluster.service import ClusterService
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params


def register(registry: Registry, services: Services) -> None:
    def cluster() -> ClusterService:
        if services.cluster is None:
            raise errors.Unavailable("this node is not in a cluster ([cluster] etcd_endpoints)")
        return services.cluster

    @registry.method("cluster.nodes")
    async def nodes(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """Every registered node (up), and nodes seen going down."""
        p.done()
        return await cluster().list_nodes()

    @registry.method("cluster.status")
    async def status(ctx: CallContext, p: Params) -> dict[str, Any]:
        """This node's registration and lease, etcd's revision, ownership conflicts."""
        p.done()
        return await cluster().status()

    @registry.method("cluster.vms")
    async def vms(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """VM names and their owning nodes, cluster-wide, in the tenants the caller sees."""
        tenant = p.opt_name("tenant")
        node = p.opt_name("node")
        p.done()
        return [
            vm
            for vm in await cluster().list_vms()
            if ctx.identity.sees(vm["tenant"])
            and (tenant is None or vm["tenant"] == tenant)
            and (node is None or vm["node"] == node)
        ]
