"""Every libvirt call NovaCron makes, in one place.

All methods are blocking and run on worker threads (see :mod:`novacron.blocking`);
libvirt's own errors are translated into NovaCron error codes by :func:`translate`.
"""

from __future__ import annotations

import logging
import threading
import xml.etree.ElementTree as ET
from contextlib import suppress
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import libvirt

from novacron import errors
from novacron.logs import kv
from novacron.placement.topology import HostNode, parse_capabilities, with_sysfs
from novacron.vm import cpu_models, domain_xml, states, storage_room, volume_stream
from novacron.vm.libvirt_errors import libvirt_errors, translate
from novacron.vm.volume_stream import VolumeReader, VolumeWriter

log = logging.getLogger("novacron.vm.driver")

UNDEFINE_FLAGS = (
    libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA | libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
)
DISK_ERRORS = {
    libvirt.VIR_DOMAIN_DISK_ERROR_UNSPEC: "unspecified",
    libvirt.VIR_DOMAIN_DISK_ERROR_NO_SPACE: "no_space",
}
# the qcow2 version new volumes get, as libvirt names it (1.1: version 3)
QCOW2_COMPAT = "1.1"


def _quiet(_ctx: Any, _err: Any) -> None:
    """libvirt prints every error to stderr by default; NovaCron logs them itself."""


@dataclass(frozen=True)
class RuntimeState:
    state: str
    reason: str


# where the system QEMU driver (libvirtd or virtqemud) keeps a running domain's status
QEMU_STATUS_DIR = Path("/run/libvirt/qemu")


def status_pid(path: Path) -> int | None:
    """The ``pid`` of a libvirt status file (``<domstatus ... pid='N'>``); ``None`` if
    the file is not there or says no pid."""
    try:
        root = ET.fromstring(path.read_bytes())  # noqa: S314 - libvirtd's, root-only
    except (OSError, ET.ParseError):
        return None
    pid = root.get("pid", "") if root.tag == "domstatus" else ""
    return int(pid) if pid.isdigit() and int(pid) > 0 else None


