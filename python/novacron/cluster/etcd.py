"""An etcd v3 client for trio: etcd's JSON gateway over HTTPS (mutual TLS, the node's
certificate), through httpx on anyio's trio backend. No threads, no gRPC.

Keys and values are bytes on the wire (base64 in the gateway's JSON); int64 fields
arrive as strings and absent fields mean zero/false (protobuf's JSON mapping). Every
call tries the endpoints in turn, starting with the one that answered last; when none
answers within ``timeout_s`` the call fails with ``unavailable`` (cluster calls fail
fast; the daemon's local work never waits on etcd).
"""

from __future__ import annotations

import base64
import json
import logging
import ssl
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import trio

from novacron import errors
from novacron.logs import kv as logkv

log = logging.getLogger("novacron.cluster")

GRPC_UNAVAILABLE = 14
GRPC_DEADLINE = 4


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def unb64(text: str | None) -> bytes:
    return base64.b64decode(text) if text else b""


def prefix_end(prefix: bytes) -> bytes:
    """The ``range_end`` that makes a range cover every key starting with ``prefix``."""
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\x00"


# the parts of a transaction (``EtcdClient.txn``): comparisons, then requests


def holds(key: bytes, value: bytes) -> dict[str, Any]:
    """Compare: ``key`` holds ``value``."""
    return {"key": b64(key), "target": "VALUE", "result": "EQUAL", "value": b64(value)}


def absent(key: bytes) -> dict[str, Any]:
    """Compare: ``key`` does not exist."""
    return {"key": b64(key), "target": "CREATE", "result": "EQUAL", "create_revision": "0"}


def exists(key: bytes) -> dict[str, Any]:
    """Compare: ``key`` exists."""
    return {"key": b64(key), "target": "CREATE", "result": "GREATER", "create_revision": "0"}


def put(key: bytes, value: bytes, lease: int = 0) -> dict[str, Any]:
    body: dict[str, Any] = {"key": b64(key), "value": b64(value)}
    if lease:
        body["lease"] = str(lease)
    return {"request_put": body}


def delete(key: bytes) -> dict[str, Any]:
    return {"request_delete_range": {"key": b64(key)}}


def read(key: bytes) -> dict[str, Any]:
    return {"request_range": {"key": b64(key)}}


def found(responses: list[dict[str, Any]], i: int) -> KeyValue | None:
    """The key the ``read`` at position ``i`` of a transaction's responses found."""
    kvs = responses[i].get("response_range", {}).get("kvs") or [] if len(responses) > i else []
    return KeyValue.from_json(kvs[0]) if kvs else None


@dataclass(frozen=True)
class KeyValue:
    key: bytes
    value: bytes
    create_revision: int
    mod_revision: int
    lease: int = 0

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> KeyValue:
        return cls(
            key=unb64(doc.get("key")),
            value=unb64(doc.get("value")),
            create_revision=int(doc.get("create_revision", 0)),
            mod_revision=int(doc.get("mod_revision", 0)),
            lease=int(doc.get("lease", 0)),
        )


@dataclass(frozen=True)
class WatchEvent:
    kind: str  # "put" or "delete"
    kv: KeyValue


class EtcdError(errors.Unavailable):
    """etcd answered with an error (or not at all)."""


class WatchCompacted(Exception):
    """A watch's start revision was compacted away: read the keys again and watch
    from the revision of that read (events in between are lost)."""

    def __init__(self, compact_revision: int) -> None:
        super().__init__(f"revisions before {compact_revision} were compacted")
        self.compact_revision = compact_revision


