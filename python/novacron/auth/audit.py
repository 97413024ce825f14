"""The audit log: every state-changing call and every denied call, hash-chained.

Each entry records time, principal, tenant, method, a sha256 digest of the canonical
parameters (not the parameters: they may hold data the log should not keep) and the
outcome. Entry *n* carries the hash of entry *n-1*, so editing or deleting an entry
breaks the chain at that point; :func:`verify` names the first entry that does not
check out. Truncating the newest entries leaves a valid shorter chain: compare the head
(``audit.tail``'s last hash) with one recorded elsewhere to detect that.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from typing import Any

import msgpack

from novacron.auth.identity import Identity
from novacron.blocking import Pool
from novacron.logs import kv
from novacron.state.db import GENESIS, StateStore, audit_hash

log = logging.getLogger("novacron.audit")

VERIFY_CHUNK = 5000


def params_digest(params: Any) -> str:
    """sha256 (hex) of the canonical text of a call's params, whatever MessagePack sent.

    Params JSON can carry (nil, booleans, numbers, strings, arrays, maps with string
    keys) are JSON with sorted keys and no spaces. Any others (a ``bin`` value or map
    key, an extension type) are ``"bin:"`` followed by that JSON of a tagged copy in
    which every string is ``"s:" + text``, every ``bin`` ``"b:" + hex``, every
    extension ``"x:<type>:" + hex``: no two different params share a text (plain JSON
    never begins with ``b``), and keys of both kinds sort without comparing a
    ``str`` with a ``bytes`` (the digest of such a call failed, and its audit entry
    with it)."""
    canonical = _json(params) if _plain(params) else "bin:" + _json(_tagged(params))
    return hashlib.sha256(canonical.encode("utf-8", "surrogatepass")).hexdigest()


def _json(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"))


def _plain(value: Any) -> bool:
    """Whether JSON writes ``value`` as it is (no ``bin``, no extension type)."""
    if value is None or isinstance(value, bool | int | float | str):
        return True
    if isinstance(value, list):
        return all(_plain(v) for v in value)
    if isinstance(value, dict):
        return all(isinstance(k, str) and _plain(v) for k, v in value.items())
    return False


def _tagged(value: Any) -> Any:
    if isinstance(value, str):
        return "s:" + value
    if isinstance(value, bytes):
        return "b:" + value.hex()
    if isinstance(value, msgpack.Timestamp):
        return f"x:-1:{value.to_bytes().hex()}"
    if isinstance(value, msgpack.ExtType):
        return f"x:{value.code}:{value.data.hex()}"
    if isinstance(value, list):
        return [_tagged(v) for v in value]
    if isinstance(value, dict):
        return {_tagged(k): _tagged(v) for k, v in value.items()}
    if value is None or isinstance(value, bool | int | float):
        return value
    return "?:" + repr(value)  # nothing the decoder gives; never fails the entry


class AuditLog:
    def __init__(self, store: StateStore, pool: Pool) -> None:
        self._store = store
        self._pool = pool

    async def record(
        self, identity: Identity, method: str, params: Any, outcome: str, tenant: str | None
    ) -> None:
        try:
            await self._pool.run(
                self._store.append_audit,
                time.time(),
                identity.principal,
                tenant,
                method,
                params_digest(params),
                outcome,
            )
        except Exception:  # the call itself already happened; never hide that it did
            log.exception("audit.append_failed", extra=kv(method=method, who=identity.principal))

    async def tail(self, limit: int) -> list[dict[str, Any]]:
        return await self._pool.run(self._store.audit_tail, limit)

    async def verify(self) -> dict[str, Any]:
        return await self._pool.run(verify, self._store)


def verify(store: StateStore) -> dict[str, Any]:
    """Walks the chain; ``ok`` false with the first bad entry's id and why."""
    prev, expected_id, count, after = GENESIS, 1, 0, 0
    while True:
        chunk = store.audit_entries(after, VERIFY_CHUNK)
        if not chunk:
            break
        for entry in chunk:
            problem = None
            if entry["id"] != expected_id:
                problem = f"entry {expected_id} is missing (next is {entry['id']})"
            elif entry["prev_hash"] != prev:
                problem = "its prev_hash does not match the entry before it"
            elif audit_hash(entry) != entry["hash"]:
                problem = "its contents do not match its hash (edited)"
            if problem:
                return {"ok": False, "entries": count, "first_bad": expected_id, "reason": problem}
            prev, expected_id, count = entry["hash"], expected_id + 1, count + 1
        after = chunk[-1]["id"]
    return {"ok": True, "entries": count, "head": prev}
