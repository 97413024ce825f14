from __future__ import annotations

import os
import secrets
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import libvirt
import pytest

from tests.daemon_harness import Daemon
from tests.system import guest
from tests.system.libvirt_host import URI, LibvirtHost
from tests.system.nodes import TwoNodes, running_nodes


@pytest.fixture(scope="session")
def libvirt_host() -> Iterator[LibvirtHost]:
    host = LibvirtHost().start()
    yield host
    host.stop()


@pytest.fixture(scope="module")
def nodes(
    libvirt_host: LibvirtHost, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TwoNodes]:
    """Two namespaced hosts, each with its libvirtd and a novacrond (per test module)."""
    with running_nodes(tmp_path_factory.mktemp("nodes")) as pair:
        yield pair


@pytest.fixture(scope="session")
def guest_images() -> guest.GuestImages:
    return guest.build()


@contextmanager
def daemon_on_system(tmp_path: Path, *extra: str) -> Iterator[Daemon]:
    """A daemon on qemu:///system with its own pool and a state dir libvirt can reach,
    started with ``extra`` flags; everything it made is removed afterwards."""
    tag = secrets.token_hex(4)
    state = Path("/var/tmp") / f"novacron-systest-{tag}"
    pool = f"novacron-test-{tag}"
    d = Daemon(
        socket=tmp_path / "novacrond.sock",
        state_dir=state,
        log=tmp_path / "novacrond.log",
        uri=URI,
        extra=["--domain-type", "qemu", "--storage-pool", pool, *extra],
    )
    try:
        d.start(timeout=60)
        yield d
    finally:
        d.stop()
        cleanup_libvirt(pool, state)
        shutil.rmtree(state, ignore_errors=True)
        if os.environ.get("NOVACRON_KEEP_LOGS"):
            print(d.log_text())


@pytest.fixture
def system_daemon(libvirt_host: LibvirtHost, tmp_path: Path) -> Iterator[Daemon]:
    with daemon_on_system(tmp_path) as d:
        yield d


def cleanup_libvirt(pool: str, state: Path) -> None:
    """Removes every domain and the pool a test daemon left behind."""
    conn = libvirt.open(URI)
    try:
        for dom in conn.listAllDomains(0):
            xml = dom.XMLDesc(0)
            if str(state) in xml:
                if dom.isActive():
                    dom.destroy()
                dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA)
        try:
            p = conn.storagePoolLookupByName(pool)
        except libvirt.libvirtError:
            return
        if p.isActive():
            for vol in p.listAllVolumes(0):
                vol.delete(0)
            p.destroy()
        p.undefine()
    finally:
        conn.close()


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    here = Path(__file__).parent
    for item in items:
        if here in Path(item.fspath).parents:
            item.add_marker(pytest.mark.system)
            item.add_marker(pytest.mark.slow)
