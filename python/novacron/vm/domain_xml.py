"""Domain XML built with ElementTree (never by pasting user strings into text).

The NovaCron metadata element marks a domain as managed and carries its tenant and
spec, so a daemon that lost its record (crash between define and commit) can adopt
the domain again on start.
"""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from novacron._core import format_cpuset
from novacron.net.nic import interface_element
from novacron.vm.cpu_models import MODES as CPU_MODES
from novacron.vm.spec import DiskLimits, VmSpec

METADATA_NS = "https://novacron.dev/xmlns/vm/1"
METADATA_PREFIX = "novacron"
GUEST_AGENT_CHANNEL = "org.qemu.guest_agent.0"  # the virtio-serial port qemu-guest-agent opens
ET.register_namespace(METADATA_PREFIX, METADATA_NS)


@dataclass(frozen=True)
class DiskDevice:
    path: str
    format: str
    target: str
    limits: DiskLimits | None = None
    # what QEMU does with the guest's discards (TRIM): "unmap" frees the blocks in the
    # image file (a thin volume shrinks), and the blocks it writes as zeros; "ignore"
    # drops them; None: libvirt's default
    discard: str | None = None


# libvirt's <iotune> names (and setBlockIoTune's parameters) for DiskLimits' fields
IOTUNE = {
    "read_bytes_per_s": "read_bytes_sec",
    "write_bytes_per_s": "write_bytes_sec",
    "read_iops": "read_iops_sec",
    "write_iops": "write_iops_sec",
}


@dataclass(frozen=True)
class DomainPlan:
    """Everything domain XML needs beyond the spec: where things are on this host."""

    spec: VmSpec
    uuid: str
    domain_type: str  # "kvm", "qemu" or "test"
    disks: tuple[DiskDevice, ...]
    console_log: str | None
    arch: str = "x86_64"
    placement: dict[str, Any] | None = None  # from novacron._core.Placer
    emulator: str | None = None  # None: libvirt's default for the domain type
    cpu_model: str = ""  # "": libvirt's default; host-model, host-passthrough or a name


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    node = ET.SubElement(parent, tag, attrs)
    if text is not None:
        node.text = text
    return node


def metadata_element(spec: VmSpec, placement: dict[str, Any] | None) -> ET.Element:
    """NovaCron's ``<novacron:vm>`` metadata: tenant, spec and placement."""
    mine = ET.Element(f"{{{METADATA_NS}}}vm")
    _sub(mine, f"{{{METADATA_NS}}}tenant", spec.tenant)
    _sub(mine, f"{{{METADATA_NS}}}spec", json.dumps(spec.to_dict(), sort_keys=True))
    if placement is not None:
        _sub(mine, f"{{{METADATA_NS}}}placement", json.dumps(placement, sort_keys=True))
    return mine


def metadata_xml(spec: VmSpec, placement: dict[str, Any] | None) -> str:
    """The metadata element as text, for ``virDomainSetMetadata`` (which takes the
    namespace separately: the element is written without a prefix)."""
    el = metadata_element(spec, placement)
    for node in el.iter():
        node.tag = node.tag.split("}", 1)[-1]
    return ET.tostring(el, encoding="unicode")


