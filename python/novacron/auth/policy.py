"""The one table of what each method needs, and the decision.

Every registered method must appear here (a unit test enforces it); a method missing
from the table is denied. ``public`` methods need no role; ``read`` and ``write`` need
the ``admin`` role until roles and tenants arrive with the TLS listener.
"""

from __future__ import annotations

from typing import Final

from novacron.auth.identity import Identity
from novacron.errors import PermissionDenied

PUBLIC: Final = "public"
READ: Final = "read"
WRITE: Final = "write"

METHOD_PERMISSIONS: Final[dict[str, str]] = {
    "session.hello": PUBLIC,
    "node.info": READ,
    "events.subscribe": READ,
    "events.unsubscribe": READ,
    "vm.list": READ,
    "vm.get": READ,
    "vm.snapshot.list": READ,
    "vm.create": WRITE,
    "vm.start": WRITE,
    "vm.shutdown": WRITE,
    "vm.stop": WRITE,
    "vm.pause": WRITE,
    "vm.resume": WRITE,
    "vm.reboot": WRITE,
    "vm.delete": WRITE,
    "vm.snapshot.create": WRITE,
    "vm.snapshot.revert": WRITE,
    "vm.snapshot.delete": WRITE,
}

ROLE_GRANTS: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset({PUBLIC, READ, WRITE}),
}


def allowed(identity: Identity, method: str) -> bool:
    needed = METHOD_PERMISSIONS.get(method)
    if needed is None:
        return False
    if needed == PUBLIC:
        return True
    return any(needed in ROLE_GRANTS.get(role, frozenset()) for role in identity.roles)


def authorize(identity: Identity, method: str) -> None:
    if not allowed(identity, method):
        raise PermissionDenied(
            f"{identity.user} may not call {method}",
            {"method": method, "user": identity.user},
        )
