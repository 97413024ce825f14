"""Detaching NICs on libvirt's test driver, which can neither hot-plug nor change a
definition device by device: every refusal leaves the record, the domain's metadata and
libvirt's definition as they were, and a paused VM's NIC is refused before libvirt is
asked (a paused guest cannot release one). A real guest's NICs come and go in
tests/system/test_networking.py; one that never lets go in tests/system/test_disks.py."""

from __future__ import annotations

import pytest

from novacron import errors
from novacron.net.nic import NicSpec
from novacron.vm import domain_xml
from novacron.vm.nics import attach, detach
from novacron.vm.service import VmService
from novacron.vm.spec import VmSpec
from tests.unit.conftest import unique

MAC = "52:54:00:12:34:56"


async def nics(svc: VmService, name: str) -> tuple[list[str], list[str], list[str]]:
    """The VM's NICs' MACs as the record, the domain's metadata and libvirt have them."""
    xml = await svc.hv_pool.run(svc.hv.xml, name)
    managed = domain_xml.parse_managed(xml)
    rec = await svc.records.get(name)
    assert managed is not None and rec is not None
    return (
        [n.mac for n in VmSpec.from_dict(rec.spec).nics],
        [n.mac for n in VmSpec.from_dict(managed.spec).nics],
        [i.mac for i in domain_xml.parse_interfaces(xml)],
    )


async def test_refused_detaches_change_nothing(vm_service: VmService) -> None:
    svc = vm_service
    name = unique("nc")
    nic = NicSpec("br-a", MAC, "virtio")
    await svc.create(VmSpec(name=name, vcpus=1, memory_mib=64, nics=(nic,)), False)
    was = ([MAC], [MAC], [MAC])
    assert await nics(svc, name) == was
    with pytest.raises(errors.NotFound, match="no NIC with MAC") as missing:
        await detach(svc, name, "52:54:00:00:00:01")
    assert missing.value.details == {"vm": name, "mac": "52:54:00:00:00:01"}
    with pytest.raises(errors.AlreadyExists):
        await attach(svc, name, NicSpec("br-b", MAC, "virtio"))
    with pytest.raises(errors.Conflict, match="not supported"):  # stopped: the definition
        await detach(svc, name, MAC)
    assert await nics(svc, name) == was
    await svc.start(name)
    await svc.pause(name)
    with pytest.raises(errors.Conflict, match="paused guest cannot release") as paused:
        await detach(svc, name, MAC)
    assert paused.value.details == {"vm": name, "state": "paused"}
    assert await nics(svc, name) == was
    await svc.resume(name)
    with pytest.raises(errors.Conflict, match="not supported"):  # running: the guest
        await detach(svc, name, MAC, timeout_s=1)
    assert await nics(svc, name) == was
