"""Two "hosts" on one machine: mount + network + UTS namespaces, each with its own
libvirtd and virtlogd, joined by a veth pair (see ../shared/notes/libvirt-qemu-here.md).

Each host is a long-lived ``unshare --mount --net --uts --fork`` process; commands
join it with ``nsenter``. Inside: its hostname, private ``/run/libvirt`` and
``/run/novacron`` (tmpfs), bind
mounts of per-host ``/var/lib/libvirt``, ``/var/log/libvirt``, ``/var/cache/libvirt``,
``/etc/libvirt`` (a copy with this host's ``libvirtd.conf``/``qemu.conf`` and a QEMU
hook that refuses incoming migrations while :data:`REFUSE_FLAG` exists) and
``/etc/hosts``, loopback up, and one end of the veth with an address that exists only
inside the namespace. libvirtd listens on that address over plain TCP without
authentication — test scaffolding only, never reachable from outside the namespaces.
Both daemons run under :mod:`tests.system.subreaper`, which reaps stopped QEMUs at once.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from tests.system import subreaper

BASE = Path("/var/tmp/novacron-hosts")
SLEEP = ("sleep", "infinity")
NET = "10.77.0"
# where the daemons of both hosts meet QEMU's migration stream: the same path on both,
# each host's own directory (a tmpfs over /run/novacron in its mount namespace)
STREAMS = Path("/run/novacron/migration")

QEMU_WRAPPER = """#!/bin/sh
# single-threaded TCG: multi-threaded TCG sometimes corrupts a guest across migration
prev=
for a; do
  shift
  orig="$a"
  if [ "$prev" = "-accel" ] && [ "${a%%,*}" = tcg ]; then a="tcg,thread=single"; fi
  set -- "$@" "$a"
  prev="$orig"
done
exec /usr/bin/qemu-system-x86_64 "$@" {extra}
"""


REFUSING_HOOK = """#!/bin/sh
cat > /dev/null
if [ "$2" = migrate ] && [ -e /etc/libvirt/refuse-migrations ]; then
    echo "this host's libvirt hook refuses migrations" >&2
    exit 1
