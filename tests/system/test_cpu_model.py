"""``[hypervisor] cpu_model`` on a real libvirtd and QEMU (TCG): a mode the hypervisor
offers boots the guest with that CPU, one it lacks is named by ``node.info`` at once and
refused by libvirt at the start."""

from __future__ import annotations

import xml.etree.ElementTree as ET
from pathlib import Path

import libvirt
import pytest

from novacron import errors
from tests.system import guest
from tests.system.conftest import daemon_on_system
from tests.system.libvirt_host import URI, LibvirtHost


def live_cpu(name: str) -> ET.Element:
    conn = libvirt.open(URI)
    try:
        cpu = ET.fromstring(conn.lookupByName(name).XMLDesc(0)).find("cpu")
    finally:
        conn.close()
    assert cpu is not None
    return cpu


@pytest.mark.parametrize("model", ["host-model", "Nehalem"])
def test_the_guest_boots_with_the_configured_cpu(
    libvirt_host: LibvirtHost, guest_images: guest.GuestImages, tmp_path: Path, model: str
) -> None:
    with daemon_on_system(tmp_path, "--cpu-model", model) as d, d.client() as c:
        info = c.call("node.info")["hypervisor"]["cpu_model"]
        assert info == {"configured": model, "problem": None}
        vm = c.call("vm.create", **guest_images.vm("cpu1"))
        # libvirt expands host-model at the start into the model it stands for here: the
        # definition a migration carries to another host
        cpu = live_cpu("cpu1")
        assert cpu.get("mode") == "custom"
        assert cpu.findtext("model") == model if model != "host-model" else cpu.findtext("model")
        guest.wait_for_console(Path(vm["console_log"]), guest.BOOT_MARKER)
        c.call("vm.delete", name="cpu1", force=True)


def test_a_model_this_host_cannot_give_is_named_and_refused_at_the_start(
    libvirt_host: LibvirtHost, guest_images: guest.GuestImages, tmp_path: Path
) -> None:
    # (TCG has no host CPU to pass through)
    with daemon_on_system(tmp_path, "--cpu-model", "host-passthrough") as d, d.client() as c:
        info = c.call("node.info")["hypervisor"]["cpu_model"]
        assert info["configured"] == "host-passthrough"
        assert "host-passthrough" in info["problem"]
        assert "hypervisor.cpu_model_unusable" in d.log_text()
        with pytest.raises(errors.NovaCronError, match="host-passthrough") as refused:
            c.call("vm.create", **guest_images.vm("cpu2"))
        assert refused.value.code == "invalid_params"
        # (as any start that fails: the VM stays, stopped, and is deleted)
        assert [(v["name"], v["state"]) for v in c.call("vm.list")] == [("cpu2", "stopped")]
        c.call("vm.delete", name="cpu2")