def build(plan: DomainPlan) -> str:
    spec = plan.spec
    dom = ET.Element("domain", {"type": plan.domain_type})
    _sub(dom, "name", spec.name)
    _sub(dom, "uuid", plan.uuid)
    _sub(dom, "memory", str(spec.memory_ceiling_mib), unit="MiB")
    _sub(dom, "currentMemory", str(spec.memory_mib), unit="MiB")
    vcpu = _sub(dom, "vcpu", str(spec.vcpu_slots), placement="static")
    _vcpu_room(vcpu, spec)

    _sub(dom, "metadata").append(metadata_element(spec, plan.placement))
    if plan.cpu_model and plan.domain_type != "test":
        cpu_model_element(dom, plan.cpu_model)
    if plan.placement is not None:
        _placement(dom, vcpu, plan.placement)

    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=plan.arch)
    if spec.kernel:
        _sub(os_el, "kernel", spec.kernel)
        if spec.initrd:
            _sub(os_el, "initrd", spec.initrd)
        if spec.cmdline:
            _sub(os_el, "cmdline", spec.cmdline)
    else:
        _sub(os_el, "boot", dev="hd")

    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    if plan.emulator and plan.domain_type != "test":
        _sub(devices, "emulator", plan.emulator)
    for disk in plan.disks:
        devices.append(disk_element(disk))
    for nic in spec.nics:
        devices.append(interface_element(nic, nic.network))  # the bridge is named after it
    if plan.console_log and plan.domain_type != "test":
        # a pseudo-terminal a client can open (vm.console.open), its output also
        # appended to the console log (by virtlogd)
        serial = _sub(devices, "serial", type="pty")
        _sub(serial, "log", file=plan.console_log, append="on")
        _sub(serial, "target", port="0")
    if plan.domain_type != "test":
        _agent_channel(devices)
        _sub(devices, "memballoon", model=balloon_model(spec))
    return ET.tostring(dom, encoding="unicode")


def cpu_model_element(dom: ET.Element, model: str) -> ET.Element:
    """The guest's CPU (``<cpu>``, which NUMA placement adds its cells to): the host's
    own as a named model plus features, expanded by libvirt at each start and moved
    as it is by a migration (``host-model``); the host's CPU exactly (``host-passthrough``:
    only between identical hosts); or a named model, the same on every host that can run
    it (a fleet's baseline), refused at start where the host lacks a feature of it."""
    if model in CPU_MODES:
        return _sub(dom, "cpu", mode=model)
    cpu = _sub(dom, "cpu", mode="custom", match="exact", check="partial")
    _sub(cpu, "model", model, fallback="forbid")
    return cpu


def _vcpu_room(vcpu: ET.Element, spec: VmSpec) -> None:
    """A VM with room for more vCPUs starts with ``vcpus`` of them (``current``)."""
    if spec.vcpu_slots > spec.vcpus:
        vcpu.set("current", str(spec.vcpus))


def balloon_model(spec: VmSpec) -> str:
    """A balloon (virtio) only for a VM with room for its memory to change while it runs;
    without one a guest keeps all of its memory."""
    return "virtio" if spec.memory_ceiling_mib > spec.memory_mib else "none"


def disk_element(disk: DiskDevice) -> ET.Element:
    """``<disk type='file'>``: a virtio disk of a file image."""
    el = ET.Element("disk", {"type": "file", "device": "disk"})
    driver = _sub(el, "driver", name="qemu", type=disk.format)
    if disk.discard is not None:
        _set_discard(driver, disk.discard)
    _sub(el, "source", file=disk.path)
    _sub(el, "target", dev=disk.target, bus="virtio")
    if disk.limits is not None:
        iotune = _sub(el, "iotune")
        for key, value in disk.limits.to_dict().items():
            _sub(iotune, IOTUNE[key], str(value))
    return el


def with_disk_limits(xml: str, disk: DiskDevice) -> str:
    """A domain's XML with the ``<iotune>`` of its disk ``disk.target`` replaced by
    ``disk.limits``' (the other throttle settings of that disk are dropped too)."""
    dom = ET.fromstring(xml)  # noqa: S314 - from libvirtd
    for el in dom.findall("devices/disk"):
        if (found := el.find("target")) is None or found.get("dev") != disk.target:
            continue
        for old in el.findall("iotune"):
            el.remove(old)
        if disk.limits is not None:
            new = disk_element(disk).find("iotune")
            assert new is not None
            el.append(new)
    return ET.tostring(dom, encoding="unicode")


def disk_xml(disk: DiskDevice) -> str:
    return ET.tostring(disk_element(disk), encoding="unicode")


