"""The Unix sockets QEMU's migration stream crosses on each host: paths, directories,
ownership and the peer checks, with real sockets (and a real other user where root
can run one)."""

from __future__ import annotations

import logging
import os
import shutil
import signal
import socket
import stat
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
import trio
from hypothesis import given
from hypothesis import strategies as st

from novacron import errors, logs
from novacron.migration import qemu_socket
from novacron.vm.driver import Hypervisor

NOBODY = 65534
as_root = pytest.mark.skipif(os.getuid() != 0, reason="needs root to act as another user")
STREAMS = Path("/run/novacron/migration")


def test_new_names_are_fresh_16_hex_digits() -> None:
    names = {qemu_socket.new_name() for _ in range(100)}
    assert len(names) == 100
    assert all(qemu_socket.NAME.fullmatch(n) for n in names)


def test_name_of_accepts_only_this_nodes_socket_paths() -> None:
    good = "/run/novacron/migration/0123456789abcdef/qemu.sock"
    assert qemu_socket.name_of(STREAMS, good) == "0123456789abcdef"
    for bad in (
        "/run/novacron/other/0123456789abcdef/qemu.sock",
        "/run/novacron/migration/0123456789abcdef/x.sock",
        "/run/novacron/migration/0123456789abcde/qemu.sock",
        "/run/novacron/migration/0123456789abcdeg/qemu.sock",
        "/run/novacron/migration/../migration/0123456789abcdef/qemu.sock",
        "/run/novacron/migration/0123456789abcdef/../0123456789abcdef/qemu.sock",
        "run/novacron/migration/0123456789abcdef/qemu.sock",
        "",
    ):
        with pytest.raises(errors.InvalidParams, match="stream_dir"):
            qemu_socket.name_of(STREAMS, bad)


@given(st.text(alphabet="/.abcdef0123456789qemu.sockrnvitg", max_size=80))
def test_name_of_never_names_a_path_outside_the_stream_dir(text: str) -> None:
    try:
        name = qemu_socket.name_of(STREAMS, text)
    except errors.InvalidParams:
        return
    assert qemu_socket.NAME.fullmatch(name)
    assert qemu_socket.socket_path(STREAMS, name) == Path(text)
    assert ".." not in Path(text).parts


CAPS = """<capabilities><host>
  <secmodel><model>apparmor</model><doi>0</doi></secmodel>
  <secmodel><model>dac</model><doi>0</doi>
    <baselabel type='kvm'>+64055:+994</baselabel>
    <baselabel type='qemu'>+999:+995</baselabel>
  </secmodel>
</host></capabilities>"""


def test_qemu_owner_is_libvirts_dac_base_label_for_the_domain_type() -> None:
    caps = ET.fromstring(CAPS)
    assert qemu_socket.qemu_owner(caps, "kvm") == (64055, 994)
    assert qemu_socket.qemu_owner(caps, "qemu") == (999, 995)
    assert qemu_socket.qemu_owner(caps, "hvf") == (64055, 994)  # the first there is
    no_dac = ET.fromstring(
        "<capabilities><host><secmodel><model>none</model></secmodel></host></capabilities>"
    )
    assert qemu_socket.qemu_owner(no_dac, "kvm") == (os.getuid(), os.getgid())


def test_qemu_owner_on_libvirts_test_driver_is_this_process() -> None:
    hv = Hypervisor("test:///default")
    try:
        assert qemu_socket.qemu_owner(hv.capabilities(), "test") == (os.getuid(), os.getgid())
    finally:
        hv.close()


def test_make_dir_is_private_and_remove_cleans_up(tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    made = qemu_socket.make_dir(streams, "0123456789abcdef")
    path = made.path
    assert path == streams / "0123456789abcdef" / "qemu.sock"
    assert stat.S_IMODE(streams.stat().st_mode) == 0o711
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
    assert path.parent.stat().st_uid == os.getuid()
    with pytest.raises(errors.Conflict, match="already here"):
        qemu_socket.make_dir(streams, "0123456789abcdef")
    path.write_bytes(b"")  # what QEMU's socket would leave
    made.remove()
    assert not path.parent.exists()
    made.remove()  # nothing left: nothing done
    assert qemu_socket.remove_dir(path)


def test_remove_leaves_a_directory_someone_else_filled(tmp_path: Path) -> None:
    made = qemu_socket.make_dir(tmp_path, "0123456789abcdef")
    (made.path.parent / "other").write_text("x")
    made.remove()
    assert (made.path.parent / "other").exists()
    (made.path.parent / "other").unlink()
    (made.path.parent / "qemu.sock").mkdir()  # not a socket: left too
    assert not qemu_socket.remove_dir(made.path)
    assert made.path.is_dir()


def left_behind(streams: Path, name: str) -> Path:
    """What a daemon that stopped in the middle of a migration leaves: the directory
    (no process holds it) and QEMU's socket, bound by nobody any more."""
    directory = streams / name
    directory.mkdir(mode=0o700, parents=True)
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(directory / "qemu.sock"))
    return directory


