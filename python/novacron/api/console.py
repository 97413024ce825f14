"""``vm.console.*``: a running VM's serial console over the caller's connection.

``vm.console.open`` (to type) and ``vm.console.watch`` (to look on) answer a console id;
the guest's output then arrives as ``console`` notifications carrying that id,
``vm.console.write`` gives an open console input, and ``vm.console.close`` (or the
connection's end) lets it go. The clients of one VM share one libvirt stream
(:mod:`novacron.api.console_hub`): one types, any number watch, all see the same
output. When a console ends without its client asking (the VM stopped or left, another
client forced it over, the client fell too far behind) a ``console.closed``
notification says why. Consoles belong to the connection that opened them: another
connection cannot write to or close them.
"""

from __future__ import annotations

import functools
import logging
from pathlib import Path
from typing import Any

import trio

from novacron import errors
from novacron.api.console_hub import ConsoleHub, ConsoleSession, tell_end
from novacron.api.console_remote import RemoteConsole, open_remote
from novacron.api.services import Services
from novacron.api.vm import visible_record
from novacron.blocking import Pool
from novacron.logs import kv
from novacron.rpc.dispatch import CallContext, ConnectionState, Registry
from novacron.rpc.params import Params
from novacron.vm.console import ConsoleStream, open_stream, read_log

log = logging.getLogger("novacron.console")

MAX_PER_CONNECTION = 4
MAX_WRITE = 64 * 1024  # bytes of input in one vm.console.write
CONSOLE_THREADS = 4  # worker threads all consoles share (their calls never block long)
MAX_CONSOLE_ID = 2**31 - 1
MAX_LOG_READ = 1 << 20  # bytes of the console log one vm.console.log returns at most
MAX_SCROLLBACK = 64 * 1024  # bytes of the log a console may begin with (one notification)
DEFAULT_LOG_READ = 64 * 1024


def _session(ctx: CallContext, number: int) -> ConsoleSession | RemoteConsole:
    """The caller's connection's console ``number`` (here or relayed from the VM's
    node), else ``not_found``."""
    session = ctx.connection.consoles.get(number)
    if not isinstance(session, ConsoleSession | RemoteConsole):
        raise errors.NotFound(f"no console {number} open on this connection", {"console": number})
    ctx.tenant = session.tenant
    return session


async def _pump(
    hub: ConsoleHub, conn: ConnectionState, session: ConsoleSession, history: bytes
) -> None:
    """Sends ``history`` (the console log's end, if asked for), then the console's output
    until it ends, then ``console.closed`` unless the client closed it (or its
    connection ended)."""
    assert conn.notify is not None
    assert session.shared is not None
    gone = False
    try:
        with session.scope:
            if history:
                await conn.notify("console", {"console": session.id, "data": history})
            while data := await session.shared.output(session):
                await conn.notify("console", {"console": session.id, "data": data})
    except (trio.ClosedResourceError, trio.BrokenResourceError):
        gone = True
    except Exception:  # (a bug of ours: the console ends, the connection stays)
        log.exception("console.failed", extra=kv(vm=session.vm, console=session.id))
        session.end = ("error", "internal error; see the daemon log")
    finally:
        conn.consoles.pop(session.id, None)
        await hub.leave(session)
        session.done.set()
    await tell_end(conn, session, gone, log)


