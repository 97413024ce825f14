"""Builds the tiny test guest: Debian's cloud kernel and a busybox initramfs.

The kernel comes from the ``linux-image-*-cloud-amd64`` package (``apt-get download`` +
``dpkg -x``, nothing installed). The initramfs is written here: busybox-static, the
``evdev`` and ``button`` modules (so an ACPI power button press reaches userspace and
the guest powers off, which makes ``vm.shutdown`` graceful for real), virtio-net with
its dependencies (NICs addressed from the kernel command line), and an ``/init`` that
prints a boot marker and a tick every second on the serial console.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CACHE = Path(os.environ.get("NOVACRON_GUEST_CACHE", "/var/tmp/novacron-guest"))
BOOT_MARKER = "NOVACRON-GUEST-BOOTED"
SHAPE_MARKER = "NOVACRON-GUEST-SHAPE"  # followed by cpus=N mem_kib=N (what the guest sees)
TICK = "NOVACRON-TICK"
POWER_MARKER = "NOVACRON-POWER-BUTTON"
WORKLOAD_MARKER = "NOVACRON-WORKLOAD-READY"
BENCH_MARKER = "NOVACRON-BENCH-READY"
NET_UP = "NOVACRON-NET-UP"
PING_OK = "NOVACRON-PING-OK"
PING_FAIL = "NOVACRON-PING-FAIL"
INTACT = "NOVACRON-INTACT"
CORRUPT = "NOVACRON-CORRUPT"
DISK_READY = "NOVACRON-DISK-READY"
DISK_OK = "NOVACRON-DISK-OK"
DISK_BAD = "NOVACRON-DISK-BAD"
# novacron.discard: "NOVACRON-DISCARDED rc=0 zeros" once the disk text is given back, half
# discarded, half zeroed (rc: blkdiscard's; zeros or data: what the guest reads there after)
DISCARDED = "NOVACRON-DISCARDED"
BLOCK_MARKER = (
    "NOVACRON-BLOCK"  # novacron.blockwatch: "NOVACRON-BLOCK vdb 4194304" (512-byte sectors)
)
BLOCK_GONE = "NOVACRON-UNPLUGGED"  # novacron.blockwatch: "NOVACRON-UNPLUGGED vdc"
# novacron.blockwatch with novacron.blocksum: each disk's first MiB as the guest reads it,
# "NOVACRON-BLOCKSUM vdb <md5>"
BLOCKSUM_MARKER = "NOVACRON-BLOCKSUM"
CPUS_MARKER = "NOVACRON-CPUS"  # novacron.cpuwatch: "NOVACRON-CPUS present=0-2 online=0-2"
MEMORY_MARKER = "NOVACRON-MEMORY"  # novacron.memwatch: "NOVACRON-MEMORY total_kib=123456"

# where the guest's disk option writes its counter (bytes into /dev/vda, one 512-byte block)
DISK_COUNTER_AT = 1 << 20
# where it writes 2 MiB of text at boot (novacron.disk)
DISK_TEXT_AT = 4 << 20

# virtio devices' drivers, in load order (modules in Debian's cloud kernel)
VIRTIO_MODULES = (
    "virtio_ring",
    "virtio",
    "virtio_pci_modern_dev",
    "virtio_pci_legacy_dev",
    "virtio_pci",
)
NET_MODULES = (*VIRTIO_MODULES, "failover", "net_failover", "virtio_net")
DISK_MODULES = (*VIRTIO_MODULES, "virtio_blk")
MODULE_PATHS = {
    "evdev": "drivers/input/evdev.ko",
    "button": "drivers/acpi/button.ko",
    "virtio": "drivers/virtio/virtio.ko",
    "virtio_ring": "drivers/virtio/virtio_ring.ko",
    "virtio_pci_modern_dev": "drivers/virtio/virtio_pci_modern_dev.ko",
    "virtio_pci_legacy_dev": "drivers/virtio/virtio_pci_legacy_dev.ko",
    "virtio_pci": "drivers/virtio/virtio_pci.ko",
    "failover": "net/core/failover.ko",
    "net_failover": "drivers/net/net_failover.ko",
    "virtio_net": "drivers/net/virtio_net.ko",
    "virtio_blk": "drivers/block/virtio_blk.ko",
    "virtio_balloon": "drivers/virtio/virtio_balloon.ko",
    "virtio_console": "drivers/char/virtio_console.ko",
    "cdrom": "drivers/cdrom/cdrom.ko",
    "isofs": "fs/isofs/isofs.ko",
}
SEED_MODULES = (*DISK_MODULES, "cdrom", "isofs")
# novacron.seed: the cloud-init seed disk found by its label and mounted: the meta data's
# lines, each as "NOVACRON-SEEDMETA <line>", then
# "NOVACRON-SEED vdb meta-data user-data user-data=<md5>"
SEED_MARKER = "NOVACRON-SEED"
SEED_META = "NOVACRON-SEEDMETA"
AGENT_MODULES = (*VIRTIO_MODULES, "virtio_console")
# QEMU's guest agent, from Debian's package (apt-get download + dpkg -x), with the host's
# libraries it links (same distribution), in the initramfs at /bin/qemu-ga
AGENT_PACKAGE = "qemu-guest-agent"
# the workload's text (``novacron.workload``, /work/text): what ``seq 1 N`` prints
WORKLOAD_TEXT_LINES = 300_000
AGENT_MARKER = "NOVACRON-AGENT"  # novacron.agent: "NOVACRON-AGENT /dev/vport1p1" (its port)
AGENT_HOSTNAME = "novacron-guest"
# what the guest's /etc/os-release says (the agent reports it)
OS_RELEASE = 'ID=novacron-test\nNAME="NovaCron test guest"\nVERSION_ID=1\n'


INIT = f"""#!/bin/busybox sh
/bin/busybox --install -s /bin
mount -t proc proc /proc
mount -t sysfs sys /sys
mount -t devtmpfs dev /dev
insmod /lib/evdev.ko
insmod /lib/button.ko
echo {BOOT_MARKER} uptime=$(cut -d' ' -f1 /proc/uptime)
echo {SHAPE_MARKER} cpus=$(grep -c ^processor /proc/cpuinfo) \
  mem_kib=$(awk '/^MemTotal/ {{print $2}}' /proc/meminfo)