def test_sweep_removes_what_stopped_migrations_left_and_nothing_else(tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    assert qemu_socket.sweep(streams) == []  # none yet
    running = qemu_socket.make_dir(streams, "0123456789abcdef")
    stale = [left_behind(streams, n) for n in ("aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb")]
    (streams / "cccccccccccccccc").mkdir()  # empty: a stop before QEMU bound
    filled = left_behind(streams, "dddddddddddddddd")
    (filled / "notes").write_text("an operator's")
    other = streams / "not-a-migration"
    other.mkdir()
    (streams / "eeeeeeeeeeeeeeee").symlink_to(other)
    (streams / "ffffffffffffffff").write_text("")

    swept = qemu_socket.sweep(streams)

    assert swept == ["aaaaaaaaaaaaaaaa", "bbbbbbbbbbbbbbbb", "cccccccccccccccc"]
    assert not any(d.exists() for d in stale)
    assert running.path.parent.is_dir()  # a running migration's: locked
    assert (filled / "notes").exists() and not (filled / "qemu.sock").exists()
    assert other.is_dir() and (streams / "eeeeeeeeeeeeeeee").is_symlink()
    assert (streams / "ffffffffffffffff").is_file()
    running.remove()
    assert qemu_socket.sweep(streams) == []


def test_a_migration_in_another_process_is_not_swept(tmp_path: Path) -> None:
    made = qemu_socket.make_dir(tmp_path, "0123456789abcdef")
    pid = os.fork()
    if pid == 0:  # the child: another daemon starting on the same stream_dir
        os._exit(len(qemu_socket.sweep(tmp_path)))
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert made.path.parent.is_dir()
    # once the process that made it is gone (here: it let go), the next sweep takes it
    os.close(made.fd)
    made.fd = -1
    assert qemu_socket.sweep(tmp_path) == ["0123456789abcdef"]


def test_sweep_leaves_a_stream_dir_that_is_not_the_daemons_own(tmp_path: Path) -> None:
    left_behind(tmp_path / "real", "0123456789abcdef")
    (tmp_path / "link").symlink_to(tmp_path / "real")
    assert qemu_socket.sweep(tmp_path / "link") == []
    assert (tmp_path / "real" / "0123456789abcdef").is_dir()
    (tmp_path / "file").write_text("")
    assert qemu_socket.sweep(tmp_path / "file") == []
    assert qemu_socket.sweep(tmp_path / "file" / "streams") == []  # ENOTDIR: nothing to do


def test_make_dir_refuses_a_stream_dir_that_is_not_the_daemons_own(tmp_path: Path) -> None:
    (tmp_path / "real").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "real")
    with pytest.raises(errors.Unavailable, match="not a directory of this daemon's user"):
        qemu_socket.make_dir(tmp_path / "link", "0123456789abcdef")
    assert list((tmp_path / "real").iterdir()) == []


