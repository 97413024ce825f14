"""Where QEMU's migration stream meets the daemon on each host: a Unix socket.

libvirt's UNIX migration transport (``migrateuri = unix://PATH``) uses one path on both
hosts. On the source, libvirtd connects to PATH (the source daemon listens there) and
hands the connection to QEMU; on the destination, QEMU itself listens at PATH and the
destination daemon connects to it. PATH is ``<stream_dir>/<name>/qemu.sock`` with a
fresh ``<name>`` (16 hex digits) per migration; ``[migration] stream_dir`` must
therefore be the same on every node (the destination refuses any other path).

Who can reach the stream (no loopback port any local process could take first):

* ``stream_dir``: root's, mode 0711 (QEMU's user may pass through it, not list it);
* the source's ``<name>/``: root's, 0700. Only root can connect, and a connection whose
  peer is not root (libvirtd) is refused;
* the destination's ``<name>/``: owned by the user libvirt runs QEMU as (its DAC base
  label), 0700, so only that user and root can create the socket; the daemon connects
  only to a socket that user owns, and checks the peer's uid once connected.

Each ``<name>/`` is locked (``flock``) by the daemon whose migration it is, for as long
as the migration runs; at start a daemon sweeps away the unlocked ones, which a daemon
that stopped in the middle of a migration left behind.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import re
import secrets
import socket
import stat
import struct
import xml.etree.ElementTree as ET
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import trio

from novacron import errors
from novacron.logs import kv

log = logging.getLogger("novacron.migration")

SOCKET_NAME = "qemu.sock"
NBD_SOCKET_NAME = "nbd.sock"  # beside it when disks are copied (nbd_relay)
NAME = re.compile(r"[0-9a-f]{16}")
CONNECT_POLL_S = 0.05
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC


def new_name() -> str:
    return secrets.token_hex(8)


def socket_path(stream_dir: Path, name: str) -> Path:
    return stream_dir / name / SOCKET_NAME


def name_of(stream_dir: Path, path: str) -> str:
    """The migration's name in a path a source sent; ``invalid_params`` unless the path is
    exactly ``<this node's stream_dir>/<name>/qemu.sock``."""
    candidate = Path(path)
    if (
        candidate.name != SOCKET_NAME
        or candidate.parent.parent != stream_dir
        or not NAME.fullmatch(candidate.parent.name)
    ):
        raise errors.InvalidParams(
            f"stream_socket {path!r} is not {stream_dir}/<16 hex digits>/{SOCKET_NAME}: "
            "[migration] stream_dir must be the same on both nodes",
            {"stream_dir": str(stream_dir)},
        )
    return candidate.parent.name


def qemu_owner(capabilities: ET.Element, domain_type: str) -> tuple[int, int]:
    """The uid and gid libvirt runs QEMU as: the DAC security model's base label for the
    domain type (``+999:+994``); this process's own when libvirt has no DAC model (the
    test driver, or QEMU run as the caller)."""
    labels = {}
    for model in capabilities.iterfind("host/secmodel"):
        if model.findtext("model") == "dac":
            for label in model.iterfind("baselabel"):
                labels[label.get("type", "")] = (label.text or "").strip()
    text = labels.get(domain_type) or next(iter(labels.values()), "")
    found = re.fullmatch(r"\+?(\d+):\+?(\d+)", text)
    if found is None:
        return os.getuid(), os.getgid()
    return int(found[1]), int(found[2])


@dataclass
class StreamDir:
    """A migration's ``<stream_dir>/<name>/``, locked (``flock``) for as long as the
    migration may use it: :func:`sweep` leaves a locked directory alone, and the lock
    goes with the process that holds it, however that process ends."""

    path: Path  # the socket's path in it
    fd: int  # the directory, open and locked

    def remove(self) -> None:
        """Removes the socket and the directory (what is left of them), then lets go."""
        if self.fd < 0:
            return
        try:
            remove_dir(self.path)
        finally:
            os.close(self.fd)
            self.fd = -1


def make_dir(stream_dir: Path, name: str, owner: tuple[int, int] | None = None) -> StreamDir:
    """Creates ``<stream_dir>/<name>/`` (mode 0700, given to ``owner``: QEMU's user on
    the destination, root on the source) and ``stream_dir`` if needed (0711), locked
    until :meth:`StreamDir.remove`. ``conflict`` if the name is taken here,
    ``unavailable`` when the directory cannot be made."""
    directory = stream_dir / name
    try:
        stream_dir.mkdir(parents=True, exist_ok=True)
        info = stream_dir.lstat()
    except OSError as exc:
        raise _unavailable(f"cannot make {directory}", exc) from None
    if not _own_dir(info):
        raise errors.Unavailable(
            f"[migration] stream_dir {stream_dir} is not a directory of this daemon's user",
            {"stream_dir": str(stream_dir)},
        )
    try:
        if stat.S_IMODE(info.st_mode) != 0o711:
            stream_dir.chmod(0o711)
        directory.mkdir(mode=0o700)
    except FileExistsError:
        raise errors.Conflict(f"migration stream {name} is already here", {"name": name}) from None
    except OSError as exc:
        raise _unavailable(f"cannot make {directory}", exc) from None
    path = socket_path(stream_dir, name)
    fd = -1
    try:
        fd = os.open(directory, DIR_FLAGS)
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # (only a sweep could hold it)
        os.fchmod(fd, 0o700)  # whatever the umask
        if owner is not None and owner != (os.getuid(), os.getgid()):
            os.fchown(fd, *owner)
    except OSError as exc:
        remove_dir(path)
        if fd >= 0:
            os.close(fd)
        raise _unavailable(f"cannot make {directory} and give it to uid {owner}", exc) from None
    return StreamDir(path, fd)


