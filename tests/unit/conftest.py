"""Fixtures of the unit tests that need the VM or the migration service: on libvirt's
test driver (shared by the whole process: names must be unique), with a state store of
their own."""

from __future__ import annotations

import itertools
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import replace
from pathlib import Path

import pytest
import trio

from novacron.config import dev_defaults
from novacron.eventbus import EventBus
from novacron.migration.service import MigrationService
from novacron.state.db import StateStore
from novacron.vm.driver import Hypervisor
from novacron.vm.service import VmService

_names = itertools.count()


def unique(prefix: str) -> str:
    """A name no other test of this process uses (the test driver is shared)."""
    return f"{prefix}-{next(_names)}-{uuid.uuid4().hex[:6]}"


@pytest.fixture
def vm_service(tmp_path: Path) -> Iterator[VmService]:
    """A VmService on the test driver with a storage pool and a state store of its own."""
    config = replace(dev_defaults(), state_dir=tmp_path, storage_pool=unique("pool"))
    store = StateStore(tmp_path / "state.db")
    hv = Hypervisor(config.hypervisor_uri)
    hv.ensure_pool(config.storage_pool, config.images_dir)
    vms = VmService(config, hv, store)
    vms.placement.load(hv.numa_nodes())
    yield vms
    store.close()


@pytest.fixture
def migration_service(vm_service: VmService) -> MigrationService:
    return MigrationService(vm_service.config, vm_service, EventBus())


@pytest.fixture
async def migrations(migration_service: MigrationService) -> AsyncIterator[MigrationService]:
    """:func:`migration_service`, running (its tasks run in its nursery)."""
    async with trio.open_nursery() as n:
        await n.start(migration_service.run)
        yield migration_service
        n.cancel_scope.cancel()