def with_disk(xml: str, disk: DiskDevice) -> str:
    """A domain's XML with ``disk`` added after its other disks."""
    dom = ET.fromstring(xml)  # noqa: S314 - from libvirtd
    devices = dom.find("devices")
    if devices is None:
        devices = _sub(dom, "devices")
    children = list(devices)
    disks = [i for i, el in enumerate(children) if el.tag == "disk"]
    devices.insert(disks[-1] + 1 if disks else 0, disk_element(disk))
    return ET.tostring(dom, encoding="unicode")


def without_disk(xml: str, target: str) -> str:
    """A domain's XML without its disk ``target`` (the guest's device name)."""
    dom = ET.fromstring(xml)  # noqa: S314 - from libvirtd
    for devices in dom.findall("devices"):
        for el in devices.findall("disk"):
            if (found := el.find("target")) is not None and found.get("dev") == target:
                devices.remove(el)
    return ET.tostring(dom, encoding="unicode")


def with_disk_sources(xml: str, paths: dict[str, str]) -> str:
    """A domain's XML with the file of each disk named in ``paths`` (by its device name
    in the guest) at that path (a VM whose volumes were copied to another node). A
    name the domain has no file disk for is a ``ValueError``."""
    dom = ET.fromstring(xml)  # noqa: S314 - from libvirtd, or retarget's output
    left = dict(paths)
    for el in dom.findall("devices/disk"):
        target, source = el.find("target"), el.find("source")
        dev = target.get("dev") if target is not None else None
        if dev in left and source is not None and "file" in source.attrib:
            source.set("file", left.pop(dev))
    if left:
        raise ValueError(f"the domain has no file disk {', '.join(sorted(left))}")
    return ET.tostring(dom, encoding="unicode")


def _placement(dom: ET.Element, vcpu: ET.Element, placement: dict[str, Any]) -> None:
    """``<cputune>``, ``<numatune>``, ``<memoryBacking>`` and guest ``<cpu><numa>``."""
    cells = placement["cells"]
    dedicated = placement["cpu"] == "dedicated"
    mode = placement["memory"]
    every = sorted({cpu for cell in cells for cpu in cell["cpus"]})
    vcpu.set("cpuset", format_cpuset(every))
    tune = _sub(dom, "cputune")
    for cell in cells:
        for k in range(cell["vcpus"]):
            cpus = [cell["cpus"][k]] if dedicated else cell["cpus"]
            _sub(tune, "vcpupin", vcpu=str(cell["first_vcpu"] + k), cpuset=format_cpuset(cpus))
    _sub(tune, "emulatorpin", cpuset=format_cpuset(placement["emulator_cpus"]))
    numa = _sub(dom, "numatune")
    nodeset = format_cpuset([cell["node"] for cell in cells])  # same list syntax
    _sub(numa, "memory", mode=mode, nodeset=nodeset)
    guest_cells = len(cells) > 1 and mode != "interleave"
    if guest_cells:
        for i, cell in enumerate(cells):
            _sub(numa, "memnode", cellid=str(i), mode=mode, nodeset=str(cell["node"]))
    if placement.get("hugepage_kib"):
        backing = _sub(dom, "memoryBacking")
        pages = _sub(backing, "hugepages")
        _sub(pages, "page", size=str(placement["hugepage_kib"]), unit="KiB")
    if guest_cells:
        cpu = dom.find("cpu")
        guest = _sub(cpu if cpu is not None else _sub(dom, "cpu"), "numa")
        for i, cell in enumerate(cells):
            first, count = cell["first_vcpu"], cell["vcpus"]
            _sub(
                guest,
                "cell",
                id=str(i),
                cpus=format_cpuset(list(range(first, first + count))),
                memory=str(cell["memory_kib"]),
                unit="KiB",
            )