def _unavailable(what: str, exc: OSError) -> errors.Unavailable:
    return errors.Unavailable(f"{what}: {exc.strerror or exc}", {"path": str(exc.filename)})


def remove_dir(path: Path) -> bool:
    """Removes a migration's socket (``path``) and its directory, if they are still
    there; whether the directory is gone (something else put there is left, and logged)."""
    directory = path.parent
    try:
        for sock in (path, directory / NBD_SOCKET_NAME):
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                sock.unlink()
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            directory.rmdir()
    except OSError as exc:
        log.warning("migration.stream_dir_left", extra=kv(path=str(directory), error=str(exc)))
        return False
    return True


def _own_dir(info: os.stat_result) -> bool:
    """Whether ``lstat`` found a directory (not a symlink) of this daemon's user."""
    return stat.S_ISDIR(info.st_mode) and info.st_uid == os.getuid()


def sweep(stream_dir: Path) -> list[str]:
    """Removes the directories of migrations no process runs any more (a daemon stopped
    in the middle of one left its directory behind): every ``<name>/`` in
    ``stream_dir`` that nobody holds locked. Returns their names. Run at start; a
    directory being made at that very moment may be taken (its migration then fails as
    ``unavailable``), one a migration holds never is."""
    try:
        info = stream_dir.lstat()
    except OSError:  # none yet (or unreachable: make_dir says so when a migration needs it)
        return []
    if not _own_dir(info):
        return []  # not ours: make_dir says so too
    swept = []
    try:
        with os.scandir(stream_dir) as entries:
            names = [
                e.name
                for e in entries
                if NAME.fullmatch(e.name) and e.is_dir(follow_symlinks=False)
            ]
    except OSError as exc:
        log.warning(
            "migration.stream_dir_unreadable", extra=kv(path=str(stream_dir), error=str(exc))
        )
        return []
    for name in names:
        try:
            fd = os.open(stream_dir / name, DIR_FLAGS)
        except OSError:
            continue  # gone meanwhile, or replaced by a symlink
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            if remove_dir(socket_path(stream_dir, name)):
                swept.append(name)
        except BlockingIOError:
            pass  # a running migration's
        finally:
            os.close(fd)
    return sorted(swept)


def peer(sock: trio.socket.SocketType) -> tuple[int, int]:
    """The peer's pid and uid (``SO_PEERCRED``: the process that listened, or connected)."""
    pid, uid, _ = struct.unpack("3i", sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    return int(pid), int(uid)


async def listen(path: Path) -> trio.SocketListener:
    """The source's listener at ``path`` (in a directory :func:`make_dir` made)."""
    sock = trio.socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        await sock.bind(str(path))
        sock.listen(1)
    except BaseException as exc:
        sock.close()
        if isinstance(exc, OSError):
            raise _unavailable(f"cannot listen at {path}", exc) from None
        raise
    return trio.SocketListener(sock)


async def accept_from(listener: trio.SocketListener, uid: int = 0) -> trio.SocketStream:
    """The first connection whose peer runs as ``uid`` (libvirtd: root); any other is
    closed and logged, and the wait goes on."""
    while True:
        stream = await listener.accept()
        _, got = peer(stream.socket)
        if got == uid:
            return stream
        log.warning("migration.stream_peer_refused", extra=kv(uid=got, expected=uid))
        await trio.aclose_forcefully(stream)


async def connect_when_bound(
    path: Path, uid: int, qemu_pid: Callable[[], Awaitable[int | None]] | None = None
) -> trio.SocketStream:
    """Connects to the socket QEMU (running as ``uid``) binds at ``path``, retrying until
    it is there. A socket owned by anyone else is never connected to; a peer that turns
    out not to be ``uid`` is refused (``migration_failed``), and so is a peer that is not
    the process ``qemu_pid`` names (the incoming domain's QEMU, as libvirt records it:
    another process of QEMU's user could have put its own socket there). When
    ``qemu_pid`` cannot tell, the uid check stands alone (logged). Bound it with
    ``fail_after``."""
    while True:
        try:
            info = await trio.Path(path).lstat()
        except FileNotFoundError:
            await trio.sleep(CONNECT_POLL_S)
            continue
        if not stat.S_ISSOCK(info.st_mode) or info.st_uid != uid:
            raise errors.MigrationFailed(
                f"{path} is not QEMU's socket (owner uid {info.st_uid}, expected {uid})"
            )
        try:
            stream = await trio.open_unix_socket(str(path))
        except OSError as exc:
            if exc.errno not in (errno.ECONNREFUSED, errno.ENOENT):
                raise
            await trio.sleep(CONNECT_POLL_S)  # bound, not yet listening
            continue
        pid, got = peer(stream.socket)
        if got != uid:
            await trio.aclose_forcefully(stream)
            raise errors.MigrationFailed(f"the peer at {path} runs as uid {got}, not {uid}")
        if qemu_pid is not None:
            try:
                want = await qemu_pid()
            except BaseException:
                await trio.aclose_forcefully(stream)
                raise
            if want is None:
                log.warning("migration.qemu_pid_unknown", extra=kv(path=str(path), pid=pid))
            elif pid != want:
                await trio.aclose_forcefully(stream)
                log.warning("migration.stream_peer_refused", extra=kv(pid=pid, expected=want))
                raise errors.MigrationFailed(
                    f"the peer at {path} is process {pid}, not the incoming domain's QEMU ({want})"
                )
            else:
                log.info("migration.qemu_checked", extra=kv(path=str(path), pid=pid))
        return stream
