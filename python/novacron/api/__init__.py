"""RPC method handlers, grouped by namespace; :func:`build_registry` wires them up."""

from __future__ import annotations

from novacron.api import auth, cluster, console, maintenance, migration, net, session, vm
from novacron.api.services import Services
from novacron.auth.ratelimit import RateLimiter
from novacron.rpc.dispatch import Registry


def build_registry(services: Services) -> Registry:
    registry = Registry()
    session.register(registry, services)
    vm.register(registry, services)
    console.register(registry, services)
    auth.register(registry, services)
    migration.register(registry, services)
    net.register(registry, services)
    cluster.register(registry, services)
    maintenance.register(registry, services)
    registry.audit = services.audit
    if services.config.rate_limit_per_s > 0:
        registry.limiter = RateLimiter(
            services.config.rate_limit_per_s, services.config.rate_limit_burst
        )
    return registry


__all__ = ["Services", "build_registry"]