def test_make_dir_and_listen_failures_are_unavailable(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("")
    with pytest.raises(errors.Unavailable, match="cannot make"):
        qemu_socket.make_dir(tmp_path / "file" / "streams", "0123456789abcdef")
    nothing = qemu_socket.socket_path(tmp_path / "file" / "streams", "0123456789abcdef")
    assert qemu_socket.remove_dir(nothing)  # nothing there
    with pytest.raises(errors.Unavailable, match=r"cannot make .*File exists"):
        qemu_socket.make_dir(tmp_path / "file", "0123456789abcdef")  # a file where it goes

    async def main() -> None:
        with pytest.raises(errors.Unavailable, match="cannot listen at"):
            await qemu_socket.listen(tmp_path / "missing" / "qemu.sock")

    trio.run(main)


@as_root
def test_make_dir_refuses_a_stream_dir_another_user_owns(tmp_path: Path) -> None:
    streams = tmp_path / "streams"
    streams.mkdir()
    os.chown(streams, NOBODY, NOBODY)
    with pytest.raises(errors.Unavailable, match="stream_dir"):
        qemu_socket.make_dir(streams, "0123456789abcdef")
    assert list(streams.iterdir()) == []
    (streams / "0123456789abcdef").mkdir()
    assert qemu_socket.sweep(streams) == []  # nor sweeps it


@as_root
def test_make_dir_gives_the_directory_to_qemus_user(tmp_path: Path) -> None:
    made = qemu_socket.make_dir(tmp_path, "0123456789abcdef", (NOBODY, NOBODY))
    info = made.path.parent.stat()
    assert (info.st_uid, info.st_gid) == (NOBODY, NOBODY)
    assert stat.S_IMODE(info.st_mode) == 0o700
    made.remove()
    assert not made.path.parent.exists()


def refused(caplog: pytest.LogCaptureFixture) -> bool:
    return any(
        r.getMessage() == "migration.stream_peer_refused"
        and getattr(r, logs._RESERVED) == {"uid": NOBODY, "expected": 0}
        for r in caplog.records
    )


def connect_as(path: Path, uid: int) -> int:
    """A child process running as ``uid`` that connects to ``path`` (once it may) and
    holds on; its pid."""
    pid = os.fork()
    if pid == 0:  # the child: system calls only, then out
        try:
            os.setgid(uid)
            os.setuid(uid)
            for _ in range(500):  # until the socket is there, and open to it
                try:
                    s = socket.socket(socket.AF_UNIX)
                    s.connect(str(path))
                    break
                except OSError:
                    s.close()
                    time.sleep(0.01)
            time.sleep(30)
        finally:
            os._exit(0)
    return pid


@as_root
def test_the_source_accepts_root_only(caplog: pytest.LogCaptureFixture) -> None:
    # a directory the other user can reach (pytest's tmp_path is root's alone)
    here = Path(tempfile.mkdtemp(prefix="nc-"))
    here.chmod(0o755)
    path = here / "qemu.sock"

    async def main() -> None:
        listener = await qemu_socket.listen(path)
        path.chmod(0o777)  # so that another user may try
        try:
            async with trio.open_nursery() as n:
                accepted: list[trio.SocketStream] = []

                async def accept() -> None:
                    accepted.append(await qemu_socket.accept_from(listener))

                n.start_soon(accept)
                with trio.fail_after(10):
                    while not refused(caplog):  # noqa: ASYNC110 - a log record, no event
                        await trio.sleep(0.01)
                assert not accepted  # the other user's connection was refused
                libvirtd = await trio.open_unix_socket(str(path))
                await libvirtd.send_all(b"stream")
            stream = accepted[0]
            assert await stream.receive_some(6) == b"stream"
            await stream.aclose()
            await libvirtd.aclose()
        finally:
            await listener.aclose()

    intruder = connect_as(path, NOBODY)
    try:
        trio.run(main)
    finally:
        os.kill(intruder, signal.SIGKILL)
        os.waitpid(intruder, 0)
        shutil.rmtree(here)


def test_the_destination_connects_once_qemu_listens(tmp_path: Path) -> None:
    path = tmp_path / "qemu.sock"

    async def main() -> None:
        async def qemu() -> None:
            await trio.sleep(0.3)  # libvirt starts QEMU a while after prepare
            listener = await qemu_socket.listen(path)
            stream = await listener.accept()
            await stream.send_all(b"QEVM")
            await stream.aclose()
            await listener.aclose()

        async with trio.open_nursery() as n:
            n.start_soon(qemu)
            with trio.fail_after(10):
                stream = await qemu_socket.connect_when_bound(path, os.getuid())
            assert await stream.receive_some(4) == b"QEVM"
            await stream.aclose()

    trio.run(main)


def test_the_destination_connects_only_to_the_incoming_domains_qemu(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """The listener here is this process: named as libvirt's QEMU, it is connected to;
    named otherwise (another process of QEMU's user put its socket there), it is
    refused; when libvirt cannot say, the uid check stands alone."""
    caplog.set_level(logging.INFO, logger="novacron.migration")
    path = tmp_path / "qemu.sock"

    async def named(pid: int | None) -> None:
        async def qemu_pid() -> int | None:
            return pid

        listener = await qemu_socket.listen(path)
        try:
            with trio.fail_after(10):
                stream = await qemu_socket.connect_when_bound(path, os.getuid(), qemu_pid)
            await stream.aclose()
        finally:
            await listener.aclose()
            path.unlink()

    trio.run(named, os.getpid())
    assert "migration.qemu_checked" in caplog.messages
    with pytest.raises(errors.MigrationFailed, match=r"is process \d+, not the incoming"):
        trio.run(named, os.getpid() + 1)
    assert "migration.stream_peer_refused" in caplog.messages
    trio.run(named, None)
    assert "migration.qemu_pid_unknown" in caplog.messages


def test_the_destination_never_connects_to_what_is_not_qemus_socket(tmp_path: Path) -> None:
    plain = tmp_path / "file.sock"
    plain.write_text("")

    async def main() -> None:
        with pytest.raises(errors.MigrationFailed, match="not QEMU's socket"):
            await qemu_socket.connect_when_bound(plain, os.getuid())

    trio.run(main)


@as_root
def test_the_destination_checks_who_owns_and_who_serves_the_socket(tmp_path: Path) -> None:
    path = tmp_path / "qemu.sock"
    server = socket.socket(socket.AF_UNIX)
    server.bind(str(path))
    server.listen(1)

    async def main() -> None:
        # owned by root, QEMU runs as nobody: not QEMU's
        with pytest.raises(errors.MigrationFailed, match="owner uid 0"):
            await qemu_socket.connect_when_bound(path, NOBODY)
        # owned by nobody, but the process listening is root's: refused once connected
        os.chown(path, NOBODY, NOBODY)
        with pytest.raises(errors.MigrationFailed, match="runs as uid 0"):
            await qemu_socket.connect_when_bound(path, NOBODY)

    try:
        trio.run(main)
    finally:
        server.close()
