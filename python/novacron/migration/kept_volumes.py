"""Volumes a move kept on its source, deleted once the destination confirms the VM.

A VM with disks in its node's pool moves with copies of its volumes (stopped: copied by
the daemons; running: QEMU's NBD mirror). The source deletes its own volumes once the
destination says it recorded the VM (``migration.result``: ``succeeded``). When that word
does not come (the destination restarted, or the link failed after libvirt moved the
VM), the source keeps them as the only sure copy: the operation's result says
``storage.source_volumes: "kept"`` and ``storage.kept: {"paths", "address"}``.

This sweep, at the daemon's start and every :data:`SWEEP_S` after, asks each such
destination again. Once one answers ``succeeded``, the kept volumes are deleted and the
operation's result amended (``source_volumes: "deleted"``, ``kept`` dropped, ``swept_at``
added). Anything else — no answer, another state, the operation unknown there — keeps
them for the next sweep (or the operator). A kept volume that a VM of this node uses
again (the VM came back, or a new one was given that path) is never deleted; its entry
is dropped from the result (``source_volumes: "in_use"``).
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import TYPE_CHECKING, Any

import trio

from novacron import errors
from novacron.client import connect_tls
from novacron.logs import kv
from novacron.migration import volume_copies
from novacron.sync_client import TlsFiles, split_address
from novacron.vm.spec import VmSpec

if TYPE_CHECKING:
    from novacron.migration.service import MigrationService

log = logging.getLogger("novacron.migration")

SWEEP_S = 600.0  # between sweeps
ASK_S = 30.0  # for one destination's answer
MAX_OPS = 10_000  # succeeded operations looked at, most recent first


def kept_of(row: dict[str, Any]) -> tuple[list[str], str, str] | None:
    """``(paths, destination address, destination operation)`` of an operation that
    kept its source volumes; None for any other (or a result not of that shape)."""
    result = row.get("result")
    if row.get("kind") != "migrate_out" or not isinstance(result, dict):
        return None
    storage = result.get("storage")
    if not isinstance(storage, dict) or storage.get("source_volumes") != "kept":
        return None
    kept, dest_op = storage.get("kept"), result.get("destination_op")
    if not isinstance(kept, dict) or not isinstance(dest_op, str):
        return None
    paths, address = kept.get("paths"), kept.get("address")
    if not isinstance(address, str) or not isinstance(paths, list) or not paths:
        return None
    if not all(isinstance(p, str) for p in paths):
        return None
    return paths, address, dest_op


async def destination_state(files: TlsFiles, address: str, dest_op: str) -> str | None:
    """How the destination says its side of ``dest_op`` ended; None when it does not
    answer (unreachable, refusing, unknown operation)."""
    host, _ = split_address(address)
    with trio.move_on_after(ASK_S):
        with contextlib.suppress(errors.NovaCronError, trio.BrokenResourceError, OSError):
            async with connect_tls(address, files, server_name=host) as peer:
                got = await peer.call("migration.result", op=dest_op)
                state = got.get("state") if isinstance(got, dict) else None
                return state if isinstance(state, str) else None
    return None


async def sweep(svc: MigrationService) -> int:
    """One sweep: the kept volumes deleted now (their number)."""
    files = svc.tls_files()
    if files is None:
        return 0
    vms = svc.vms
    rows = await vms.db_pool.run(vms.store.list_operations, MAX_OPS, "succeeded")
    found = [(row, k) for row in rows if (k := kept_of(row)) is not None]
    if not found:
        return 0
    in_use = set()
    for rec in await vms.records.all():
        with contextlib.suppress(TypeError, ValueError):
            in_use.update(vms.disk_paths(VmSpec.from_dict(rec.spec)))
    deleted = 0
    for row, (paths, address, dest_op) in found:
        storage = row["result"]["storage"]
        used = sorted(in_use.intersection(paths))
        if used:
            log.warning("migration.kept_volumes_in_use", extra=kv(op=row["id"], paths=used))
            storage["source_volumes"] = "in_use"
        elif await destination_state(files, address, dest_op) == "succeeded":
            await vms.refresh_pool()
            if not await volume_copies.delete(vms, paths):
                continue  # (logged there: tried again next time)
            log.info("migration.kept_volumes_deleted", extra=kv(op=row["id"], paths=paths))
            storage["source_volumes"] = "deleted"
            deleted += len(paths)
        else:
            continue
        storage.pop("kept", None)
        storage["swept_at"] = time.time()
        await svc.ops.amend(row, "succeeded", row["result"])
    return deleted


async def keep_sweeping(svc: MigrationService) -> None:
    """:func:`sweep` now and every :data:`SWEEP_S` (a failed sweep is logged)."""
    while True:
        try:
            await sweep(svc)
        except errors.NovaCronError as exc:
            log.warning("migration.kept_volumes_sweep_failed", extra=kv(error=exc.message))
        await trio.sleep(SWEEP_S)
