"""libvirt refuses to refresh a storage pool while it builds a volume there (a copy by
``createXMLFrom``: "has asynchronous jobs running"). On a real libvirtd: the driver's
figures are then libvirt's last ones instead of an error, and a refresh the daemon needs
says to try again."""

from __future__ import annotations

import os
import secrets
import shutil
import threading
from pathlib import Path

import libvirt

from novacron.vm.driver import Hypervisor
from tests.system.libvirt_host import URI, LibvirtHost

COPY_MIB = 1024  # written data to copy: long enough to be caught copying
ATTEMPTS = 3


def copy_into(
    pool: libvirt.virStoragePool,
    xml: str,
    source: libvirt.virStorageVol,
    failed: list[BaseException],
) -> None:
    """``pool.createXMLFrom``, on a thread of its own: what it raises goes to ``failed``."""
    try:
        pool.createXMLFrom(xml, source, 0)
    except BaseException as exc:  # (a thread's exception would otherwise only be printed)
        failed.append(exc)


def test_a_pool_building_a_volume_still_answers_its_figures(libvirt_host: LibvirtHost) -> None:
    name = f"novacron-busy-{secrets.token_hex(4)}"
    where = Path("/var/tmp") / name
    where.mkdir()
    hv = Hypervisor(URI)
    conn = libvirt.open(URI)
    pool = conn.storagePoolCreateXML(
        f"<pool type='dir'><name>{name}</name><target><path>{where}</path></target></pool>", 0
    )
    copier = None
    try:
        source = where / "source.raw"
        block = os.urandom(1 << 20)
        with source.open("wb") as f:
            for _ in range(COPY_MIB):
                f.write(block)
        pool.refresh(0)
        copy_of = conn.storageVolLookupByPath(str(source))
        seen: list[tuple[bool, str, bool]] = []  # the driver's answers while a copy runs
        failed: list[BaseException] = []
        copies = 0
        # a loaded machine may let a copy's whole build pass between two refreshes: a
        # copy that was never caught is followed by another, up to three
        while copies < ATTEMPTS and not seen:
            xml = (
                f"<volume><name>copy{copies}.raw</name>"
                f"<capacity unit='MiB'>{COPY_MIB}</capacity><allocation>0</allocation>"
                "<target><format type='raw'/></target></volume>"
            )
            copier = threading.Thread(target=copy_into, args=(pool, xml, copy_of, failed))
            copier.start()
            copies += 1
            while copier.is_alive():
                try:
                    pool.refresh(0)
                    continue
                except libvirt.libvirtError as exc:
                    if "asynchronous jobs" not in str(exc):
                        raise
                refreshed = hv.refresh_pool(name)
                space = hv.pool_space(name)  # no error: libvirt's last figures
                seen.append((refreshed, space["pool"], hv.pool_free_bytes(name) > 0))
            copier.join()
            assert not failed, failed
        assert (False, name, True) in seen, seen  # caught a copy at least once
        assert hv.refresh_pool(name) is True  # done: refreshed
        assert hv.pool_space(name)["volumes"] == 1 + copies
    finally:
        if copier is not None:
            copier.join()  # (the pool goes only once libvirt has done with it)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        conn.close()
        hv.close()
        shutil.rmtree(where, ignore_errors=True)