def retarget(
    xml: str,
    placement: dict[str, Any] | None,
    console_log: str | None,
    emulator: str | None = None,
) -> str:
    """A migrating domain's XML made fit for this host: the source's placement elements
    (pins, NUMA tuning, huge pages, guest NUMA cells) replaced by ``placement``, and the
    serial console writing to this host's log (and this host's emulator, if it has one
    configured). Everything else (machine type, device
    addresses) stays exactly as the source has it: QEMU needs them to match."""
    dom = ET.fromstring(xml)  # noqa: S314 - the source daemon's libvirt XML, re-checked by libvirt
    for tag in ("cputune", "numatune", "memoryBacking"):
        for el in dom.findall(tag):
            dom.remove(el)
    cpu = dom.find("cpu")
    if cpu is not None:
        for el in cpu.findall("numa"):
            cpu.remove(el)
    vcpu = dom.find("vcpu")
    if vcpu is None:
        raise ValueError("domain XML has no <vcpu>")
    vcpu.attrib.pop("cpuset", None)
    mine = dom.find(f"metadata/{{{METADATA_NS}}}vm")
    if mine is None:
        raise ValueError("domain XML carries no NovaCron metadata")
    for el in mine.findall(f"{{{METADATA_NS}}}placement"):
        mine.remove(el)
    if placement is not None:
        _sub(mine, f"{{{METADATA_NS}}}placement", json.dumps(placement, sort_keys=True))
        _placement(dom, vcpu, placement)
    if console_log is not None:
        _console_to(dom, console_log)
    emulator_el = dom.find("devices/emulator")
    if emulator and emulator_el is not None:
        emulator_el.text = emulator
    return ET.tostring(dom, encoding="unicode")


def _console_to(dom: ET.Element, console_log: str) -> None:
    """The serial console writing to ``console_log``: a pty's log (its source, the
    other host's terminal, is left for libvirt to allocate again here), or the file
    of a VM defined before consoles were ptys."""
    for device in dom.findall("devices/serial") + dom.findall("devices/console"):
        if device.get("type") == "pty":
            for source in device.findall("source"):
                device.remove(source)
            device.attrib.pop("tty", None)
            for log_el in device.findall("log"):
                log_el.set("file", console_log)
                log_el.set("append", "on")
        elif device.get("type") == "file":
            for source in device.findall("source"):
                if "path" in source.attrib:
                    source.set("path", console_log)
                    source.set("append", "on")


def _agent_channel(devices: ET.Element) -> None:
    """The guest agent's port (``vm.guest``); libvirt makes the host end's socket."""
    channel = _sub(devices, "channel", type="unix")
    _sub(channel, "target", type="virtio", name=GUEST_AGENT_CHANNEL)


def with_agent_channel(xml: str) -> str | None:
    """The domain's XML with the guest agent's port added (a VM defined before NovaCron
    gave every domain one); None when it has one, or is a domain of libvirt's test
    driver, or has no devices element."""
    if guest_agent_state(xml) != "none":
        return None
    dom = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd, not by a client
    devices = dom.find("devices")
    if dom.get("type") == "test" or devices is None:
        return None
    _agent_channel(devices)
    return ET.tostring(dom, encoding="unicode")


def with_pty_console(xml: str) -> str | None:
    """The domain's XML with a serial port that writes to a file (the form of VMs
    defined before consoles were pseudo-terminals) made a pty logging to the same file
    (one a client can open: vm.console.open); None when there is nothing to change."""
    dom = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd, not by a client
    changed = False
    for tag in ("serial", "console"):
        for device in dom.findall(f"devices/{tag}"):
            source = device.find("source")
            if device.get("type") != "file" or source is None or not source.get("path"):
                continue
            path = source.get("path", "")
            device.remove(source)
            device.set("type", "pty")
            log_el = ET.Element("log", file=path, append="on")
            device.insert(0, log_el)
            changed = True
    return ET.tostring(dom, encoding="unicode") if changed else None


def _set_discard(driver: ET.Element, discard: str) -> None:
    """``discard`` on a disk's QEMU driver; with ``unmap``, blocks the guest writes as
    zeros are freed too (``detect_zeroes``: a guest zeroing what it deleted, as some
    operating systems do instead of a discard, gives the space back as well)."""
    driver.set("discard", discard)
    if discard == "unmap":
        driver.set("detect_zeroes", "unmap")
    else:
        driver.attrib.pop("detect_zeroes", None)


