"""The VMs this node manages and their tenants, as the libvirt event forwarder asks of them.

A name is added before its domain is defined, with the tenant it is created for, so the
definition's own event is forwarded with its tenant although the VM's record is written
only after it. A name dropped when its domain is gone (deleted, migrated away) keeps its
tenant for a short while: libvirt delivers a domain's last events (``undefined``) on its
own event thread, which may be after the daemon has dropped the name. Only the last
tenant of a name is kept, and a name managed again takes its new tenant at once.
"""

from __future__ import annotations

import time
from collections import OrderedDict
from collections.abc import Callable, Iterator

LINGER_S = 30.0  # how long a dropped name's late events are still forwarded
LINGER_MAX = 4096  # at most this many dropped names remembered (the oldest go first)


class ManagedVms:
    def __init__(
        self,
        linger_s: float = LINGER_S,
        linger_max: int = LINGER_MAX,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._tenants: dict[str, str] = {}
        self._dropped: OrderedDict[str, tuple[str, float]] = OrderedDict()
        self._linger_s = linger_s
        self._linger_max = linger_max
        self._clock = clock

    def add(self, name: str, tenant: str) -> None:
        self._dropped.pop(name, None)
        self._tenants[name] = tenant

    def discard(self, name: str) -> None:
        tenant = self._tenants.pop(name, None)
        if tenant is None:
            return
        self._dropped.pop(name, None)
        self._dropped[name] = (tenant, self._clock() + self._linger_s)
        while len(self._dropped) > self._linger_max:
            self._dropped.popitem(last=False)

    def __contains__(self, name: object) -> bool:
        return name in self._tenants

    def __len__(self) -> int:
        return len(self._tenants)

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._tenants))

    def tenant_of(self, name: str) -> str | None:
        """The tenant of a managed VM (None: not managed here)."""
        return self._tenants.get(name)

    def event_tenant(self, name: str) -> str | None:
        """The tenant an event of domain ``name`` belongs to: a managed VM's, or a
        recently dropped one's; None for a domain that is not NovaCron's."""
        tenant = self._tenants.get(name)
        if tenant is not None:
            return tenant
        now = self._clock()
        while self._dropped:  # the oldest expire first
            oldest, (_, until) = next(iter(self._dropped.items()))
            if until > now:
                break
            del self._dropped[oldest]
        dropped = self._dropped.get(name)
        return dropped[0] if dropped is not None else None
