"""Disks attached after create, on a real TCG guest: a new volume hot-plugged into the
running guest appears there with its size, grows there when resized, and is gone from it
when unplugged (its volume deleted, and not back at the next boot); a detached one is
gone at the next boot; a stopped VM's volume resized is larger at the next boot."""

from __future__ import annotations

import errno
import hashlib
import os
import re
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import libvirt
import pytest

from novacron import errors
from novacron.vm.domain_xml import IOTUNE
from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.libvirt_host import URI
from tests.system.nodes import wait_until

IOTUNE_KEYS = set(IOTUNE.values())


def blocks(log: Path, after: int = 0) -> dict[str, int]:
    """The guest's virtio disks (name -> 512-byte sectors) it reported after ``after``."""
    text = guest.console_text(log)[after:]
    return {m[0]: int(m[1]) for m in re.findall(guest.BLOCK_MARKER + r" (vd[a-z]+) (\d+)", text)}


def allocated(path: Path) -> int:
    """The host space the file at ``path`` takes."""
    return path.stat().st_blocks * 512


def wait_blocks(log: Path, wanted: dict[str, int], after: int = 0) -> None:
    wait_until(lambda: blocks(log, after) == wanted, 120, f"the guest's disks {wanted}")


def test_a_new_volume_is_hot_plugged_grown_and_a_detached_one_is_gone(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "dk1", memory_mib=128, options="novacron.blockwatch", disks=[{"size_gib": 1}]
            ),
        )
        log = Path(vm["console_log"])
        wait_blocks(log, {"vda": 2 << 20})  # 1 GiB
        grown = c.call("vm.disk.attach", vm="dk1", size_gib=2, format="raw")
        assert grown["state"] == "running"
        assert allocated(Path(grown["disks"][1]["path"])) < 1 << 20  # thin
        assert [d["target"] for d in grown["disks"]] == ["vda", "vdb"]
        wait_blocks(log, {"vda": 2 << 20, "vdb": 4 << 20})  # the guest sees 2 GiB more
        assert [d["target"] for d in c.call("vm.stats", name="dk1")["disks"]] == ["vda", "vdb"]
        # grown while the guest runs: QEMU tells it at once
        bigger = c.call("vm.disk.resize", vm="dk1", target="vdb", size_gib=3)
        assert [(d["target"], d["size_gib"]) for d in bigger["disks"]] == [("vda", 1), ("vdb", 3)]
        wait_blocks(log, {"vda": 2 << 20, "vdb": 6 << 20})
        assert Path(grown["disks"][1]["path"]).stat().st_size == 3 << 30  # (raw)
        with pytest.raises(errors.InvalidParams, match="only grows"):
            c.call("vm.disk.resize", vm="dk1", target="vdb", size_gib=2)
        # unplugged while the guest runs: it lets go, then the volume is deleted
        third = c.call("vm.disk.attach", vm="dk1", size_gib=1, format="raw")
        wait_blocks(log, {"vda": 2 << 20, "vdb": 6 << 20, "vdc": 2 << 20})
        before = len(guest.console_text(log))
        unplugged = c.call("vm.disk.detach", vm="dk1", target="vdc")
        assert unplugged["state"] == "running"
        assert [d["target"] for d in unplugged["disks"]] == ["vda", "vdb"]
        assert unplugged["volumes_deleted"] == [third["disks"][2]["path"]]
        assert not Path(third["disks"][2]["path"]).exists()
        wait_until(  # the guest's view
            lambda: f"{guest.BLOCK_GONE} vdc" in guest.console_text(log)[before:],
            60,
            "the guest to see vdc gone",
        )

        c.call("vm.stop", name="dk1")
        shrunk = c.call("vm.disk.detach", vm="dk1", target="vdb")
        assert shrunk["volumes_deleted"] == [grown["disks"][1]["path"]]
        assert not Path(grown["disks"][1]["path"]).exists()
        # grown while stopped: through the storage pool (qemu-img on the qcow2 volume)
        cold = c.call("vm.disk.resize", vm="dk1", target="vda", size_gib=2)
        assert [(d["target"], d["size_gib"]) for d in cold["disks"]] == [("vda", 2)]
        before = len(guest.console_text(log))
        c.call("vm.start", name="dk1")
        wait_blocks(log, {"vda": 4 << 20}, after=before)
        time.sleep(2)  # (a second disk would have shown by now: both are probed at boot)
        assert blocks(log, before) == {"vda": 4 << 20}
        c.call("vm.delete", name="dk1", force=True)