class EtcdClient:
    def __init__(self, endpoints: list[str], context: ssl.SSLContext, timeout_s: float) -> None:
        if not endpoints:
            raise ValueError("no etcd endpoints")
        self.endpoints = [e.rstrip("/") for e in endpoints]
        self.timeout_s = timeout_s
        self._preferred = 0
        self._http = httpx.AsyncClient(verify=context, timeout=httpx.Timeout(timeout_s))

    async def aclose(self) -> None:
        await self._http.aclose()

    # -- transport -----------------------------------------------------------------------

    def _order(self) -> list[int]:
        n = len(self.endpoints)
        return [(self._preferred + i) % n for i in range(n)]

    async def call(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        """POSTs ``body`` to the gateway's ``path`` on the first endpoint that answers."""
        problems: list[str] = []
        for i in self._order():
            url = self.endpoints[i] + path
            try:
                resp = await self._http.post(url, json=body)
            except (httpx.TransportError, OSError, ssl.SSLError) as exc:
                problems.append(f"{self.endpoints[i]}: {type(exc).__name__}: {exc}")
                continue
            doc: dict[str, Any] = resp.json() if resp.content else {}
            if resp.status_code == 200:
                self._preferred = i
                return doc
            code = doc.get("code")
            message = doc.get("message") or doc.get("error") or resp.text
            if code in (GRPC_UNAVAILABLE, GRPC_DEADLINE) or resp.status_code >= 500:
                problems.append(f"{self.endpoints[i]}: {message}")
                continue  # this member has no leader or is cut off: try another
            raise EtcdError(f"etcd refused {path}: {message}", {"code": code})
        raise EtcdError("etcd unavailable: " + "; ".join(problems), {"endpoints": self.endpoints})

    # -- key-value -----------------------------------------------------------------------

    async def get(self, key: bytes) -> KeyValue | None:
        doc = await self.call("/v3/kv/range", {"key": b64(key)})
        kvs = doc.get("kvs") or []
        return KeyValue.from_json(kvs[0]) if kvs else None

    async def get_prefix(self, prefix: bytes) -> tuple[list[KeyValue], int]:
        """Every key under ``prefix`` and the store revision they were read at."""
        doc = await self.call(
            "/v3/kv/range", {"key": b64(prefix), "range_end": b64(prefix_end(prefix))}
        )
        revision = int(doc.get("header", {}).get("revision", 0))
        return [KeyValue.from_json(k) for k in doc.get("kvs") or []], revision

    async def revision(self) -> int:
        """The store's current revision (it moves with every write)."""
        doc = await self.call("/v3/kv/range", {"key": b64(b"\0"), "count_only": True})
        return int(doc.get("header", {}).get("revision", 0))

    async def put(self, key: bytes, value: bytes, lease: int = 0) -> int:
        doc = await self.call("/v3/kv/put", put(key, value, lease)["request_put"])
        return int(doc.get("header", {}).get("revision", 0))

    async def txn(
        self,
        compare: list[dict[str, Any]],
        success: list[dict[str, Any]],
        failure: list[dict[str, Any]],
    ) -> tuple[bool, list[dict[str, Any]]]:
        doc = await self.call(
            "/v3/kv/txn", {"compare": compare, "success": success, "failure": failure}
        )
        return bool(doc.get("succeeded", False)), list(doc.get("responses") or [])

    async def create(self, key: bytes, value: bytes, lease: int = 0) -> KeyValue | None:
        """Writes ``key`` only if it does not exist; returns None when it did, else the
        key as it already was."""
        ok, responses = await self.txn([absent(key)], [put(key, value, lease)], [read(key)])
        return None if ok else found(responses, 0)

    async def _if_holds(self, key: bytes, expected: bytes, request: dict[str, Any]) -> bool:
        """Runs ``request`` only if ``key`` holds ``expected`` now."""
        ok, _ = await self.txn([holds(key, expected)], [request], [])
        return ok

    async def replace(self, key: bytes, expected: bytes, value: bytes) -> bool:
        """Writes ``key`` only if it holds ``expected`` now."""
        return await self._if_holds(key, expected, put(key, value))

    async def delete_if(self, key: bytes, expected: bytes) -> bool:
        """Deletes ``key`` only if it holds ``expected`` now."""
        return await self._if_holds(key, expected, delete(key))

    # -- leases --------------------------------------------------------------------------

    async def grant(self, ttl_s: int) -> int:
        doc = await self.call("/v3/lease/grant", {"TTL": str(ttl_s)})
        return int(doc["ID"])

    async def keepalive(self, lease: int) -> int:
        """Refreshes ``lease``; returns its TTL (0: it expired, grant a new one)."""
        doc = await self.call("/v3/lease/keepalive", {"ID": str(lease)})
        return int(doc.get("result", {}).get("TTL", 0))

    async def revoke(self, lease: int) -> None:
        await self.call("/v3/lease/revoke", {"ID": str(lease)})

    # -- watch ---------------------------------------------------------------------------

    async def watch_prefix(
        self, prefix: bytes, start_revision: int
    ) -> AsyncIterator[tuple[int, list[WatchEvent]]]:
        """Batches of events under ``prefix`` from ``start_revision`` on, with the
        revision each batch was at; reconnects (to any endpoint) from the revision after
        the last one seen, so nothing is missed or repeated. Runs until cancelled, or
        raises :class:`WatchCompacted` when etcd no longer has that revision."""
        next_revision = start_revision
        backoff = 0.2
        while True:
            body = {
                "create_request": {
                    "key": b64(prefix),
                    "range_end": b64(prefix_end(prefix)),
                    "start_revision": str(next_revision),
                }
            }
            for i in self._order():
                url = self.endpoints[i] + "/v3/watch"
                compacted = 0
                try:
                    timeout = httpx.Timeout(self.timeout_s, read=None)
                    async with self._http.stream("POST", url, json=body, timeout=timeout) as resp:
                        if resp.status_code != 200:
                            continue
                        backoff = 0.2
                        async for line in resp.aiter_lines():
                            try:
                                batch = _watch_batch(line)
                            except WatchCompacted as exc:
                                # closing the response ends httpx's own iterators (left
                                # unfinished, they would warn when collected)
                                compacted = exc.compact_revision
                                await resp.aclose()
                                continue
                            if batch is None:
                                continue
                            revision, events = batch
                            if events:
                                next_revision = revision + 1
                                yield revision, events
                except (httpx.TransportError, httpx.StreamClosed, OSError, ssl.SSLError) as exc:
                    if not compacted:
                        log.debug("etcd.watch_broken", extra=logkv(endpoint=url, error=str(exc)))
                if compacted:
                    raise WatchCompacted(compacted)
            await trio.sleep(backoff)
            backoff = min(backoff * 2, 5.0)


def _watch_batch(line: str) -> tuple[int, list[WatchEvent]] | None:
    line = line.strip()
    if not line:
        return None
    doc = json.loads(line)
    result = doc.get("result")
    if not isinstance(result, dict):
        return None
    compacted = int(result.get("compact_revision", 0))
    if compacted:
        raise WatchCompacted(compacted)
    events = [
        WatchEvent(
            "delete" if e.get("type") == "DELETE" else "put",
            KeyValue.from_json(e.get("kv", {})),
        )
        for e in result.get("events") or []
    ]
    revision = max((e.kv.mod_revision for e in events), default=0)
    return revision, events
