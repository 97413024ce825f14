"""``cluster.*`` methods: the cluster as etcd holds it, served by any node.

They fail fast with ``unavailable`` when etcd cannot be reached (or when this node is
not in a cluster); local VM calls never depend on them.
"""

from __future__ import annotations

from typing import Any

import trio

from novacron import errors
from novacron.api.services import Services
from novacron.auth import policy
from novacron.auth.identity import Identity
from novacron.cluster.service import ClusterService
from novacron.rpc.codec import Request
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.vm.spec import (
    CPU_POLICIES,
    HUGEPAGE_SIZES_KIB,
    MAX_MEMORY_MIB,
    MAX_VCPUS,
    MEMORY_POLICIES,
    DiskSpec,
    VmSpec,
    checked_room,
)

STATS_TIMEOUT_S = 10.0  # for each node's answer to cluster.stats
STATS_AT_ONCE = 32  # nodes asked at the same time (each is a TLS connection)


def forwarded_identity(caller: dict[str, Any], via: str) -> Identity:
    """The original caller, as the forwarding node vouches for it."""
    user, roles, tenants = caller.get("user"), caller.get("roles"), caller.get("tenants", [])
    if not isinstance(user, str) or not user or len(user) > 256:
        raise errors.InvalidParams("identity.user must be a name", {"param": "identity"})
    if not isinstance(roles, list) or not all(r in policy.ROLES for r in roles):
        raise errors.InvalidParams("identity.roles must list known roles", {"param": "identity"})
    if tenants is not None and not (
        isinstance(tenants, list) and all(isinstance(t, str) for t in tenants)
    ):
        raise errors.InvalidParams("identity.tenants must be a list or nil", {"param": "identity"})
    return Identity(
        kind="forwarded",
        user=f"{user}@{via}",
        roles=frozenset(roles),
        tenants=None if tenants is None else frozenset(tenants),
    )


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

    @registry.method("cluster.forward")
    async def forward(ctx: CallContext, p: Params) -> Any:
        """[node] A call about a VM of this node, made by another node on behalf of its
        caller: run as that caller (authorisation and tenant scoping apply to it)."""
        method = p.text("call", max_len=64)
        params = p.mapping("params")
        caller = p.mapping("identity")
        p.done()
        if method not in policy.FORWARDED:
            raise errors.InvalidParams(f"{method!r} is not forwarded", {"param": "call"})
        identity = forwarded_identity(caller, ctx.identity.user)
        if method in policy.ON_CONNECTION:
            inner = ctx.on_behalf(identity)
        else:
            inner = CallContext(identity, ctx.bus)
            inner.forwarded = True
        error, result = await registry.call(inner, Request(0, method, [params]))
        if error is not None:
            raise errors.from_wire(error)
        return result

    @registry.method("cluster.stats")
    async def stats(ctx: CallContext, p: Params) -> dict[str, Any]:
        """``vm.stats.list`` of every up node, as the caller (each row with its node);
        nodes that did not answer in time are listed with their error."""
        tenant = p.opt_name("tenant")
        p.done()
        here = cluster().node
        nodes = [n["node"] for n in await cluster().list_nodes() if n["state"] == "up"]
        params = {"tenant": tenant} if tenant is not None else {}
        answers: dict[str, list[dict[str, Any]] | errors.NovaCronError] = {}

        async def rows_of(node: str) -> list[dict[str, Any]]:
            if node != here:
                rows: list[dict[str, Any]] = await cluster().call_on(
                    node, ctx, "vm.stats.list", params
                )
                return rows
            error, result = await registry.call(ctx, Request(0, "vm.stats.list", [params]))
            if error is not None:
                raise errors.from_wire(error)
            return list(result)

        limiter = trio.CapacityLimiter(STATS_AT_ONCE)

        async def ask(node: str) -> None:
            try:
                async with limiter:
                    with trio.fail_after(STATS_TIMEOUT_S):
                        rows = await rows_of(node)
            except trio.TooSlowError:
                answers[node] = errors.Timeout(
                    f"node {node!r} did not answer in {STATS_TIMEOUT_S:g} s", {"node": node}
                )
            except errors.NovaCronError as exc:
                answers[node] = exc
            else:
                answers[node] = [{**row, "node": node} for row in rows]

        async with trio.open_nursery() as nursery:
            for node in nodes:
                nursery.start_soon(ask, node)
        found: list[dict[str, Any]] = []
        report: list[dict[str, Any]] = []
        for node in nodes:
            answer = answers[node]
            if isinstance(answer, errors.NovaCronError):
                report.append({"node": node, "error": answer.to_wire()})
            else:
                found.extend(answer)
                report.append({"node": node, "vms": len(answer)})
        return {"vms": found, "nodes": report}

    @registry.method("cluster.place")
    async def place(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Where ``vm.create node=auto`` would put a VM of this size (nothing is made)."""
        spec = VmSpec(
            name="(placement query)",
            vcpus=p.integer("vcpus", 1, MAX_VCPUS, default=1),
            memory_mib=p.integer("memory_mib", 16, MAX_MEMORY_MIB, default=512),
            cpu_policy=p.choice("cpu_policy", CPU_POLICIES, "shared"),
            memory_policy=p.choice("memory_policy", MEMORY_POLICIES, "strict"),
            hugepage_kib=p.integer("hugepage_kib", 0, HUGEPAGE_SIZES_KIB[-1], default=0) or None,
            max_vcpus=p.integer("max_vcpus", 1, MAX_VCPUS, default=0) or None,
            max_memory_mib=p.integer("max_memory_mib", 16, MAX_MEMORY_MIB, default=0) or None,
            # (a VM with new volumes is not sent to a node whose pool is short of its reserve)
            disks=(DiskSpec(size_gib=1),) if p.flag("new_volumes") else (),
        )
        p.done()
        spec = checked_room(spec)
        node, score = await cluster().best_node(spec)
        return {"node": node, "score": score}

    @registry.method("cluster.vms")
    async def vms(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """VM names and their owning nodes, cluster-wide, in the tenants the caller sees
        (a migrating VM with its lock: ``migration``)."""
        tenant = p.opt_name("tenant")
        node = p.opt_name("node")
        p.done()
        return [
            vm
            for vm in await cluster().list_vms(locks=True)
            if ctx.identity.sees(vm["tenant"])
            and (tenant is None or vm["tenant"] == tenant)
            and (node is None or vm["node"] == node)
        ]
