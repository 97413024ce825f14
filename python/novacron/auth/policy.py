"""The one table of what each method needs, and the one decision.

Every registered method must appear in :data:`METHOD_PERMISSIONS` (a unit test
enforces it); a method missing from the table is denied. Roles grant permissions:

* ``admin`` — everything, in every tenant;
* ``operator`` — ``read`` and ``write`` (VM and network operations) within its tenants;
* ``viewer`` — ``read`` within its tenants;
* ``node`` — ``node`` (daemon-to-daemon calls) and nothing else.

``public`` needs no role. Tenant scoping is the second half of the decision: handlers
resolve the object first and treat an object of a tenant the caller does not see as
absent (``not_found``), see :func:`check_tenant`.
"""

from __future__ import annotations

from typing import Final

from novacron.auth.identity import Identity
from novacron.errors import NotFound, PermissionDenied

PUBLIC: Final = "public"
READ: Final = "read"
WRITE: Final = "write"
ADMIN: Final = "admin"
NODE: Final = "node"
PERMISSIONS: Final = (PUBLIC, READ, WRITE, ADMIN, NODE)

METHOD_PERMISSIONS: Final[dict[str, str]] = {
    "session.hello": PUBLIC,
    "auth.whoami": PUBLIC,
    "node.info": READ,
    "node.backup": ADMIN,
    "node.cordon": ADMIN,
    "node.uncordon": ADMIN,
    "node.drain": ADMIN,
    "events.subscribe": READ,
    "events.unsubscribe": READ,
    "vm.list": READ,
    "vm.get": READ,
    "vm.stats": READ,
    "vm.guest": READ,
    "image.list": READ,
    "vm.stats.list": READ,
    "vm.snapshot.list": READ,
    "vm.create": WRITE,
    "vm.start": WRITE,
    "vm.shutdown": WRITE,
    "vm.stop": WRITE,
    "vm.pause": WRITE,
    "vm.resume": WRITE,
    "vm.reboot": WRITE,
    "vm.delete": WRITE,
    "vm.update": WRITE,
    "vm.snapshot.create": WRITE,
    "vm.snapshot.revert": WRITE,
    "vm.snapshot.delete": WRITE,
    "auth.bind": ADMIN,
    "auth.unbind": ADMIN,
    "auth.bindings": ADMIN,
    "audit.tail": ADMIN,
    "audit.verify": ADMIN,
    "tls.reload": ADMIN,
    "quota.get": READ,
    "quota.set": ADMIN,
    "vm.migrate": WRITE,
    "op.get": READ,
    "op.list": READ,
    "op.cancel": WRITE,
    "migration.prepare": NODE,
    "migration.result": NODE,
    "migration.abort": NODE,
    "net.list": READ,
    "net.get": READ,
    "net.create": WRITE,
    "net.delete": WRITE,
    "vm.nic.attach": WRITE,
    "vm.nic.detach": WRITE,
    "vm.disk.attach": WRITE,
    "vm.disk.detach": WRITE,
    "vm.disk.resize": WRITE,
    "vm.disk.limit": ADMIN,
    "vm.nic.limit": ADMIN,
    "vm.clone": WRITE,
    "vm.console.log": READ,
    "vm.console.open": WRITE,
    "vm.console.watch": READ,
    "vm.console.write": WRITE,
    "vm.console.close": WRITE,
    "cluster.nodes": READ,
    "cluster.vms": READ,
    "cluster.status": READ,
    "cluster.forward": NODE,
    "cluster.place": READ,
    "cluster.stats": READ,
}

# calls about one VM by name that a node forwards to the VM's owner in a cluster
FORWARDABLE: Final = frozenset(
    {
        "vm.get",
        "vm.stats",
        "vm.guest",
        "vm.start",
        "vm.stop",
        "vm.pause",
        "vm.resume",
        "vm.reboot",
        "vm.shutdown",
        "vm.delete",
        "vm.update",
        "vm.snapshot.create",
        "vm.snapshot.list",
        "vm.snapshot.revert",
        "vm.snapshot.delete",
        "vm.nic.attach",
        "vm.nic.detach",
        "vm.nic.limit",
        "vm.disk.attach",
        "vm.disk.detach",
        "vm.disk.resize",
        "vm.disk.limit",
        "vm.clone",
        "vm.migrate",
        "vm.console.log",
    }
)

# what ``cluster.forward`` runs for another node: the calls above, a create placed on this
# node, this node's part of ``cluster.stats`` and the consoles another node relays
FORWARDED: Final = (
    FORWARDABLE
    | {"vm.create", "vm.stats.list"}
    | {
        "vm.console.open",
        "vm.console.watch",
        "vm.console.write",
        "vm.console.close",
    }
)
# forwarded calls that run on the forwarding connection, not in a context of their own: a
# console a node opens for its caller lives on its connection to the VM's node, which
# relays it (api/console_remote.py)
ON_CONNECTION: Final = frozenset(
    {"vm.console.open", "vm.console.watch", "vm.console.write", "vm.console.close"}
)

ROLE_GRANTS: Final[dict[str, frozenset[str]]] = {
    "admin": frozenset({PUBLIC, READ, WRITE, ADMIN, NODE}),
    "operator": frozenset({PUBLIC, READ, WRITE}),
    "viewer": frozenset({PUBLIC, READ}),
    "node": frozenset({PUBLIC, NODE}),
}
ROLES: Final = tuple(ROLE_GRANTS)

# calls that change state (audited even when they succeed): every ``write`` method and
# the admin methods that change something (admin reads such as audit.tail are not)
# (a console's opening is audited, with who and which VM; not each keystroke after it
# nor its closing, which the daemon's log records with the bytes it carried)
CHANGING: Final = frozenset(
    {m for m, p in METHOD_PERMISSIONS.items() if p == WRITE}
    - {"vm.console.write", "vm.console.close"}
    | {"auth.bind", "auth.unbind", "tls.reload", "quota.set", "node.backup"}
    | {"node.cordon", "node.uncordon", "node.drain", "vm.disk.limit", "vm.nic.limit"}
    | {"migration.prepare", "migration.abort"}
    # (cluster.forward is audited on the owning node as the call it carries)
)


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


def changes_state(method: str) -> bool:
    return method in CHANGING


def check_tenant(identity: Identity, tenant: str, what: str, name: str) -> None:
    """An object of a tenant the caller does not see is reported as not existing."""
    if not identity.sees(tenant):
        raise NotFound(f"{what} {name!r} not found", {what: name})


def decide(identity: Identity, method: str, target_tenant: str | None) -> str:
    """The whole decision for a call on an object of ``target_tenant`` (None: no object):
    ``"allow"``, ``"permission_denied"`` (the role lacks the permission) or ``"not_found"``
    (the object is in a tenant the caller does not see)."""
    if not allowed(identity, method):
        return "permission_denied"
    if target_tenant is not None and not identity.sees(target_tenant):
        return "not_found"
    return "allow"