class Hypervisor:
    """One libvirt connection, reopened when it drops."""

    def __init__(self, uri: str, domain_type: str = "auto") -> None:
        self.uri = uri
        self._domain_type = domain_type
        self._conn: libvirt.virConnect | None = None
        self._lock = threading.Lock()
        self._caps: ET.Element | None = None  # host capabilities never change while we run
        libvirt.registerErrorHandler(_quiet, None)

    # -- connection ------------------------------------------------------------------

    @property
    def conn(self) -> libvirt.virConnect:
        with self._lock:
            if self._conn is not None:
                try:
                    if self._conn.isAlive():
                        return self._conn
                except libvirt.libvirtError:
                    pass
                log.warning("libvirt.reconnect", extra=kv(uri=self.uri))
            try:
                self._conn = libvirt.open(self.uri)
            except libvirt.libvirtError as exc:
                raise errors.Unavailable(
                    f"cannot connect to {self.uri}: {exc.get_error_message()}"
                ) from None
            return self._conn

    def close(self) -> None:
        with self._lock:
            if self._conn is not None:
                with suppress(libvirt.libvirtError):
                    self._conn.close()
                self._conn = None

    @property
    def is_test_driver(self) -> bool:
        return self.uri.startswith("test:")

    @property
    def is_local(self) -> bool:
        """True when libvirt manages this machine (no host in the URI)."""
        return urlsplit(self.uri).netloc == ""

    def qemu_pid(self, name: str) -> int | None:
        """The pid of the QEMU process that runs domain ``name``, from libvirt's own record
        of it (the QEMU driver's status file, root's alone); ``None`` where there is none
        to read: not the local system QEMU driver, or the domain is not running."""
        parts = urlsplit(self.uri)
        if not (self.is_local and parts.scheme.startswith("qemu") and parts.path == "/system"):
            return None
        return status_pid(QEMU_STATUS_DIR / f"{name}.xml")

    def capabilities(self) -> ET.Element:
        """libvirt's host capabilities, fetched once (the call takes seconds on QEMU)."""
        if self._caps is None:
            with libvirt_errors():
                text = self.conn.getCapabilities()
            self._caps = ET.fromstring(text)  # noqa: S314 - from libvirtd
        return self._caps

    def cpu_model_problem(self, model: str) -> str | None:
        """Why the guest CPU ``model`` (``[hypervisor] cpu_model``) cannot run on this
        host, from libvirt's domain capabilities; None when it can (or libvirt's test
        driver, which has no CPU models, is in use)."""
        if not model or self.is_test_driver:
            return None
        arch = self.capabilities().findtext("host/cpu/arch") or "x86_64"
        with libvirt_errors():
            caps = self.conn.getDomainCapabilities(None, arch, None, self.domain_type(), 0)
        return cpu_models.problem(caps, model)

    def domain_type(self) -> str:
        if self.is_test_driver:
            return "test"
        if self._domain_type != "auto":
            return self._domain_type
        kinds = {d.get("type") for d in self.capabilities().findall("guest/arch/domain")}
        return "kvm" if "kvm" in kinds else "qemu"

    def node_info(self) -> dict[str, Any]:
        with libvirt_errors():
            conn = self.conn
            model, memory_mib, cpus, mhz, nodes, sockets, cores, threads = conn.getInfo()
            version = conn.getVersion()
            hostname = conn.getHostname()
            hv_type = conn.getType()
            lib_version = conn.getLibVersion()
        cells = self.capabilities().findall("host/topology/cells/cell")
        return {
            "hostname": hostname,
            "hypervisor": {
                "uri": self.uri,
                "type": hv_type,
                "version": _version(version),
                "libvirt_version": _version(lib_version),
                "domain_type": self.domain_type(),
            },
            "cpu": {
                "model": model,
                "count": cpus,
                "mhz": mhz,
                "sockets": sockets,
                "cores_per_socket": cores,
                "threads_per_core": threads,
            },
            "memory_mib": memory_mib,
            "numa_nodes": len(cells) or nodes,
        }

    def numa_nodes(self) -> list[HostNode]:
        """The host's NUMA nodes with current free memory and hugepages."""
        with libvirt_errors():
            _model, memory_mib, cpus, *_ = self.conn.getInfo()
        nodes = parse_capabilities(self.capabilities(), cpus, memory_mib)
        if self.is_test_driver:
            return nodes  # its free-memory figures are not meaningful
        if self.is_local:
            return with_sysfs(nodes)
        with libvirt_errors():  # a remote host: libvirt reads its sysfs for us (bytes)
            free = self.conn.getCellsFreeMemory(0, max(n.id for n in nodes) + 1)
        return [
            replace(n, memory_free_mib=free[n.id] // (1024 * 1024)) if n.id < len(free) else n
            for n in nodes
        ]

    # -- domains -----------------------------------------------------------------------

    def lookup(self, name: str) -> libvirt.virDomain | None:
        try:
            return self.conn.lookupByName(name)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return None
            raise translate(exc) from None

    def domain(self, name: str) -> libvirt.virDomain:
        dom = self.lookup(name)
        if dom is None:
            raise errors.NotFound(f"vm {name!r} has no libvirt domain")
        return dom

    def define(self, xml: str) -> str:
        with libvirt_errors():
            dom = self.conn.defineXML(xml)
            uuid: str = dom.UUIDString()
        return uuid

    def undefine(self, name: str) -> None:
        dom = self.lookup(name)
        if dom is None:
            return
        with libvirt_errors():
            if dom.isActive():
                dom.destroy()
            dom.undefineFlags(UNDEFINE_FLAGS)

    def state(self, name: str) -> RuntimeState:
        runtime = self.state_or_none(name)
        if runtime is None:
            raise errors.NotFound(f"vm {name!r} has no libvirt domain")
        return runtime

    def state_or_none(self, name: str) -> RuntimeState | None:
        """Runtime state of one domain, or None when libvirt has no such domain."""
        dom = self.lookup(name)
        if dom is None:
            return None
        with libvirt_errors():
            state, reason = dom.state()
        return RuntimeState(*states.named(state, reason))

    def all_states(self) -> dict[str, RuntimeState]:
        """Runtime state of every domain in one libvirt call."""
        with libvirt_errors():
            stats = self.conn.getAllDomainStats(libvirt.VIR_DOMAIN_STATS_STATE)
            found = {}
            for dom, values in stats:
                state, reason = values.get("state.state", 0), values.get("state.reason", 0)
                found[dom.name()] = RuntimeState(*states.named(state, reason))
        return found

    def managed_domains(self) -> dict[str, str]:
        """Name -> XML of every defined (persistent) domain; the caller filters by
        metadata. Transient domains are left out: an incoming migration's domain is
        transient until libvirt finishes it."""
        flags = libvirt.VIR_CONNECT_LIST_DOMAINS_PERSISTENT
        with libvirt_errors():
            return {d.name(): d.XMLDesc(0) for d in self.conn.listAllDomains(flags)}

    def xml(self, name: str) -> str:
        with libvirt_errors():
            text: str = self.domain(name).XMLDesc(0)
        return text

    def disk_errors(self, name: str) -> dict[str, str]:
        """The disks (by device name) QEMU hit an error on since the guest last ran
        (a VM paused for ``ioerror``): ``no_space`` (the host's file system is full) or
        ``unspecified``."""
        with libvirt_errors():
            found = self.domain(name).diskErrors(0)
        return {
            target: DISK_ERRORS.get(code, "unspecified")
            for target, code in found.items()
            if code != libvirt.VIR_DOMAIN_DISK_ERROR_NONE
        }

    def upgrade_console(self, name: str) -> bool:
        """Defines the domain again with a pty logging to its console file when it was
        defined before consoles were pseudo-terminals (its serial port a log file); a
        running one gets it at its next start, however started. Whether it changed."""
        with libvirt_errors():
            return self._upgrade_console(self.domain(name)) is not None

    def _upgrade_console(self, dom: libvirt.virDomain) -> libvirt.virDomain | None:
        upgraded = domain_xml.with_pty_console(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
        if upgraded is None:
            return None
        dom = self.conn.defineXML(upgraded)
        log.info("vm.console_upgraded", extra=kv(vm=dom.name()))
        return dom

    def add_agent_channel(self, name: str) -> bool:
        """Defines the domain again with the guest agent's port when it has none (defined
        before NovaCron gave every domain one); a running one gets it at its next start.
        Whether it changed."""
        with libvirt_errors():
            dom = self.domain(name)
            added = domain_xml.with_agent_channel(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE))
            if added is None:
                return False
            self.conn.defineXML(added)
        log.info("vm.agent_channel_added", extra=kv(vm=name))
        return True

    def set_disk_discard(self, name: str, discard: str) -> bool:
        """Defines the domain again with ``discard`` on its writable disks when one lacks
        it (``[hypervisor] disk_discard`` changed, or a domain defined before it or
        elsewhere); a running one gets it at its next start. Whether it changed."""
        with libvirt_errors():
            dom = self.domain(name)
            xml = domain_xml.with_disk_discard(
                dom.XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE), discard
            )
            if xml is None:
                return False
            self.conn.defineXML(xml)
        log.info("vm.disk_discard_set", extra=kv(vm=name, discard=discard))
        return True

    def start(self, name: str) -> None:
        """Starts the domain (its console made a pty first: :meth:`upgrade_console`)."""
        with libvirt_errors():
            dom = self.domain(name)
            (self._upgrade_console(dom) or dom).create()

    def shutdown(self, name: str) -> None:
        with libvirt_errors():
            self.domain(name).shutdown()

    def destroy(self, name: str) -> None:
        with libvirt_errors():
            self.domain(name).destroy()

    def suspend(self, name: str) -> None:
        with libvirt_errors():
            self.domain(name).suspend()

    def resume(self, name: str) -> None:
        with libvirt_errors():
            self.domain(name).resume()

    def reboot(self, name: str) -> None:
        with libvirt_errors():
            self.domain(name).reboot(0)

    # -- devices -----------------------------------------------------------------------

    def _device_flags(self, dom: libvirt.virDomain) -> int:
        """The persistent definition always; the running guest too when it runs."""
        flags: int = libvirt.VIR_DOMAIN_AFFECT_CONFIG
        return flags | libvirt.VIR_DOMAIN_AFFECT_LIVE if dom.isActive() else flags

    def attach_device(self, name: str, xml: str) -> None:
        with libvirt_errors():
            dom = self.domain(name)
            dom.attachDeviceFlags(xml, self._device_flags(dom))

    def detach_device(self, name: str, xml: str) -> None:
        with libvirt_errors():
            dom = self.domain(name)
            dom.detachDeviceFlags(xml, self._device_flags(dom))

    def unplug_device(self, name: str, xml: str, alias: str | None = None) -> None:
        """Asks the running guest to release a device (the definition keeps it). By the
        running domain's ``alias`` for it the request only is sent (libvirt returns at
        once); by ``xml`` libvirt first waits a few seconds for the guest. Either way the
        removal may complete later."""
        with libvirt_errors():
            if alias:
                self.domain(name).detachDeviceAlias(alias, libvirt.VIR_DOMAIN_AFFECT_LIVE)
            else:
                self.domain(name).detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_LIVE)

    def forget_device(self, name: str, xml: str) -> None:
        """Takes a device out of the persistent definition only."""
        with libvirt_errors():
            self.domain(name).detachDeviceFlags(xml, libvirt.VIR_DOMAIN_AFFECT_CONFIG)

    def set_metadata(self, name: str, xml: str, namespace: str, prefix: str) -> None:
        with libvirt_errors():
            dom = self.domain(name)
            dom.setMetadata(
                libvirt.VIR_DOMAIN_METADATA_ELEMENT,
                xml,
                prefix,
                namespace,
                self._device_flags(dom),
            )

    # -- snapshots ---------------------------------------------------------------------

    def snapshot_create(self, name: str, snapshot: str, description: str) -> None:
        root = ET.Element("domainsnapshot")
        ET.SubElement(root, "name").text = snapshot
        ET.SubElement(root, "description").text = description
        with libvirt_errors():
            self.domain(name).snapshotCreateXML(ET.tostring(root, encoding="unicode"), 0)

    def snapshot_list(self, name: str) -> list[dict[str, Any]]:
        found = []
        with libvirt_errors():
            for snap in self.domain(name).listAllSnapshots(0):
                doc = ET.fromstring(snap.getXMLDesc(0))  # noqa: S314 - from libvirtd
                found.append(
                    {
                        "name": snap.getName(),
                        "description": doc.findtext("description") or "",
                        "state": doc.findtext("state") or "unknown",
                        "created_at": int(doc.findtext("creationTime") or 0),
                        "current": bool(snap.isCurrent(0)),
                    }
                )
        return sorted(found, key=lambda s: (s["created_at"], s["name"]))

    def _snapshot(self, name: str, snapshot: str) -> libvirt.virDomainSnapshot:
        with libvirt_errors():
            return self.domain(name).snapshotLookupByName(snapshot, 0)

    def snapshot_revert(self, name: str, snapshot: str) -> None:
        snap = self._snapshot(name, snapshot)
        with libvirt_errors():
            self.domain(name).revertToSnapshot(snap, 0)

    def snapshot_delete(self, name: str, snapshot: str) -> None:
        snap = self._snapshot(name, snapshot)
        with libvirt_errors():
            snap.delete(0)

    def snapshot_export(self, name: str) -> list[dict[str, Any]]:
        """Every snapshot's description, parents before their children: ``{"name",
        "xml", "current"}`` (what :meth:`snapshot_redefine` takes)."""
        with libvirt_errors():
            snaps = self.domain(name).listAllSnapshots(libvirt.VIR_DOMAIN_SNAPSHOT_LIST_TOPOLOGICAL)
            return [
                {"name": s.getName(), "xml": s.getXMLDesc(0), "current": bool(s.isCurrent(0))}
                for s in snaps
            ]

    def snapshot_description(self, name: str, snapshot: str) -> tuple[str, bool]:
        """A snapshot's description (``<domainsnapshot>``), and whether it is current."""
        snap = self._snapshot(name, snapshot)
        with libvirt_errors():
            return snap.getXMLDesc(0), bool(snap.isCurrent(0))

    def snapshot_describe_again(self, name: str, xml: str, current: bool) -> None:
        """libvirt replaces the description of an existing snapshot by ``xml`` (its
        images keep the snapshot; libvirt refuses a domain another guest could not run
        from the same saved state)."""
        flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
        if current:
            flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
        with libvirt_errors():
            self.domain(name).snapshotCreateXML(xml, flags)

    def snapshot_forget(self, name: str, snapshots: list[str]) -> None:
        """libvirt forgets the named snapshots' descriptions, children first; the images
        keep the snapshots themselves. ``conflict``, and none forgotten, when the VM has
        a snapshot not named (one made since the names were exported)."""
        dom = self.domain(name)
        with libvirt_errors():
            newer = sorted({s.getName() for s in dom.listAllSnapshots(0)} - set(snapshots))
        if newer:
            raise errors.Conflict(
                f"vm {name!r} has snapshots made after its move began ({', '.join(newer)}); "
                "the move carries only those it found then: try again",
                {"vm": name, "snapshots": newer},
            )
        with libvirt_errors():
            for snapshot in reversed(snapshots):
                dom.snapshotLookupByName(snapshot, 0).delete(
                    libvirt.VIR_DOMAIN_SNAPSHOT_DELETE_METADATA_ONLY
                )

    def snapshot_redefine(self, name: str, snapshots: list[dict[str, Any]]) -> list[dict[str, str]]:
        """libvirt takes back the descriptions of snapshots whose images hold them
        (:meth:`snapshot_export`'s, parents first), the current one marked so; those it
        has already are left alone. The ones it refused: ``{"name", "error"}``."""
        dom = self.domain(name)
        with libvirt_errors():
            have = {s.getName() for s in dom.listAllSnapshots(0)}
        refused = []
        for snap in snapshots:
            if snap["name"] in have:
                continue
            flags = libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_REDEFINE
            if snap["current"]:
                flags |= libvirt.VIR_DOMAIN_SNAPSHOT_CREATE_CURRENT
            try:
                with libvirt_errors():
                    dom.snapshotCreateXML(snap["xml"], flags)
            except errors.NovaCronError as exc:
                refused.append({"name": snap["name"], "error": exc.message})
        return refused

    # -- storage -----------------------------------------------------------------------

    def ensure_pool(self, pool_name: str, directory: Path) -> None:
        with libvirt_errors():
            try:
                pool = self.conn.storagePoolLookupByName(pool_name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_POOL:
                    raise
                root = ET.Element("pool", {"type": "dir"})
                ET.SubElement(root, "name").text = pool_name
                ET.SubElement(ET.SubElement(root, "target"), "path").text = str(directory)
                pool = self.conn.storagePoolDefineXML(ET.tostring(root, encoding="unicode"), 0)
                pool.build(0)
                pool.setAutostart(1)
                log.info("storage.pool_defined", extra=kv(pool=pool_name, path=directory))
            if not pool.isActive():
                pool.create(0)

    def create_volume(
        self, pool_name: str, volume: str, size_gib: int, fmt: str, copy_of: str | None = None
    ) -> str:
        """A new volume in the pool: empty, or a copy of the volume at path ``copy_of``
        (its content, in ``fmt``, at ``size_gib``). Thin: it takes host space as it is
        written (libvirt would allocate a raw volume whole, unless told ``allocation`` 0;
        a copy then skips the source's holes). A qcow2 volume is version 3 (``compat``
        1.1; libvirt would make version 2, whose disks cannot grow once they hold a
        snapshot). A raw volume is copied as its bytes, not by libvirt: libvirt's pool
        takes a file that begins with a qcow2 header for a qcow2 image — a guest writes
        the start of its raw disk too — and its copy (``qemu-img convert``) would read
        the backing file that header names, any file of the host."""
        root = ET.Element("volume")
        ET.SubElement(root, "name").text = volume
        ET.SubElement(root, "capacity", {"unit": "GiB"}).text = str(size_gib)
        ET.SubElement(root, "allocation").text = "0"
        target = ET.SubElement(root, "target")
        ET.SubElement(target, "format", {"type": fmt})
        if fmt == "qcow2":
            ET.SubElement(target, "compat").text = QCOW2_COMPAT
        xml = ET.tostring(root, encoding="unicode")
        with libvirt_errors():
            pool = self.conn.storagePoolLookupByName(pool_name)
            # (libvirt's test driver has no files to probe, and no storage streams)
            by_bytes = copy_of is not None and fmt == "raw" and not self.is_test_driver
            if copy_of is None or by_bytes:
                vol = pool.createXML(xml, 0)
            else:
                vol = pool.createXMLFrom(xml, self.conn.storageVolLookupByPath(copy_of), 0)
            path: str = vol.path()
        if by_bytes:
            assert copy_of is not None
            try:
                volume_stream.copy(self.conn, copy_of, path)
            except BaseException:
                with suppress(libvirt.libvirtError):
                    vol.delete(0)
                raise
        return path

    def grow_volume(self, path: str, size_bytes: int) -> None:
        """A stopped VM's volume to ``size_bytes`` (never smaller: libvirt refuses that)."""
        with libvirt_errors():
            self.conn.storageVolLookupByPath(path).resize(size_bytes, 0)

    def grow_block(self, name: str, target: str, size_bytes: int) -> None:
        """A running (or paused) VM's disk ``target`` to ``size_bytes``: QEMU grows the
        image and tells the guest (virtio's capacity change)."""
        with libvirt_errors():
            self.domain(name).blockResize(target, size_bytes, libvirt.VIR_DOMAIN_BLOCK_RESIZE_BYTES)

    def set_block_limits(self, name: str, target: str, params: dict[str, int]) -> None:
        """A running (or paused) VM's throttle of disk ``target`` (libvirt's iotune
        ``params``; 0 lifts one), in the guest at once and in the definition."""
        live, config = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with libvirt_errors():
            dom = self.domain(name)
            was = dom.blockIoTune(target, live)
            dom.setBlockIoTune(target, params, live)
            try:  # (in two calls: not every driver takes both flags in one)
                dom.setBlockIoTune(target, params, config)
            except libvirt.libvirtError:
                dom.setBlockIoTune(target, {k: was.get(k, 0) for k in params}, live)
                raise

    def defined_size(self, name: str) -> tuple[int, int]:
        """The vCPUs and MiB of memory (its balloon's target) the VM's definition starts
        it with."""
        with libvirt_errors():
            xml = self.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        root = ET.fromstring(xml)  # noqa: S314 - libvirtd's XML
        vcpu, memory = root.find("vcpu"), root.find("currentMemory")
        if vcpu is None or memory is None or memory.get("unit", "KiB") != "KiB":  # as written
            raise errors.Internal(f"vm {name!r}: libvirt's definition has no <vcpu> or memory")
        return int(vcpu.get("current") or vcpu.text or 0), int(memory.text or 0) // 1024

    def set_memory(self, name: str, mib: int) -> None:
        """A running VM's balloon target (up to its ``<memory>``), in the guest and then in
        the definition (the guest's put back if the second fails). The guest's balloon
        driver gives memory back or takes it as it can, after the call."""
        live, config = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with libvirt_errors():
            dom = self.domain(name)
            was = int(dom.info()[2])  # KiB
            dom.setMemoryFlags(mib * 1024, live)
            try:
                dom.setMemoryFlags(mib * 1024, config)
            except libvirt.libvirtError:
                dom.setMemoryFlags(was, live)
                raise

    def plug_vcpus(self, name: str, count: int) -> None:
        """A running VM's vCPUs raised to ``count`` (up to its ``<vcpu>`` maximum): in its
        definition, then plugged into the guest. If that fails, the definition is given
        the number the guest has after all: libvirt can fail after QEMU plugged a vCPU
        (under single-threaded TCG every vCPU reports the same thread, which libvirt's
        check after the plug refuses); when the guest has them all, that is a success."""
        live, config = libvirt.VIR_DOMAIN_AFFECT_LIVE, libvirt.VIR_DOMAIN_AFFECT_CONFIG
        with libvirt_errors():
            dom = self.domain(name)
            dom.setVcpusFlags(count, config)
            try:
                dom.setVcpusFlags(count, live)
            except libvirt.libvirtError as exc:
                now = int(dom.vcpusFlags(live))
                dom.setVcpusFlags(now, config)
                if now != count:
                    raise
                log.warning(
                    "vm.vcpus_plugged_despite_error",
                    extra=kv(vm=name, vcpus=count, libvirt=exc.get_error_message()),
                )

    def delete_volume(self, path: str) -> bool:
        try:
            vol = self.conn.storageVolLookupByPath(path)
            vol.delete(0)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_STORAGE_VOL:
                return False
            raise translate(exc) from None
        return True

    def pool_free_bytes(self, pool_name: str) -> int:
        """The bytes the pool has free for its guests: for a directory pool here, what
        its file system lets any user write (:func:`storage_room.local_free`: not the
        blocks only root may use, which libvirt counts); else libvirt's ``available``,
        after a refresh unless libvirt is building a volume there."""
        with libvirt_errors():
            pool = self.conn.storagePoolLookupByName(pool_name)
            here = None if self.is_test_driver else storage_room.local_free(pool.XMLDesc(0))
            if here is not None:  # (a directory here: no rescan of its volumes needed)
                return here
            _refreshed(pool)
            return int(pool.info()[3])

    def pool_space(self, pool_name: str) -> dict[str, Any]:
        """The pool's file system and what its volumes were promised (after a refresh,
        unless libvirt is building a volume there): ``{"pool", "path", "capacity_bytes",
        "allocation_bytes", "available_bytes", "volumes", "committed_bytes"}``,
        ``committed_bytes`` the sum of the volumes' sizes, which thin volumes may one day
        fill."""
        with libvirt_errors():
            pool = self.conn.storagePoolLookupByName(pool_name)
            _refreshed(pool)
            _state, capacity, allocation, available = pool.info()
            xml = pool.XMLDesc(0)
            path = ET.fromstring(xml).findtext("target/path")  # noqa: S314
            volumes, committed = 0, 0
            for vol in pool.listAllVolumes(0):
                try:
                    committed += _size(vol)
                except libvirt.libvirtError as exc:  # deleted since the listing
                    if exc.get_error_code() != libvirt.VIR_ERR_NO_STORAGE_VOL:
                        raise
                    continue
                volumes += 1
        return {
            "pool": pool_name,
            "path": path,
            "capacity_bytes": int(capacity),
            "allocation_bytes": int(allocation),
            "available_bytes": self._writable(xml, int(available)),
            "volumes": volumes,
            "committed_bytes": committed,
        }

    def _writable(self, pool_xml: str, available: int) -> int:
        """:func:`storage_room.writable`, but on libvirt's test driver, whose pools are
        made up, its figure."""
        return available if self.is_test_driver else storage_room.writable(pool_xml, available)

    def volume_allocation(self, path: str) -> int:
        """The bytes the volume at ``path`` takes on its storage."""
        with libvirt_errors():
            return int(self.conn.storageVolLookupByPath(path).info()[2])

    def refresh_pool(self, pool_name: str) -> bool:
        """libvirt looks at the pool's files again (a volume written by upload: its format
        and sizes as the file now has them); False when it would not, building a volume
        there (see :func:`_refreshed`: try again)."""
        with libvirt_errors():
            return _refreshed(self.conn.storagePoolLookupByName(pool_name))

    def volume_reader(self, path: str) -> VolumeReader:
        """The file of the volume at ``path``, read through libvirt (sparse)."""
        return VolumeReader(self.conn, path)

    def volume_writer(self, path: str) -> VolumeWriter:
        """The file of the (new, empty) volume at ``path``, written through libvirt."""
        return VolumeWriter(self.conn, path)

    def pool_volumes(self, pool_name: str) -> list[str]:
        with libvirt_errors():
            pool = self.conn.storagePoolLookupByName(pool_name)
            _refreshed(pool)
            return [v.path() for v in pool.listAllVolumes(0)]


def _size(vol: libvirt.virStorageVol) -> int:
    """The disk size a volume promises its guest. libvirt's pool reads a qcow2 image's
    from its header — and takes any file that begins with one for a qcow2 image, among
    them a raw volume whose guest wrote such a header, any size it likes, at its start.
    A volume the daemon made raw (``NAME-vdX.raw``) is as large as its file."""
    if vol.name().endswith(".raw"):
        return int(vol.infoFlags(libvirt.VIR_STORAGE_VOL_GET_PHYSICAL)[2])
    return int(vol.info()[1])


def _refreshed(pool: libvirt.virStoragePool) -> bool:
    """Refreshes ``pool``; False when libvirt refuses because it is building a volume
    there (a copy made by ``createXMLFrom``, ``qemu-img create``: "has asynchronous jobs
    running") — its figures and volumes are then as libvirt last saw them."""
    try:
        pool.refresh(0)
    except libvirt.libvirtError as exc:
        busy = exc.get_error_code() == libvirt.VIR_ERR_INTERNAL_ERROR and (
            "asynchronous jobs" in (exc.get_error_message() or "")
        )
        if not busy:
            raise
        return False
    return True


def _version(number: int) -> str:
    major, rest = divmod(number, 1_000_000)
    minor, micro = divmod(rest, 1000)
    return f"{major}.{minor}.{micro}"
