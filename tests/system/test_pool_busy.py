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
        xml = (
            f"<volume><name>copy.raw</name><capacity unit='MiB'>{COPY_MIB}</capacity>"
            "<allocation>0</allocation><target><format type='raw'/></target></volume>"
        )
        copier = threading.Thread(target=pool.createXMLFrom, args=(xml, copy_of, 0))
        copier.start()
        seen = []  # (raw refresh refused, the driver's answers) while the copy runs
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
        assert (False, name, True) in seen, seen  # caught the copy at least once
        assert hv.refresh_pool(name) is True  # done: refreshed
        assert hv.pool_space(name)["volumes"] == 2
    finally:
        if copier is not None:
            copier.join()  # (the pool goes only once libvirt has done with it)
        for vol in pool.listAllVolumes(0):
            vol.delete(0)
        pool.destroy()
        conn.close()
        hv.close()
        shutil.rmtree(where, ignore_errors=True)