for d in /sys/class/input/input*; do
  if grep -q "Power Button" "$d/name" 2>/dev/null; then
    for e in "$d"/event*; do ev=$(basename "$e"); done
  fi
done
if [ -n "$ev" ]; then
  (dd if=/dev/input/$ev bs=24 count=1 >/dev/null 2>&1; echo {POWER_MARKER}; sync; poweroff -f) &
fi
if grep -q novacron.poweroff_after= /proc/cmdline; then
  # the guest powers itself off after N seconds (as an operator's poweroff inside it)
  n=$(sed -n 's/.*novacron[.]poweroff_after=\\([0-9]*\\).*/\\1/p' /proc/cmdline)
  (sleep $n; echo {POWER_MARKER}; sync; poweroff -f) &
fi
if grep -q novacron.net= /proc/cmdline; then
  # NICs: novacron.net=eth0:10.50.0.1/24,eth1:... (an interface hot-plugged later is
  # configured when it appears); novacron.ping=PEER,... pings each peer every second
  for m in {" ".join(NET_MODULES)}; do insmod /lib/$m.ko; done
  for spec in $(sed -n 's/.*novacron[.]net=\\([^ ]*\\).*/\\1/p' /proc/cmdline | tr , ' '); do
    dev=${{spec%%:*}}; addr=${{spec#*:}}
    (while [ ! -e /sys/class/net/$dev ]; do sleep 0.5; done
     ip link set $dev up; ip addr add $addr dev $dev; echo {NET_UP} $dev $addr) &
  done
  for peer in $(sed -n 's/.*novacron[.]ping=\\([^ ]*\\).*/\\1/p' /proc/cmdline | tr , ' '); do
    (while true; do
       if ping -c 1 -W 1 $peer >/dev/null 2>&1; then r={PING_OK}; else r={PING_FAIL}; fi
       echo $r $peer
       sleep 1
     done) &
  done
fi
if grep -q novacron.disk /proc/cmdline; then
  # the first virtio disk: 1 MiB of random data written at boot and read back from the
  # disk itself (O_DIRECT) every 3 s; a counter written at {DISK_COUNTER_AT} every second
  for m in {" ".join(DISK_MODULES)}; do [ -d /sys/module/$m ] || insmod /lib/$m.ko; done
  while [ ! -b /dev/vda ]; do sleep 0.5; done
  dd if=/dev/urandom of=/tmp/disk-pattern bs=64k count=16 2>/dev/null
  dd if=/tmp/disk-pattern of=/dev/vda bs=64k oflag=direct conv=fsync 2>/dev/null
  # and, at {DISK_TEXT_AT}, 2 MiB of text: what a disk holds besides random bytes (a
  # compressor shrinks it)
  yes "novacron guest disk text $(cat /proc/uptime)" | head -c 2097152 > /tmp/disk-text
  dd if=/tmp/disk-text of=/dev/vda bs=64k seek={DISK_TEXT_AT // 65536} oflag=direct \\
    conv=fsync 2>/dev/null
  rm /tmp/disk-text
  disksum=$(md5sum < /tmp/disk-pattern)
  echo {DISK_READY}
  if grep -q novacron.discard /proc/cmdline; then
    # the text given back: its first MiB discarded, as fstrim does for a deleted file's
    # blocks, its second overwritten with zeros, as some systems do instead; then read
    # back from the disk itself
    (sleep 2
     blkdiscard -o {DISK_TEXT_AT} -l 1048576 /dev/vda; rc=$?
     dd if=/dev/zero of=/dev/vda bs=64k count=16 seek={DISK_TEXT_AT // 65536 + 16} \
       oflag=direct conv=fsync 2>/dev/null
     got=$(dd if=/dev/vda bs=64k skip={DISK_TEXT_AT // 65536} count=32 iflag=direct \
       2>/dev/null | md5sum)
     zeros=$(head -c 2097152 /dev/zero | md5sum)
     if [ "$got" = "$zeros" ]; then echo {DISCARDED} rc=$rc zeros
     else echo {DISCARDED} rc=$rc data; fi) &
  fi
  (k=0; while true; do
     k=$((k+1))
     echo "counter $k" | dd of=/dev/vda bs=512 seek={DISK_COUNTER_AT // 512} conv=sync,notrunc \\
       oflag=direct 2>/dev/null
     if [ $((k % 3)) = 0 ]; then
       got=$(dd if=/dev/vda bs=64k count=16 iflag=direct 2>/dev/null | md5sum)
       if [ "$got" = "$disksum" ]; then echo {DISK_OK}; else echo {DISK_BAD}; fi
     fi
     sleep 1
   done) &
fi
if grep -q novacron.agent /proc/cmdline; then
  # qemu-guest-agent on the port named org.qemu.guest_agent.0, with a host name and an
  # os-release to report
  for m in {" ".join(AGENT_MODULES)}; do [ -d /sys/module/$m ] || insmod /lib/$m.ko; done
  hostname {AGENT_HOSTNAME}
  ip link set lo up  # (the kernel gives it 127.0.0.1/8: an address for the agent to report)
  printf '{OS_RELEASE}' > /etc/os-release
  (port=""
   while [ -z "$port" ]; do
     for p in /sys/class/virtio-ports/vport*; do
       [ "$(cat $p/name 2>/dev/null)" = org.qemu.guest_agent.0 ] && port=/dev/${{p##*/}}
     done
     [ -n "$port" ] || sleep 0.5
   done
   while [ ! -e $port ]; do sleep 0.2; done
   echo {AGENT_MARKER} $port
   /bin/qemu-ga -m virtio-serial -p $port -t /tmp -f /tmp/qemu-ga.pid) &
fi
if grep -q novacron.seed /proc/cmdline; then
  # a cloud-init NoCloud seed, as cloud-init looks for it: a disk labelled cidata
  for m in {" ".join(SEED_MODULES)}; do [ -d /sys/module/$m ] || insmod /lib/$m.ko; done
  (dev=""; n=0
   while [ -z "$dev" ]; do
     for b in /dev/vd*; do
       # (busybox has no blkid: the label read where blkid reads it, the primary volume
       # descriptor's volume identifier: sector 16, bytes 40-71, after "CD001" at 1)
       pvd=$(dd if=$b bs=2048 skip=16 count=1 2>/dev/null | head -c 46 | tail -c 45)
       case "$pvd" in CD001*cidata*) dev=$b;; esac
     done
     n=$((n+1)); [ $n = 20 ] && echo {SEED_MARKER}-NOT-YET $(ls /dev/vd* 2>&1)
     [ -n "$dev" ] || sleep 0.5
   done
   mkdir -p /seed
   mount -t iso9660 -o ro $dev /seed
   sum=$(md5sum < /seed/user-data)
   # (the meta data first: a reader that sees the marker line has every line before it)
   while read -r line; do echo {SEED_META} $line; done < /seed/meta-data
   echo {SEED_MARKER} ${{dev#/dev/}} $(ls /seed) user-data=${{sum%% *}}) &
fi
if grep -q novacron.blockwatch /proc/cmdline; then
  # every virtio disk, as it appears (at boot or hot-plugged later) and whenever its
  # size changes (grown by the host), with its size; and when it is gone (unplugged)
  for m in {" ".join(DISK_MODULES)}; do [ -d /sys/module/$m ] || insmod /lib/$m.ko; done
  (seen=" "; while true; do
     for b in /sys/block/vd*; do
       [ -e "$b" ] || continue
       n=${{b##*/}}:$(cat $b/size)
       case "$seen" in
         *" $n "*) ;;
         *) seen="$seen$n "; echo {BLOCK_MARKER} ${{n%:*}} ${{n#*:}}
            if grep -q novacron.blocksum /proc/cmdline; then
              sum=$(dd if=/dev/${{n%:*}} bs=64k count=16 2>/dev/null | md5sum)
              echo {BLOCKSUM_MARKER} ${{n%:*}} ${{sum%% *}}
            fi;;
       esac
     done
     kept=" "; gone=" "
     for n in $seen; do
       d=${{n%:*}}
       if [ -e /sys/block/$d ]; then kept="$kept$n "
       else case "$gone" in *" $d "*) ;; *) gone="$gone$d "; echo {BLOCK_GONE} $d;; esac
       fi
     done
     seen=$kept
     sleep 0.5
   done) &
fi
if grep -q novacron.cpuwatch /proc/cmdline; then
  # the vCPUs the guest has, whenever they change; a plugged one brought online, as a
  # distribution's udev rules do (the kernel leaves it offline)
  (last=""; while true; do
     for c in /sys/devices/system/cpu/cpu[0-9]*; do
       [ -e $c/online ] && [ "$(cat $c/online)" = 0 ] && echo 1 > $c/online 2>/dev/null
     done
     s=/sys/devices/system/cpu; now="present=$(cat $s/present) online=$(cat $s/online)"
     if [ "$now" != "$last" ]; then last=$now; echo {CPUS_MARKER} $now; fi
     sleep 0.5
   done) &
fi
if grep -q novacron.memwatch /proc/cmdline; then
  # the memory the guest has (MemTotal: the balloon's pages are taken off it) whenever it
  # changes
  for m in {" ".join(VIRTIO_MODULES)} virtio_balloon; do
    [ -d /sys/module/$m ] || insmod /lib/$m.ko
  done
  (last=""; while true; do
     now=$(awk '/^MemTotal/ {{print $2}}' /proc/meminfo)
     if [ "$now" != "$last" ]; then last=$now; echo {MEMORY_MARKER} total_kib=$now; fi
     sleep 0.5
   done) &
fi
if grep -q novacron.shell /proc/cmdline; then
  # a shell reading the serial console, as a getty's login shell would (no login)
  (while true; do sh </dev/ttyS0 >/dev/ttyS0 2>&1; done) &
fi
if grep -q novacron.bench /proc/cmdline; then
  # the migration benchmark's guest (see bench/migration_bench.py): 150 copies of one
  # binary, ~240 MiB of a repeated text block (not page-aligned), 32 MiB random data
  mkdir -p /bench
  mount -t tmpfs -o size=90% tmpfs /bench  # the rootfs may hold only half of RAM
  i=0; while [ $i -lt 150 ]; do i=$((i+1)); cp /bin/busybox /bench/b$i; done
  seq 1 65000 > /bench/block
  i=0; while [ $i -lt 640 ]; do i=$((i+1)); cat /bench/block; done > /bench/text
  dd if=/dev/urandom of=/bench/random bs=1M count=32 2>/dev/null
  echo {BENCH_MARKER}
  # then a running service: a log line, 64 small files and 256 KiB of the random file
  (k=0; while true; do
     k=$((k+1)); echo "bench log $k $(cat /proc/uptime)" >> /bench/log
     j=0; while [ $j -lt 64 ]; do j=$((j+1)); echo "$k $j" > /bench/small$j; done
     dd if=/dev/urandom of=/bench/random bs=64k count=4 seek=$((k % 128)) conv=notrunc 2>/dev/null
     sleep 0.3
   done) &
fi
if grep -q novacron.workload /proc/cmdline; then
  # a realistic memory mix in the rootfs (RAM): copies of one binary (duplicate pages),
  # text, random data; then keep dirtying a little of each, as a running service would.
  # /work/text (`seq 1 300000`'s output) comes in the initramfs: made in the guest, it
  # took 2.6 of the workload's 4.2 s under TCG
  mkdir -p /work
  for i in 1 2 3 4 5 6 7 8; do cp /bin/busybox /work/bin$i; done
  dd if=/dev/urandom of=/work/random bs=64k count=64 2>/dev/null
  # the integrity check: a pattern written now, verified every few seconds from here on
  # (every novacron.check_s=N seconds: 3 unless said)
  check_s=$(sed -n 's/.*novacron[.]check_s=\\([0-9.]*\\).*/\\1/p' /proc/cmdline)
  dd if=/dev/urandom of=/work/pattern bs=64k count=32 2>/dev/null
  md5sum /work/pattern /work/bin1 /work/bin8 /work/text > /work/sums
  (while true; do
     sleep "${{check_s:-3}}"
     if md5sum -c -s /work/sums; then echo {INTACT}; else echo {CORRUPT}; fi
   done) &
  echo {WORKLOAD_MARKER}
  if grep -q novacron.hot /proc/cmdline; then
    # a guest that dirties memory faster than a slow link carries it: 16 MiB written
    # over and over (copies of the random file: the vCPU's memcpy, not its RNG, sets the pace)
    (while true; do
       for s in 0 4 8 12; do
         dd if=/work/random of=/work/hot bs=1M seek=$s conv=notrunc 2>/dev/null
       done
     done) &
  fi
  (k=0; while true; do
     k=$((k+1)); echo "log line $k $(cat /proc/uptime)" >> /work/log
     dd if=/dev/urandom of=/work/random bs=4k count=4 seek=$((k % 256)) conv=notrunc 2>/dev/null
     sleep 0.2
   done) &
fi
n=0
while true; do
  n=$((n+1))
  echo "{TICK} $n"
  sleep 1
done
"""


@dataclass(frozen=True)
class GuestImages:
    kernel: Path
    initrd: Path
    # cryptomgr.notests: the kernel skips its crypto self-tests (0.3 s of initcalls under
    # TCG; the guest's boot marker came 0.8 s sooner, median of 5 boots each)
    cmdline: str = "console=ttyS0 panic=-1 quiet loglevel=3 cryptomgr.notests"

    def vm(
        self, name: str, memory_mib: int = 128, options: str = "", **extra: Any
    ) -> dict[str, Any]:
        """``vm.create`` parameters for a started one-vCPU guest of these images;
        ``options`` go on the kernel command line (``novacron.workload``, ...)."""
        return {
            "name": name,
            "vcpus": 1,
            "memory_mib": memory_mib,
            "kernel": str(self.kernel),
            "initrd": str(self.initrd),
            "cmdline": f"{self.cmdline} {options}".rstrip(),
            "start": True,
            **extra,
        }

    def domain_xml(
        self,
        name: str,
        memory_mib: int,
        console: Path,
        emulator: str | Path,
        options: str = "novacron.workload",
    ) -> str:
        """The domain XML of a one-vCPU TCG PC booting these images, for libvirt directly
        (no daemon): ``options`` on the kernel command line, the serial console appended
        to ``console``, no balloon (the guest keeps all its memory). On the PC machine a
        guest's RAM up to 3.5 GiB lies at physical addresses 0..size."""
        dom = ET.Element("domain", type="qemu")
        ET.SubElement(dom, "name").text = name
        ET.SubElement(dom, "memory", unit="MiB").text = str(memory_mib)
        ET.SubElement(dom, "vcpu").text = "1"
        os_el = ET.SubElement(dom, "os")
        ET.SubElement(os_el, "type", arch="x86_64", machine="pc").text = "hvm"
        ET.SubElement(os_el, "kernel").text = str(self.kernel)
        ET.SubElement(os_el, "initrd").text = str(self.initrd)
        ET.SubElement(os_el, "cmdline").text = f"{self.cmdline} {options}".rstrip()
        devices = ET.SubElement(dom, "devices")
        ET.SubElement(devices, "emulator").text = str(emulator)
        serial = ET.SubElement(devices, "serial", type="file")
        ET.SubElement(serial, "source", path=str(console), append="on")
        ET.SubElement(devices, "memballoon", model="none")
        return ET.tostring(dom, encoding="unicode")


def console_text(path: Path) -> str:
    """What a guest's console log holds so far ("" before QEMU creates it)."""
    return path.read_text(errors="replace") if path.exists() else ""


def wait_for_console(path: Path, needle: str, timeout: float = 180, after: int = 0) -> None:
    """Returns once ``needle`` is in the console log past its first ``after`` characters;
    AssertionError with the log's tail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if needle in console_text(path)[after:]:
            return
        time.sleep(0.25)
    raise AssertionError(f"{needle!r} not in {path}: {console_text(path)[-1500:]}")


def image_bytes(path: str) -> int:
    """The virtual size QEMU reads in the disk image at ``path`` (``-U``: while a guest
    runs)."""
    out = subprocess.run(
        ["qemu-img", "info", "-U", "--output=json", path], check=True, capture_output=True
    ).stdout
    return int(json.loads(out)["virtual-size"])


def _run(*argv: str, cwd: Path | None = None) -> str:
    done = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(argv)} failed: {done.stderr.strip()}")
    return done.stdout


def kernel_package() -> str:
    out = _run("apt-cache", "depends", "linux-image-cloud-amd64")
    for line in out.splitlines():
        line = line.strip()
        if line.startswith("Depends: linux-image-"):
            return line.split()[1]
    raise RuntimeError("cannot resolve linux-image-cloud-amd64 (run apt-get update?)")


def _write_cpio(root: Path, target: Path) -> None:
    files = sorted(str(p.relative_to(root)) for p in root.rglob("*"))
    with target.open("wb") as out:
        proc = subprocess.run(
            ["cpio", "-o", "-H", "newc", "--quiet", "--owner", "0:0"],
            input=("\n".join(files) + "\n").encode(),
            cwd=root,
            stdout=out,
            stderr=subprocess.PIPE,
            check=False,
        )
    if proc.returncode != 0:
        raise RuntimeError(f"cpio failed: {proc.stderr.decode()}")


def _add_agent(tmp: Path, root: Path) -> None:
    """qemu-ga at ``root``/bin, and the libraries it links (the host's, by ldd) at the
    paths the dynamic loader looks for them."""
    where = tmp / "agent"
    where.mkdir()
    _run("apt-get", "download", "-q", AGENT_PACKAGE, cwd=where)
    (deb,) = where.glob("*.deb")
    _run("dpkg", "-x", str(deb), str(where / "x"))
    binary = where / "x" / "usr" / "sbin" / "qemu-ga"
    shutil.copy2(binary, root / "bin" / "qemu-ga")
    for line in _run("ldd", str(binary)).splitlines():
        parts = line.split()
        # "libglib-2.0.so.0 => /lib/x86_64-linux-gnu/libglib-2.0.so.0 (0x...)", or the
        # loader: "/lib64/ld-linux-x86-64.so.2 (0x...)"
        lib = parts[2] if len(parts) >= 3 and parts[1] == "=>" else parts[0]
        if not lib.startswith("/"):
            continue  # linux-vdso.so.1: the kernel's
        target = root / lib.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(os.path.realpath(lib), target)


def build() -> GuestImages:
    """Returns cached images, building them on first use (about 30 MB download)."""
    package = kernel_package()
    # the initramfs changes with the init script and what it ships: key the cache on them
    made_of = (INIT, repr(sorted(MODULE_PATHS.items())), AGENT_PACKAGE, str(WORKLOAD_TEXT_LINES))
    key = hashlib.sha256("".join(made_of).encode()).hexdigest()
    home = CACHE / f"{package}-{key[:12]}"
    images = GuestImages(kernel=home / "vmlinuz", initrd=home / "initrd.cpio")
    if images.kernel.exists() and images.initrd.exists():
        return images
    CACHE.mkdir(parents=True, exist_ok=True)
    os.chmod(CACHE, 0o755)
    # one builder at a time (pytest-xdist workers ask at once); the others find its images
    with (CACHE / ".build.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not (images.kernel.exists() and images.initrd.exists()):
            _make(package, home)
    return images


def _make(package: str, home: Path) -> None:
    """Builds the kernel and initramfs of ``package`` into ``home``."""
    with tempfile.TemporaryDirectory(dir=CACHE) as tmp_name:
        tmp = Path(tmp_name)
        os.chmod(tmp, 0o755)
        _run("apt-get", "download", "-q", package, cwd=tmp)
        (deb,) = tmp.glob("*.deb")
        _run("dpkg", "-x", str(deb), str(tmp / "x"))
        (vmlinuz,) = (tmp / "x" / "boot").glob("vmlinuz-*")
        modules = next((tmp / "x" / "lib" / "modules").iterdir()) / "kernel"
        root = tmp / "initramfs"
        for sub in ("bin", "lib", "proc", "sys", "dev", "tmp", "etc", "work"):
            (root / sub).mkdir(parents=True)
        (root / "work" / "text").write_text(
            "".join(f"{n}\n" for n in range(1, WORKLOAD_TEXT_LINES + 1))
        )
        shutil.copy2("/bin/busybox", root / "bin" / "busybox")  # busybox-static
        _add_agent(tmp, root)
        for module, path in MODULE_PATHS.items():
            shutil.copy2(modules / path, root / "lib" / f"{module}.ko")
        init = root / "init"
        init.write_text(INIT)
        init.chmod(0o755)
        home.mkdir(parents=True, exist_ok=True)
        os.chmod(home, 0o755)
        _write_cpio(root, tmp / "initrd.cpio")
        shutil.copy2(vmlinuz, tmp / "vmlinuz")
        for name in ("vmlinuz", "initrd.cpio"):
            os.chmod(tmp / name, 0o644)
            os.replace(tmp / name, home / name)