def with_disk_discard(xml: str, discard: str) -> str | None:
    """The domain's XML with ``discard`` on the QEMU driver of each writable disk (as
    :func:`disk_element` writes it for ``[hypervisor] disk_discard``); None when every
    one has it already. CD-ROMs and read-only disks are left alone."""
    dom = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd, not by a client
    changed = False
    for disk in dom.findall("devices/disk"):
        driver = disk.find("driver")
        if disk.get("device", "disk") != "disk" or disk.find("readonly") is not None:
            continue
        if driver is None or driver.get("name") != "qemu":
            continue
        before = dict(driver.attrib)
        _set_discard(driver, discard)
        changed |= driver.attrib != before
    return ET.tostring(dom, encoding="unicode") if changed else None


def resized(xml: str, spec: VmSpec, placement: dict[str, Any] | None) -> str:
    """A shut-off domain's XML given ``spec``'s vCPUs and memory, its metadata ``spec``
    and ``placement`` (as :func:`retarget` places); devices and the rest stay as they are."""
    dom = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd, not by a client
    for tag, mib in (("memory", spec.memory_ceiling_mib), ("currentMemory", spec.memory_mib)):
        el = dom.find(tag)
        if el is None:
            raise ValueError(f"domain XML has no <{tag}>")
        el.attrib.clear()
        el.set("unit", "MiB")
        el.text = str(mib)
    balloon = dom.find("devices/memballoon")
    if balloon is not None and balloon.get("model") != balloon_model(spec):
        balloon.attrib.clear()  # its address and options belong to the other model
        for child in list(balloon):
            balloon.remove(child)
        balloon.set("model", balloon_model(spec))
    vcpu = dom.find("vcpu")
    if vcpu is None:
        raise ValueError("domain XML has no <vcpu>")
    vcpu.attrib.pop("current", None)
    vcpu.text = str(spec.vcpu_slots)
    for el in dom.findall("vcpus"):  # libvirt's per-vCPU list: made again from <vcpu>
        dom.remove(el)
    _vcpu_room(vcpu, spec)
    set_spec(dom, spec)
    return retarget(ET.tostring(dom, encoding="unicode"), placement, console_log=None)


def set_spec(dom: ET.Element, spec: VmSpec) -> None:
    """The domain ``dom``'s NovaCron metadata says ``spec`` (``ValueError`` without it)."""
    spec_el = dom.find(f"metadata/{{{METADATA_NS}}}vm/{{{METADATA_NS}}}spec")
    if spec_el is None:
        raise ValueError("domain XML carries no NovaCron metadata")
    spec_el.text = json.dumps(spec.to_dict(), sort_keys=True)


SNAPSHOT_DOMAIN_TAGS = ("domain", "inactiveDomain")  # the definitions a snapshot holds


def replace_snapshot_domains(doc: ET.Element, change: Callable[[ET.Element], ET.Element]) -> None:
    """Each VM definition the snapshot description ``doc`` holds (``<domain>``, and a
    running VM's ``<inactiveDomain>``) replaced, in place, by ``change(it)``."""
    for i, el in enumerate(list(doc)):
        if el.tag not in SNAPSHOT_DOMAIN_TAGS:
            continue
        new = change(el)
        new.tag, new.tail = el.tag, el.tail
        doc.remove(el)
        doc.insert(i, new)


@dataclass(frozen=True)
class ManagedDomain:
    name: str
    uuid: str
    tenant: str
    spec: dict[str, Any]
    placement: dict[str, Any] | None = None


def parse_managed(xml: str) -> ManagedDomain | None:
    """NovaCron's metadata in a domain's XML (as returned by libvirt), or None."""
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd, not by a client
    mine = root.find(f"metadata/{{{METADATA_NS}}}vm")
    if mine is None:
        return None
    tenant = mine.findtext(f"{{{METADATA_NS}}}tenant")
    spec_text = mine.findtext(f"{{{METADATA_NS}}}spec")
    name, uuid = root.findtext("name"), root.findtext("uuid")
    if not (tenant and spec_text and name and uuid):
        return None
    try:
        spec = json.loads(spec_text)
    except ValueError:
        return None
    placement = None
    placement_text = mine.findtext(f"{{{METADATA_NS}}}placement")
    if placement_text:
        try:
            placement = json.loads(placement_text)
        except ValueError:
            placement = None
    return ManagedDomain(name=name, uuid=uuid, tenant=tenant, spec=spec, placement=placement)


