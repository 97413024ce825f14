"""Starts the machine's own libvirtd and virtlogd when none is running (no systemd here).

Also mounts hugetlbfs where systemd would have (see :func:`ensure_hugetlbfs`).

Debian's ``libvirt-daemon`` without ``libvirt-daemon-system`` lacks the ``libvirt-qemu``
user and the ``kvm`` group that the QEMU driver needs; they are created if missing.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from tests.system import subreaper

URI = "qemu:///system"
DAEMONS = ("virtlogd", "libvirtd")


def _ok(*argv: str) -> bool:
    return subprocess.run(argv, capture_output=True, check=False, timeout=60).returncode == 0


def libvirt_answers() -> bool:
    return _ok("virsh", "-c", URI, "version")


def ensure_accounts() -> None:
    if not _ok("getent", "group", "kvm"):
        subprocess.run(["groupadd", "--system", "kvm"], check=True)
    if not _ok("getent", "passwd", "libvirt-qemu"):
        if not _ok("getent", "group", "libvirt-qemu"):
            subprocess.run(["groupadd", "--system", "libvirt-qemu"], check=True)
        subprocess.run(
            [
                "useradd",
                "--system",
                "--gid",
                "libvirt-qemu",
                "--groups",
                "kvm",
                "--home-dir",
                "/var/lib/libvirt",
                "--no-create-home",
                "--shell",
                "/usr/sbin/nologin",
                "libvirt-qemu",
            ],
            check=True,
        )


def ensure_kvm_device() -> None:
    """Gives /dev/kvm to group kvm, mode 0660, as Debian's udev rule does.

    Without udev (these machines) it is root-only; libvirt then finds KVM "not usable"
    for the QEMU user, disagrees with its cached QEMU capabilities and probes QEMU again
    on every define (measured: about 60 s per ``virsh define``, 38 ms once fixed).
    """
    kvm = Path("/dev/kvm")
    if kvm.exists() and os.geteuid() == 0:
        shutil.chown(kvm, group="kvm")
        kvm.chmod(0o660)


def ensure_hugetlbfs() -> None:
    """Mounts hugetlbfs on /dev/hugepages as systemd's dev-hugepages.mount does.

    libvirt looks for hugetlbfs mounts when libvirtd starts; without one, guests
    backed by hugepages are refused. These machines boot without systemd's mount.
    """
    mounts = Path("/proc/mounts").read_text()
    if any(line.split()[2] == "hugetlbfs" for line in mounts.splitlines() if line.strip()):
        return
    Path("/dev/hugepages").mkdir(exist_ok=True)
    subprocess.run(
        ["mount", "-t", "hugetlbfs", "-o", "pagesize=2M", "hugetlbfs", "/dev/hugepages"],
        check=True,
        timeout=30,
    )


@dataclass
class LibvirtHost:
    started: list[int] = field(default_factory=list)
    reaper: subprocess.Popen[bytes] | None = None

    def start(self) -> LibvirtHost:
        if os.geteuid() == 0:
            ensure_accounts()
            ensure_kvm_device()
            ensure_hugetlbfs()
        if libvirt_answers():
            return self
        if os.geteuid() != 0:
            raise RuntimeError("system tests need root to start libvirtd")
        for tool in (*DAEMONS, "qemu-system-x86_64"):
            if shutil.which(tool) is None:
                raise RuntimeError(f"{tool} is not installed (run ./bootstrap.sh test)")
        for d in ("/var/log/libvirt", "/run/libvirt", "/var/lib/libvirt", "/var/cache/libvirt"):
            Path(d).mkdir(parents=True, exist_ok=True)
        pidfiles = {daemon: Path(f"/run/{daemon}.pid") for daemon in DAEMONS}
        for pidfile in pidfiles.values():
            pidfile.unlink(missing_ok=True)
        # under a subreaper, so that stopped guests are reaped at once (see subreaper.py)
        commands = [f"{daemon} -d -p {pidfile}" for daemon, pidfile in pidfiles.items()]
        self.reaper = subreaper.launch(commands)
        for daemon, pidfile in pidfiles.items():
            deadline = time.monotonic() + 30
            while not pidfile.exists():
                if time.monotonic() > deadline or self.reaper.poll() is not None:
                    raise RuntimeError(f"{daemon} did not start")
                time.sleep(0.1)
            self.started.append(int(pidfile.read_text().strip()))
        deadline = time.monotonic() + 60
        while not libvirt_answers():
            if time.monotonic() > deadline:
                raise RuntimeError("libvirtd started but qemu:///system does not answer")
            time.sleep(0.2)
        return self

    def stop(self) -> None:
        for pid in reversed(self.started):
            try:
                os.kill(pid, signal.SIGTERM)
            except ProcessLookupError:
                continue
            for _ in range(100):
                try:
                    os.kill(pid, 0)
                except ProcessLookupError:
                    break
                time.sleep(0.1)
        self.started.clear()
        subreaper.stop(self.reaper)
        self.reaper = None
