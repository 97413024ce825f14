"""What one connection may hold, and how many connections the daemon keeps open.

Each open connection costs a task, socket buffers and up to ``max_message`` bytes of a
message not yet complete. Without a cap, one identity could open connections until the
daemon runs out of memory or descriptors and everyone else is locked out. So:

* an identity (``tls:alice``, ``unix:bob``) holds at most ``per_identity`` connections at
  once (every listener counted together), and all identities together ``total``;
* a local admin (root, the daemon's user, the socket group) is counted but never refused:
  the operator can always get in to see what is going on;
* a message once begun must be complete within ``message_timeout_s``, so a peer cannot
  keep a partial message's buffer forever (between messages a connection may stay idle
  as long as it likes: event subscribers do);
* the bytes of messages begun and not yet complete, all connections together, stay
  within ``[rpc] max_pending_bytes`` (:class:`PendingBudget`): each connection holds
  its first :data:`FREE_PENDING` bytes on its own (most requests are far smaller), and
  beyond them draws on that one budget. Without it the connection caps alone would let
  4096 connections keep 8 MiB each.

A refused connection is told why (``protocol.error`` with code ``too_many_connections``,
or ``overloaded`` for a message the budget cannot take) and closed; the limits are
counted again as connections end.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from novacron.auth.identity import Identity

# what any connection may hold of a message begun without drawing on the daemon's budget
FREE_PENDING = 64 * 1024


class PendingBudget:
    """Bytes of requests begun and not yet complete beyond each connection's
    :data:`FREE_PENDING`, held by every connection together (``total`` 0: no limit,
    still counted)."""

    def __init__(self, total: int) -> None:
        if total < 0:
            raise ValueError("the pending budget cannot be negative")
        self.total = total
        self.used = 0
        self.peak = 0
        self.refused = 0

    def settle(self, drawn: int, pending: int, exempt: bool = False) -> int | None:
        """A connection that draws ``drawn`` bytes holds ``pending`` bytes of a message
        begun now: returns what it draws from now on, or None when that does not fit
        (then nothing changed; the connection is closed). ``exempt`` (a local admin)
        draws but is never refused."""
        wanted = max(0, pending - FREE_PENDING)
        grow = wanted - drawn
        if grow > 0 and self.total and not exempt and self.used + grow > self.total:
            self.refused += 1
            return None
        self.used += grow
        self.peak = max(self.peak, self.used)
        return wanted

    def statistics(self) -> dict[str, Any]:
        return {
            "bytes": self.used,
            "peak_bytes": self.peak,
            "max_bytes": self.total,
            "refused": self.refused,
        }


@dataclass(frozen=True)
class ConnectionSettings:
    """How every connection of a listener is served (``[rpc]`` of the configuration)."""

    max_message: int
    max_inflight: int
    message_timeout_s: float  # 0: no limit; between messages a connection may stay idle
    pending: PendingBudget | None = None  # the daemon's, shared by every connection


class ConnectionLimits:
    """Counts open connections by identity; decides whether another may open.

    ``total`` or ``per_identity`` of 0 means no limit of that kind.
    """

    def __init__(self, total: int, per_identity: int) -> None:
        if total < 0 or per_identity < 0:
            raise ValueError("connection limits cannot be negative")
        self.total = total
        self.per_identity = per_identity
        self._open: dict[str, int] = {}
        self._count = 0
        self.refused = 0

    def admit(self, identity: Identity) -> str | None:
        """Counts a new connection of ``identity`` and returns None, or returns why it
        is refused (and counts nothing)."""
        held = self._open.get(identity.principal, 0)
        if not identity.local_admin:
            why = None
            if self.per_identity and held >= self.per_identity:
                why = (
                    f"{identity.principal} has {held} connections open, "
                    f"at most {self.per_identity} per identity"
                )
            elif self.total and self._count >= self.total:
                why = f"the daemon has {self._count} connections open, at most {self.total}"
            if why is not None:
                self.refused += 1
                return why
        self._open[identity.principal] = held + 1
        self._count += 1
        return None

    def release(self, identity: Identity) -> None:
        """A connection ``admit`` counted has ended."""
        held = self._open.get(identity.principal, 0)
        if held <= 0:
            raise ValueError(f"{identity.principal} has no connection to release")
        if held == 1:
            del self._open[identity.principal]
        else:
            self._open[identity.principal] = held - 1
        self._count -= 1

    def held(self, identity: Identity) -> int:
        return self._open.get(identity.principal, 0)

    def statistics(self) -> dict[str, Any]:
        return {
            "open": self._count,
            "identities": len(self._open),
            "refused": self.refused,
            "max": self.total,
            "max_per_identity": self.per_identity,
        }