fi
exit 0
"""
REFUSE_FLAG = "/etc/libvirt/refuse-migrations"


def _run(argv: list[str], check: bool = True, timeout: float = 60) -> str:
    done = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, check=False)
    if check and done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed ({done.returncode}): {done.stderr.strip()}")
    return done.stdout


LIBVIRT_DEFINITIONS = ("qemu", "storage", "secrets")  # under /etc/libvirt


def _defined_there(directory: str, names: list[str]) -> set[str]:
    """What a copy of /etc/libvirt leaves out: the definitions libvirtd keeps there."""
    return set(LIBVIRT_DEFINITIONS) & set(names) if directory == "/etc/libvirt" else set()


@dataclass
class Host:
    name: str
    address: str
    root: Path
    holder: subprocess.Popen[bytes] | None = None
    reaper: subprocess.Popen[bytes] | None = None  # libvirtd's parent: see subreaper.py
    daemons: list[str] = field(default_factory=list)
    veth: str = ""  # this host's end of the link between the two

    @property
    def pid(self) -> int:
        assert self.holder is not None
        return self.holder.pid

    def enter(self) -> list[str]:
        return ["nsenter", "-t", str(self.pid), "-m", "-n", "-u", "--"]

    def sh(self, script: str, check: bool = True, timeout: float = 60) -> str:
        return _run([*self.enter(), "sh", "-ec", script], check=check, timeout=timeout)

    def popen(self, argv: list[str], **kw: object) -> subprocess.Popen[bytes]:
        return subprocess.Popen([*self.enter(), *argv], **kw)  # type: ignore[call-overload,no-any-return]

    def virsh(self, *args: str, check: bool = True, timeout: float = 120) -> str:
        return _run([*self.enter(), "virsh", "-c", "qemu:///system", *args], check, timeout)

    def migrate(self, name: str, peer: Host, *options: str, timeout: float = 600) -> str:
        """libvirt's own peer-to-peer live migration of ``name`` to ``peer``."""
        flags = ("--live", "--p2p", "--persistent", "--undefinesource")
        return self.virsh("migrate", *flags, *options, name, peer.libvirt_uri, timeout=timeout)

    @property
    def libvirt_uri(self) -> str:
        """How the other host's libvirtd reaches this one (peer-to-peer migration)."""
        return f"qemu+tcp://{self.address}/system"

    def start(self, peer_names: dict[str, str]) -> None:
        for d in ("lib", "log", "cache", "etc"):
            (self.root / d).mkdir(parents=True, exist_ok=True)
        # the machine's libvirt configuration, without what its libvirtd defined: the
        # domains, pools and secrets of tests running there at this moment (another
        # pytest-xdist worker) would be this host's too, and its daemon would adopt them
        shutil.copytree(
            "/etc/libvirt", self.root / "etc", dirs_exist_ok=True, ignore=_defined_there
        )
        (self.root / "etc" / "libvirtd.conf").write_text(
            f'listen_tls = 0\nlisten_tcp = 1\nlisten_addr = "{self.address}"\n'
            f'auth_tcp = "none"\nhost_uuid = "{uuid.uuid4()}"\n'
            # warnings and errors, read back by a failed test (diagnostics)
            'log_outputs = "3:file:/var/log/libvirt/libvirtd.log"\n'
        )
        (self.root / "etc" / "qemu.conf").write_text(
            f'cgroup_controllers = [ ]\nmigration_host = "{self.address}"\n'
            # the source libvirtd's connection to the destination's during a migration
            # is found dead after 2 s x (3 + 1) without an answer (libvirt: 5 s x 6), so a
            # test that cuts the link waits less for libvirt's job to fail
            "keepalive_interval = 2\nkeepalive_count = 3\n"
        )
        # libvirt's QEMU hook, as operators install one: refuses incoming migrations
        # while /etc/libvirt/refuse-migrations exists (a test's way to make libvirt
        # fail a migration after both daemons got ready). libvirt looks for hooks only
        # when it starts.
        hooks = self.root / "etc" / "hooks"
        hooks.mkdir(exist_ok=True)
        (hooks / "qemu").write_text(REFUSING_HOOK)
        (hooks / "qemu").chmod(0o755)
        hosts = "127.0.0.1 localhost\n" + "".join(f"{a} {n}\n" for n, a in peer_names.items())
        (self.root / "hosts").write_text(hosts)
        # --kill-child: the namespaced child dies with the holder; no inherited pipes
        self.holder = subprocess.Popen(
            ["unshare", "--mount", "--net", "--uts", "--fork", "--kill-child", "--", *SLEEP],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 10
        while _run(["readlink", f"/proc/{self.pid}/ns/net"], check=False) == _run(
            ["readlink", "/proc/self/ns/net"], check=False
        ):
            if time.monotonic() > deadline:
                raise RuntimeError("the namespaces did not appear")
            time.sleep(0.05)
        r = self.root
        self.sh(
            f"""
            hostname {self.name}
            mount --make-rprivate /
            mkdir -p /run/libvirt
            mount -t tmpfs -o mode=0755 tmpfs /run/libvirt
            mkdir -p {STREAMS.parent}
            mount -t tmpfs -o mode=0755 tmpfs {STREAMS.parent}
            mount --bind {r}/lib /var/lib/libvirt
            mount --bind {r}/log /var/log/libvirt
            mount --bind {r}/cache /var/cache/libvirt
            mount --bind {r}/etc /etc/libvirt
            mount --bind {r}/hosts /etc/hosts
            ip link set lo up
            """
        )

    def start_libvirt(self) -> None:
        with open(self.root / "log" / "subreaper.log", "wb") as log:
            self.reaper = subreaper.launch(
                [
                    "virtlogd -d -p /run/libvirt/virtlogd.pid",
                    "libvirtd -d --listen -p /run/libvirt/libvirtd.pid",
                ],
                prefix=self.enter(),
                log=log,
            )
        deadline = time.monotonic() + 60
        while True:
            if self.reaper.poll() is not None:
                log_text = (self.root / "log" / "subreaper.log").read_text(errors="replace")
                raise RuntimeError(f"{self.name}: libvirtd did not start: {log_text.strip()}")
            ok = subprocess.run(
                [*self.enter(), "virsh", "-c", "qemu:///system", "version"],
                capture_output=True,
                timeout=60,
                check=False,
            )
            if ok.returncode == 0:
                return
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name}: libvirtd does not answer: {ok.stderr!r}")
            time.sleep(0.2)

    def stop(self) -> None:
        if self.holder is None:
            return
        self.sh(
            """
            for d in $(virsh -c qemu:///system list --name 2>/dev/null); do
              virsh -c qemu:///system destroy "$d" >/dev/null 2>&1 || true
            done
            for p in /run/libvirt/libvirtd.pid /run/libvirt/virtlogd.pid; do
              [ -f "$p" ] && kill "$(cat "$p")" 2>/dev/null || true
            done
            """,
            check=False,
        )
        # QEMU processes of this host die with their namespace holder's children
        out = _run(["pgrep", "-f", f"novacron-hosts/{self.name}/"], check=False)
        for pid in out.split():
            try:
                os.kill(int(pid), signal.SIGKILL)
            except ProcessLookupError:
                pass
        subreaper.stop(self.reaper)
        self.reaper = None
        self.holder.kill()
        self.holder.wait(timeout=10)
        self.holder = None


@dataclass
class TwoHosts:
    a: Host
    b: Host

    @classmethod
    def start(cls, tag: str, qemu_args: str = "") -> TwoHosts:
        """``qemu_args``: appended to every QEMU command line of both hosts."""
        root = BASE / tag
        if root.exists():
            shutil.rmtree(root, ignore_errors=True)
        a = Host("hosta", f"{NET}.1", root / "hosta")
        b = Host("hostb", f"{NET}.2", root / "hostb")
        names = {"hosta": a.address, "hostb": b.address}
        pair = cls(a, b)
        try:
            a.start(names)
            b.start(names)
            veth_a, veth_b = f"nc{tag[:6]}a", f"nc{tag[:6]}b"
            _run(["ip", "link", "add", veth_a, "type", "veth", "peer", "name", veth_b])
            _run(["ip", "link", "set", veth_a, "netns", str(a.pid)])
            _run(["ip", "link", "set", veth_b, "netns", str(b.pid)])
            for host, dev in ((a, veth_a), (b, veth_b)):
                host.sh(f"ip addr add {host.address}/24 dev {dev}\nip link set {dev} up")
                host.veth = dev
            wrapper = root / "qemu-single-thread"
            wrapper.write_text(QEMU_WRAPPER.replace("{extra}", qemu_args))
            wrapper.chmod(0o755)
            a.start_libvirt()
            b.start_libvirt()
        except BaseException:
            pair.stop()
            raise
        return pair

    @property
    def qemu_wrapper(self) -> Path:
        return self.a.root.parent / "qemu-single-thread"

    def stop(self) -> None:
        for host in (self.a, self.b):
            try:
                host.stop()
            except Exception:  # keep tearing down the other one
                pass
        shutil.rmtree(self.a.root.parent, ignore_errors=True)