@dataclass(frozen=True)
class DiskSource:
    """A disk of a domain as libvirt describes it."""

    target: str  # the guest's name for it (``vda``); "" if the XML names none
    kind: str  # libvirt's disk type: file, block, network, volume, nvme, dir, ...
    path: str | None  # the file or block device (None: the source has no local path)
    readonly: bool
    empty: bool  # no source at all (a CD-ROM drive without a medium)
    pool: str | None = None  # a storage-pool volume's pool and name (type ``volume``)
    volume: str | None = None
    alias: str | None = None  # a running domain's name for the device (``virtio-disk1``)
    format: str | None = None  # the image format QEMU reads (``<driver type=...>``)


def snapshot_blockers(xml: str) -> list[DiskSource]:
    """The domain's disks an internal snapshot cannot hold (QEMU keeps one inside each
    writable disk's qcow2 image); read-only disks and empty drives are left out of a
    snapshot, as libvirt leaves them."""
    return [
        d
        for d in parse_disks(xml)
        if not d.readonly
        and not d.empty
        and (d.format != "qcow2" or d.kind not in ("file", "block", "volume"))
    ]


def parse_disks(xml: str) -> list[DiskSource]:
    """Every ``<disk>`` of the domain, in order (backing images are not listed: they
    belong to the disk whose chain they are in)."""
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd
    disks = []
    for disk in root.findall("devices/disk"):
        src = disk.find("source")
        target = disk.find("target")
        alias = disk.find("alias")
        driver = disk.find("driver")
        path = None
        if src is not None:
            path = src.get("file") if disk.get("type", "file") == "file" else src.get("dev")
        disks.append(
            DiskSource(
                target="" if target is None else target.get("dev", ""),
                kind=disk.get("type", "file"),
                path=path,
                readonly=disk.find("readonly") is not None,
                empty=src is None or not src.attrib,
                pool=None if src is None else src.get("pool"),
                volume=None if src is None else src.get("volume"),
                alias=None if alias is None else alias.get("name"),
                format=None if driver is None else driver.get("type"),
            )
        )
    return disks


def guest_agent_state(xml: str) -> str:
    """``connected`` or ``disconnected`` (the agent's channel as libvirt sees it: a
    stopped VM's is ``disconnected``), or ``none`` when the domain has no agent channel
    (a VM defined outside NovaCron, or by a release before it had one)."""
    dom = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd
    for channel in dom.findall("devices/channel"):
        target = channel.find("target")
        if target is not None and target.get("name") == GUEST_AGENT_CHANNEL:
            return "connected" if target.get("state") == "connected" else "disconnected"
    return "none"


@dataclass(frozen=True)
class InterfaceDevice:
    """A NIC of a domain as libvirt describes it."""

    mac: str  # "" if the XML names none
    device: str  # the host side's device (``vnet3``); "" until libvirt has made one
    kind: str  # libvirt's interface type: bridge, network, ethernet, ...
    alias: str | None = None  # a running domain's name for the device (``net0``)


def parse_interfaces(xml: str) -> list[InterfaceDevice]:
    """Every ``<interface>`` of the domain, in order."""
    root = ET.fromstring(xml)  # noqa: S314 - XML produced by libvirtd
    found = []
    for iface in root.findall("devices/interface"):
        mac = iface.find("mac")
        target = iface.find("target")
        alias = iface.find("alias")
        found.append(
            InterfaceDevice(
                mac="" if mac is None else mac.get("address", "").lower(),
                device="" if target is None else target.get("dev", ""),
                kind=iface.get("type", ""),
                alias=None if alias is None else alias.get("name"),
            )
        )
    return found