def test_a_disk_grown_since_a_snapshot_is_its_old_size_after_a_running_revert(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """A running guest's qcow2 disk, snapshotted and then grown, reverted while it runs:
    QEMU gives the image the snapshot's size and the guest its memory of that size; the
    record says so too, and the disk grows again afterwards."""
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "dk3", memory_mib=128, options="novacron.blockwatch", disks=[{"size_gib": 1}]
            ),
        )
        log, path = Path(vm["console_log"]), vm["disks"][0]["path"]
        wait_blocks(log, {"vda": 2 << 20})
        c.call("vm.snapshot.create", vm="dk3", name="small")
        grown = c.call("vm.disk.resize", vm="dk3", target="vda", size_gib=2)
        assert [(d["target"], d["size_gib"]) for d in grown["disks"]] == [("vda", 2)]
        wait_blocks(log, {"vda": 4 << 20})
        assert guest.image_bytes(path) == 2 << 30
        back = c.call("vm.snapshot.revert", vm="dk3", name="small")
        assert back["state"] == "running"
        assert [(d["target"], d["size_gib"]) for d in back["disks"]] == [("vda", 1)]
        assert guest.image_bytes(path) == 1 << 30
        # the guest's memory is the snapshot's: its next report of vda is from there on
        before = len(guest.console_text(log))
        again = c.call("vm.disk.resize", vm="dk3", target="vda", size_gib=3)
        assert [(d["target"], d["size_gib"]) for d in again["disks"]] == [("vda", 3)]
        wait_blocks(log, {"vda": 6 << 20}, after=before)
        assert guest.image_bytes(path) == 3 << 30
        c.call("vm.delete", name="dk3", force=True)


