"""``net.*`` and ``vm.nic.*`` methods: host networks and the VM NICs on them.

Networks belong to a tenant: a network of a tenant the caller does not see answers
``not_found``. Naming a host interface (a bridge's uplink, a VLAN's parent interface,
a VXLAN's underlay device) touches the host itself and needs the ``admin`` role; an
operator builds VLAN networks on a bridge network it can see (an admin may put a
tenant's VLAN on a shared trunk of another tenant).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from novacron import errors
from novacron.api.services import Services
from novacron.api.vm import check_limits_allowed, default_tenant, visible_record, visible_vm
from novacron.auth.identity import Identity
from novacron.auth.policy import check_tenant
from novacron.errors import PermissionDenied
from novacron.net.model import NetworkSpec, parse_create
from novacron.net.nic import NIC_LIMIT_KEYS, check_mac, parse_nic, parse_nic_limits
from novacron.net.service import NetworkService
from novacron.rpc.dispatch import CallContext, Registry
from novacron.rpc.params import Params
from novacron.vm import nics, unplug


def _host_interfaces(spec: NetworkSpec, networks: NetworkService) -> list[str]:
    """The host interfaces (not NovaCron networks) ``spec`` names."""
    named = [spec.uplink, spec.device]
    if spec.parent is not None and spec.parent not in networks.networks:
        named.append(spec.parent)
    return [n for n in named if n is not None]


def _check_may_create(identity: Identity, spec: NetworkSpec, networks: NetworkService) -> None:
    if not identity.sees(spec.tenant):
        raise PermissionDenied(
            f"{identity.user} may not create networks in tenant {spec.tenant!r}",
            {"tenant": spec.tenant},
        )
    host = _host_interfaces(spec, networks)
    if host and "admin" not in identity.roles:
        raise PermissionDenied(
            f"naming host interface(s) {', '.join(host)} needs the admin role",
            {"interfaces": host},
        )
    parent = networks.networks.get(spec.parent) if spec.parent else None
    if parent is not None and not identity.sees(parent.tenant):
        raise errors.InvalidParams(
            f"parent {spec.parent!r} is not a network you can see", {"param": "parent"}
        )


def register(registry: Registry, services: Services) -> None:
    def networks() -> NetworkService:
        if services.networks is None:
            raise errors.Unavailable("host networking is not available on this node")
        return services.networks

    def visible(ctx: CallContext, name: str) -> NetworkSpec:
        spec = networks().spec(name)
        check_tenant(ctx.identity, spec.tenant, "network", name)
        ctx.tenant = spec.tenant
        return spec

    @registry.method("net.create")
    async def create(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Create a bridge, VLAN or VXLAN network and build it on this host."""
        tenant_given = p.given("tenant")
        spec = parse_create(p)
        spec = replace(spec, tenant=default_tenant(ctx, tenant_given, spec.tenant))
        ctx.tenant = spec.tenant
        _check_may_create(ctx.identity, spec, networks())
        return await networks().create(spec)

    @registry.method("net.list")
    async def list_(ctx: CallContext, p: Params) -> list[dict[str, Any]]:
        """Every network the caller may see, with its devices' state."""
        tenant = p.opt_name("tenant")
        p.done()
        return await networks().list_networks(
            lambda t: ctx.identity.sees(t) and (tenant is None or t == tenant)
        )

    @registry.method("net.get")
    async def get(ctx: CallContext, p: Params) -> dict[str, Any]:
        """One network: settings, devices, forwarding entries, NICs, problems."""
        name = p.name()
        p.done()
        return await networks().describe(visible(ctx, name))

    @registry.method("net.delete")
    async def delete(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Remove a network and its devices (refused while a NIC uses it)."""
        name = p.name()
        p.done()
        visible(ctx, name)
        return await networks().delete(name)

    @registry.method("vm.nic.attach")
    async def nic_attach(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Add a NIC on a network to a VM (hot-plugged when it runs)."""
        name = p.name("vm")
        nic = parse_nic(_nic_args(p), "nic")
        p.done()
        check_limits_allowed(ctx, nic.limits, "limits", "NIC")
        rec = await visible_record(services.vms, ctx, name)
        [nic] = await services.vms.quotas.with_nic_defaults(rec.tenant, [nic])
        return await nics.attach(services.vms, name, nic)

    @registry.method("vm.nic.limit")
    async def nic_limit(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Set how fast traffic may flow to and from the guest through a NIC (by MAC);
        limits not named stay as they are, 0 lifts one."""
        name = p.name("vm")
        mac = check_mac(p.text("mac", max_len=32), "mac")
        raw = {k: v for k, v in p.raw().items() if k not in ("vm", "mac") and v is not None}
        changes = parse_nic_limits("limits", raw)
        if not changes:
            raise errors.InvalidParams(
                f"name at least one limit: {', '.join(NIC_LIMIT_KEYS)}", {"param": "limits"}
            )
        vm = await visible_vm(services.vms, ctx, name)
        return await nics.limit(services.vms, vm, mac, changes)

    @registry.method("vm.nic.detach")
    async def nic_detach(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Remove a VM's NIC, by MAC address (unplugged when it runs, waiting up to
        ``timeout_s`` for the guest)."""
        name = p.name("vm")
        mac = check_mac(p.text("mac", max_len=32), "mac")
        timeout_s = p.number("timeout_s", 1.0, unplug.MAX_TIMEOUT_S, unplug.TIMEOUT_S)
        p.done()
        vm = await visible_vm(services.vms, ctx, name)
        return await nics.detach(services.vms, vm, mac, timeout_s)


def _nic_args(p: Params) -> dict[str, Any]:
    """``vm.nic.attach``'s NIC arguments as :func:`parse_nic` reads a ``nics`` entry."""
    raw = {
        "network": p.name("network"),
        "mac": p.opt_text("mac", max_len=32),
        "model": p.opt_text("model", max_len=16),
        "limits": p.mapping("limits"),
    }
    return {k: v for k, v in raw.items() if v is not None}