def register(registry: Registry, services: Services) -> None:
    vms = services.vms
    pool = Pool("console", CONSOLE_THREADS)

    async def opener(vm: str, force: bool) -> ConsoleStream:
        stream, conn = await vms.hv_pool.run(open_stream, vms.hv, vm, force)
        return ConsoleStream(stream, pool, conn)

    hub = services.consoles = ConsoleHub(opener, pool)

    async def owner_elsewhere(ctx: CallContext, name: str) -> tuple[str, str] | None:
        """The node that has VM ``name`` and its tenant, when it is not this node (in a
        cluster, for a caller's own call: a forwarded one is never forwarded again)."""
        if services.cluster is None or ctx.forwarded:
            return None
        return await services.cluster.owner_elsewhere(ctx, name)

    async def start(ctx: CallContext, p: Params, read_only: bool) -> dict[str, Any]:
        name = p.name()
        force = p.flag("force")
        scrollback = p.integer("scrollback", 0, MAX_SCROLLBACK, default=0)
        p.done()
        conn = ctx.connection
        if conn.start_task is None or conn.notify is None:
            raise errors.Conflict("this connection cannot carry a console")
        if len(conn.consoles) >= MAX_PER_CONNECTION:
            raise errors.Conflict(
                f"this connection has {MAX_PER_CONNECTION} consoles open already",
                {"limit": MAX_PER_CONNECTION},
            )
        number = conn.last_console % MAX_CONSOLE_ID + 1
        user = ctx.identity.user
        try:
            rec = await visible_record(vms, ctx, name)
        except errors.NotFound:
            owner = await owner_elsewhere(ctx, name)
            if owner is None:
                raise
            assert services.cluster is not None
            node, ctx.tenant = owner
            conn.last_console = number
            method = "vm.console.watch" if read_only else "vm.console.open"
            caller = ctx.identity.to_wire()
            remote = RemoteConsole(number, name, node, read_only, caller, ctx.tenant)
            params: dict[str, Any] = {"name": name}
            if force:
                params["force"] = True
            if scrollback:
                params["scrollback"] = scrollback
            opened = await open_remote(services.cluster, conn, remote, method, params)
            where: dict[str, Any] = {"node": node}
        else:
            session = ConsoleSession(number, rec.name, rec.tenant, read_only, user)
            await hub.join(session, force)
            conn.last_console = number
            conn.consoles[number] = session
            try:
                # (read once the console is joined: what the guest writes from now on
                # comes live; a byte written in between may come twice, never not at all)
                history = b""
                if scrollback and not vms.hv.is_test_driver:
                    path = Path(vms.console_log(rec.name))
                    history = (await pool.run(read_log, path, None, scrollback))["data"]
                conn.start_task(functools.partial(_pump, hub, conn, session, history))
            except BaseException:  # (the connection is ending: nothing will pump it)
                del conn.consoles[number]
                await hub.leave(session)
                raise
            opened, where = {"console": number, "vm": rec.name, "read_only": read_only}, {}
        log.info(
            "console.opened",
            extra=kv(
                vm=opened["vm"],
                console=number,
                user=user,
                force=force,
                read_only=read_only,
                **where,
            ),
        )
        return opened

    @registry.method("vm.console.open")
    async def console_open(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Open a running VM's serial console on this connection, to type into it
        (``force``: take it from the client that has it; ``scrollback``: begin with that
        many of the console log's last bytes)."""
        return await start(ctx, p, read_only=False)

    @registry.method("vm.console.watch")
    async def console_watch(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Watch a running VM's serial console on this connection (its output only,
        alongside whoever types)."""
        return await start(ctx, p, read_only=True)

    @registry.method("vm.console.write")
    async def console_write(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Give input to a console this connection opened."""
        number = p.integer("console", 1, MAX_CONSOLE_ID)
        data = p.binary("data", MAX_WRITE)
        p.done()
        await _session(ctx, number).write(data)
        return {"written": len(data)}

    @registry.method("vm.console.close")
    async def console_close(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Let go of a console this connection opened."""
        number = p.integer("console", 1, MAX_CONSOLE_ID)
        p.done()
        session = _session(ctx, number)
        session.closed_by_client = True
        session.scope.cancel()
        await session.done.wait()
        return {"console": session.id, "closed": True}

    @registry.method("vm.console.log")
    async def console_log(ctx: CallContext, p: Params) -> dict[str, Any]:
        """Bytes of a VM's console log: its end, or from an offset (to follow it)."""
        name = p.name()
        limit = p.integer("limit", 1, MAX_LOG_READ, default=DEFAULT_LOG_READ)
        offset = p.integer("offset", 0, 2**63 - 1) if p.given("offset") else None
        p.done()
        rec = await visible_record(vms, ctx, name)
        if vms.hv.is_test_driver:
            raise errors.Conflict(
                f"VM {rec.name!r} has no console log (libvirt's test driver has no serial ports)",
                {"vm": rec.name},
            )
        path = Path(vms.console_log(rec.name))
        result = await pool.run(read_log, path, offset, limit)
        return {"vm": rec.name, **result}