def test_a_clone_has_a_copy_of_the_disks_and_boots(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """vm.clone through the real directory pool: the copy's volume holds the source's
    bytes in a file of its own, and the copy boots while the source stays stopped."""
    with system_daemon.client(timeout=300) as c:
        source = c.call(
            "vm.create",
            **guest_images.vm(
                "cl1",
                options="novacron.blockwatch",
                disks=[{"size_gib": 1, "format": "raw"}],
                start=False,
            ),
        )
        volume = Path(source["disks"][0]["path"])
        assert allocated(volume) < 1 << 20  # thin: a raw volume takes space as written
        marker = os.urandom(8192)
        with volume.open("r+b") as f:  # what the guest would have written
            f.seek(300 << 20)
            f.write(marker)
        c.call("vm.start", name="cl1")
        with pytest.raises(errors.Conflict, match="must be stopped"):
            c.call("vm.clone", name="cl1", new_name="cl2")
        c.call("vm.stop", name="cl1")
        # a disk an operator attached with virsh: its spec lacks it, so the clone is refused
        extra = (
            f"<disk type='file' device='disk'><source file='{volume.parent}/outside.raw'/>"
            "<target dev='vdt' bus='virtio'/></disk>"
        )
        conn = libvirt.open(URI)
        try:
            dom = conn.lookupByName("cl1")
            dom.attachDeviceFlags(extra, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
            with pytest.raises(errors.Conflict, match="attached outside NovaCron") as refused:
                c.call("vm.clone", name="cl1", new_name="cl2")
            assert refused.value.details["devices"] == [f"disk vdt ({volume.parent}/outside.raw)"]
            assert [v["name"] for v in c.call("vm.list")] == ["cl1"]
            dom.detachDeviceFlags(extra, libvirt.VIR_DOMAIN_AFFECT_CONFIG)
        finally:
            conn.close()
        copy = c.call("vm.clone", name="cl1", new_name="cl2", start=True)
        assert copy["state"] == "running" and copy["uuid"] != source["uuid"]
        copied = Path(copy["disks"][0]["path"])
        assert copied != volume and copied.name == "cl2-vda.raw"
        assert copied.stat().st_size == 1 << 30
        assert allocated(copied) < 1 << 20  # the source's holes stay holes
        with copied.open("rb") as f:
            f.seek(300 << 20)
            assert f.read(len(marker)) == marker
        wait_blocks(Path(copy["console_log"]), {"vda": 2 << 20})
        assert c.call("vm.get", name="cl1")["state"] == "stopped"
        gone = c.call("vm.delete", name="cl2", force=True)
        assert gone["volumes_deleted"] == [str(copied)]
        assert volume.exists()
        c.call("vm.delete", name="cl1")


def test_a_raw_disk_is_cloned_as_its_bytes_whatever_header_its_guest_wrote(
    system_daemon: Daemon, guest_images: guest.GuestImages, tmp_path: Path
) -> None:
    """A guest writes all of a raw disk, its first bytes too: a qcow2 header there, naming
    a backing file elsewhere on the host, makes libvirt's pool take the volume for a
    qcow2 image once it looks at its files again, and libvirt's copy (qemu-img convert)
    read that file into the clone.
    The clone holds the source's bytes, header and all, and nothing of the other file;
    and the pool's promised sizes count the volume's file, not the size the header
    claims (which would refuse every new volume under ``storage_overcommit``)."""
    secret = Path("/var/tmp") / f"novacron-secret-{os.getpid()}.raw"
    secret.write_bytes(b"NOT-FOR-THE-GUEST" * 65536)
    header = tmp_path / "header.qcow2"  # (a disk of 100 TiB, it says)
    subprocess.run(
        ["qemu-img", "create", "-q", "-f", "qcow2", "-b", secret, "-F", "raw", header, "100T"],
        check=True,
    )
    try:
        with system_daemon.client(timeout=300) as c:
            source = c.call(
                "vm.create",
                **guest_images.vm("cl3", disks=[{"size_gib": 1, "format": "raw"}], start=False),
            )
            volume = Path(source["disks"][0]["path"])
            promised = c.call("node.info")["storage"]["committed_bytes"]
            with volume.open("r+b") as f:  # what the guest can write
                f.write(header.read_bytes())
            conn = libvirt.open(URI)
            try:  # the pool looks again (as node.info and a base image's copy have it do)
                vol = conn.storageVolLookupByPath(str(volume))
                vol.storagePoolLookupByVolume().refresh(0)
                assert "<format type='qcow2'/>" in vol.XMLDesc(0)
            finally:
                conn.close()
            # the pool's promises are the volume's file's size, not what the header says
            assert c.call("node.info")["storage"]["committed_bytes"] == promised
            copy = c.call("vm.clone", name="cl3", new_name="cl4")
            copied = Path(copy["disks"][0]["path"])
            with volume.open("rb") as a, copied.open("rb") as b:
                start = a.read(4 << 20)
                assert start.startswith(b"QFI\xfb") and b.read(4 << 20) == start
            assert copied.stat().st_size == 1 << 30
            assert b"NOT-FOR-THE-GUEST" not in copied.read_bytes()
            c.call("vm.delete", name="cl4")
            c.call("vm.delete", name="cl3")
    finally:
        secret.unlink()


def test_a_guest_that_does_not_release_a_disk_keeps_it(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """A guest booted without ACPI never answers an unplug request: the detach answers
    ``timeout`` and changes nothing (record, definition, volume, the guest's disk); asked
    again, the same; a third, waiting longer, lets a stop through and then finishes."""
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "dk2",
                options="novacron.blockwatch acpi=off",
                disks=[{"size_gib": 1}, {"size_gib": 1, "format": "raw"}],
            ),
        )
        log = Path(vm["console_log"])
        wait_blocks(log, {"vda": 2 << 20, "vdb": 2 << 20})
        volume = Path(vm["disks"][1]["path"])
        for timeout_s in (2, 1):  # the second request finds the first still pending
            with pytest.raises(errors.Timeout, match="has not released disk 'vdb'") as late:
                c.call("vm.disk.detach", vm="dk2", target="vdb", timeout_s=timeout_s)
            assert late.value.details == {"vm": "dk2", "target": "vdb"}
            kept = c.call("vm.get", name="dk2")
            assert kept["state"] == "running"
            assert kept["disks"] == vm["disks"]  # (as the running domain has them)
            assert volume.exists()
        assert f"{guest.BLOCK_GONE} vdb" not in guest.console_text(log)
        assert blocks(log) == {"vda": 2 << 20, "vdb": 2 << 20}
        # a detach waiting for the guest holds no lock on the VM: a stop goes ahead at
        # once (not after the detach's 300 s), and the waiting detach then finishes, as
        # the stopped VM's definition loses the disk
        asked = system_daemon.log_text().count("vm.unplug_requested")
        with ThreadPoolExecutor(1) as pool, system_daemon.client(timeout=400) as other:
            waiting = pool.submit(
                other.call, "vm.disk.detach", vm="dk2", target="vdb", timeout_s=300
            )
            wait_until(
                lambda: system_daemon.log_text().count("vm.unplug_requested") > asked,
                60,
                "the third unplug request",
            )
            with system_daemon.client(timeout=60) as quick:
                assert quick.call("vm.stop", name="dk2")["state"] == "stopped"
            done = waiting.result(timeout=60)
        assert [d["target"] for d in done["disks"]] == ["vda"]
        assert done["state"] == "stopped"
        assert done["volumes_deleted"] == [str(volume)] and not volume.exists()
        c.call("vm.delete", name="dk2")


def test_disk_limits_reach_qemu_and_change_while_the_guest_runs(
    system_daemon: Daemon, guest_images: guest.GuestImages
) -> None:
    """Limits given at create are QEMU's throttle from the first boot; changed while the
    guest runs, QEMU's throttle changes at once (and the definition with it: the next
    boot has them); lifted, QEMU throttles nothing."""
    conn = libvirt.open(URI)

    def qemu(target: str) -> dict[str, int]:  # what QEMU applies now (query-block)
        tune = conn.lookupByName("dl1").blockIoTune(target, libvirt.VIR_DOMAIN_AFFECT_LIVE)
        return {k: v for k, v in tune.items() if k in IOTUNE_KEYS and v}

    try:
        with system_daemon.client(timeout=300) as c:
            limits = {"read_bytes_per_s": 8 << 20, "write_iops": 200}
            vm = c.call(
                "vm.create",
                **guest_images.vm(
                    "dl1",
                    options="novacron.blockwatch",
                    disks=[{"size_gib": 1, "limits": limits}, {"size_gib": 1}],
                ),
            )
            assert [d["limits"] for d in vm["disks"]] == [limits, None]
            wait_blocks(Path(vm["console_log"]), {"vda": 2 << 20, "vdb": 2 << 20})
            assert qemu("vda") == {"read_bytes_sec": 8 << 20, "write_iops_sec": 200}
            assert qemu("vdb") == {}
            changed = c.call("vm.disk.limit", vm="dl1", target="vdb", write_bytes_per_s=1 << 20)
            assert changed["disks"][1]["limits"] == {"write_bytes_per_s": 1 << 20}
            assert qemu("vdb") == {"write_bytes_sec": 1 << 20}
            lifted = c.call("vm.disk.limit", vm="dl1", target="vda", read_bytes_per_s=0)
            assert lifted["disks"][0]["limits"] == {"write_iops": 200}
            assert qemu("vda") == {"write_iops_sec": 200}
            with pytest.raises(errors.InvalidParams, match="at least one limit"):
                c.call("vm.disk.limit", vm="dl1", target="vda")
            # hot-plugged with limits: QEMU throttles it from the start
            plugged = c.call("vm.disk.attach", vm="dl1", size_gib=1, limits={"read_iops": 70})
            assert plugged["disks"][2]["limits"] == {"read_iops": 70}
            assert qemu("vdc") == {"read_iops_sec": 70}
            c.call("vm.stop", name="dl1")
            c.call("vm.disk.limit", vm="dl1", target="vda", write_iops=0, read_iops=300)
            c.call("vm.start", name="dl1")  # the definition had them all along
            assert qemu("vda") == {"read_iops_sec": 300}
            assert qemu("vdb") == {"write_bytes_sec": 1 << 20}
            assert qemu("vdc") == {"read_iops_sec": 70}
            c.call("vm.delete", name="dl1", force=True)
    finally:
        conn.close()


CLI = (sys.executable, "-m", "novacron.cli.main")


def fingerprint(path: Path) -> tuple[str, int, int]:
    """A file's data (where each extent lies, and its bytes: holes are not read), size
    and modification time."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        fd, pos = f.fileno(), 0
        while True:
            try:
                start = os.lseek(fd, pos, os.SEEK_DATA)
            except OSError as exc:
                if exc.errno == errno.ENXIO:  # no data past pos
                    break
                raise
            pos = os.lseek(fd, start, os.SEEK_HOLE)
            f.seek(start)
            digest.update(start.to_bytes(8, "little") + pos.to_bytes(8, "little"))
            for at in range(start, pos, 1 << 20):
                digest.update(f.read(min(1 << 20, pos - at)))
    st = path.stat()
    return digest.hexdigest(), st.st_size, st.st_mtime_ns


def sums(log: Path) -> dict[str, str]:
    """The md5 of each disk's first MiB as the guest read it (novacron.blocksum)."""
    text = guest.console_text(log)
    return dict(re.findall(guest.BLOCKSUM_MARKER + r" (vd[a-z]+) ([0-9a-f]{32})", text))


def test_volumes_copied_from_base_images_hold_their_bytes_and_leave_them_alone(
    system_daemon: Daemon, guest_images: guest.GuestImages, tmp_path: Path
) -> None:
    """A qcow2 and a raw base image copied into new volumes through the real directory
    pool: the guest reads the images' bytes on disks of the sizes asked (the image's own,
    rounded up to GiB, when none is), the volumes keep the images' formats and holes,
    the bases are neither changed nor tied to the copies, and a copy hot-plugged into the
    running guest (from the CLI) holds the same bytes."""
    bases = tmp_path / "bases"
    bases.mkdir()
    start = os.urandom(1 << 20)
    raw = bases / "base.raw"
    with raw.open("wb") as f:  # 1.5 GiB, its first MiB data, the rest a hole
        f.write(start)
        f.truncate(1536 << 20)
    qcow = bases / "base.qcow2"
    subprocess.run(
        ["qemu-img", "convert", "-f", "raw", "-O", "qcow2", str(raw), str(qcow)], check=True
    )
    before = {p: fingerprint(p) for p in (raw, qcow)}
    want = hashlib.md5(start).hexdigest()  # what busybox's md5sum prints
    with system_daemon.client(timeout=300) as c:
        vm = c.call(
            "vm.create",
            **guest_images.vm(
                "im1",
                memory_mib=128,
                options="novacron.blockwatch novacron.blocksum",
                disks=[{"image": str(qcow), "size_gib": 3}, {"image": str(raw)}],
            ),
        )
        assert [(d["size_gib"], d["format"]) for d in vm["disks"]] == [(3, "qcow2"), (2, "raw")]
        vda, vdb = (Path(d["path"]) for d in vm["disks"])
        log = Path(vm["console_log"])
        wait_blocks(log, {"vda": 6 << 20, "vdb": 4 << 20})
        wait_until(lambda: sums(log) == {"vda": want, "vdb": want}, 60, "the guest's sums")
        assert vda.read_bytes()[:4] == b"QFI\xfb" and vda.parent != bases
        assert vdb.stat().st_size == 2 << 30
        assert vdb.stat().st_blocks * 512 < 64 << 20  # the hole stayed a hole
        info = subprocess.run(
            ["qemu-img", "info", "-U", "--output=json", str(vda)], capture_output=True, check=True
        )
        assert "backing-filename" not in info.stdout.decode()  # a copy, not an overlay
        # hot-plugged from the CLI: a third copy, grown to 2 GiB
        env = {**os.environ, "NOVACRON_SOCKET": str(system_daemon.socket), "COLUMNS": "250"}
        done = subprocess.run(
            [*CLI, "vm", "disk", "attach", "im1", "--image", str(qcow), "--size", "2"],
            capture_output=True,
            text=True,
            env=env,
            timeout=300,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        assert re.search(r"vdc .*im1-vdc\.qcow2 .* qcow2 .* True .* 2 ", done.stdout), done.stdout
        wait_blocks(log, {"vda": 6 << 20, "vdb": 4 << 20, "vdc": 4 << 20})
        wait_until(lambda: sums(log).get("vdc") == want, 60, "the plugged disk's sum")
        gone = c.call("vm.delete", name="im1", force=True)
        assert sorted(gone["volumes_deleted"]) == sorted(
            [str(vda), str(vdb), str(vda.parent / "im1-vdc.qcow2")]
        )
    assert {p: fingerprint(p) for p in (raw, qcow)} == before
