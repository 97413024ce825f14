"""The libvirt calls of a migration (blocking; run on worker threads).

libvirt drives the migration peer to peer: the source libvirtd talks to the
destination's (``dest_uri``) to define, start and finish the incoming domain, while
QEMU's stream goes where ``migrate_uri`` points (``unix://PATH``: the source daemon
listens there, libvirtd connects); the destination QEMU listens at the same PATH on
its host (:mod:`~novacron.migration.qemu_socket`). A stopped VM moves offline: libvirt
defines it on the destination and undefines it here, and no QEMU runs on either side.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import libvirt

from novacron import errors
from novacron.migration.shared_storage import UNSAFE_HINT
from novacron.vm.driver import UNDEFINE_FLAGS, Hypervisor
from novacron.vm.libvirt_errors import libvirt_errors

FLAGS = (
    libvirt.VIR_MIGRATE_LIVE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
    | libvirt.VIR_MIGRATE_ABORT_ON_ERROR
)

# a stopped VM: its definition moves (the disks are on storage both nodes reach)
OFFLINE_FLAGS = (
    libvirt.VIR_MIGRATE_OFFLINE
    | libvirt.VIR_MIGRATE_PEER2PEER
    | libvirt.VIR_MIGRATE_PERSIST_DEST
    | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
)


@dataclass(frozen=True)
class MigrationCall:
    name: str
    dest_uri: str  # the destination libvirtd
    migrate_uri: str  # unix:///run/novacron/migration/<name>/qemu.sock
    dest_xml: str
    bandwidth_mib_s: int
    auto_converge: bool
    shared_storage: bool = False  # every disk on declared shared storage: skip libvirt's check
    copy_disks: tuple[str, ...] = ()  # disks copied over NBD (in the node's pool)
    disks_uri: str | None = None  # unix:///run/novacron/migration/<name>/nbd.sock

    def params(self) -> dict[str, Any]:
        params: dict[str, Any] = {
            libvirt.VIR_MIGRATE_PARAM_URI: self.migrate_uri,
            libvirt.VIR_MIGRATE_PARAM_DEST_XML: self.dest_xml,
            libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: self.dest_xml,
        }
        if self.bandwidth_mib_s:
            params[libvirt.VIR_MIGRATE_PARAM_BANDWIDTH] = self.bandwidth_mib_s
        if self.copy_disks:
            params[libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS] = list(self.copy_disks)
            params[libvirt.VIR_MIGRATE_PARAM_DISKS_URI] = self.disks_uri
        return params

    def flags(self) -> int:
        extra: int = libvirt.VIR_MIGRATE_AUTO_CONVERGE if self.auto_converge else 0
        if self.shared_storage:
            extra |= libvirt.VIR_MIGRATE_UNSAFE
        if self.copy_disks:
            extra |= libvirt.VIR_MIGRATE_NON_SHARED_DISK
        return int(FLAGS | extra)


def migratable_xml(hv: Hypervisor, name: str) -> str:
    with libvirt_errors():
        text: str = hv.domain(name).XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE)
    return text


def migrate(hv: Hypervisor, call: MigrationCall) -> None:
    """Runs the whole migration; returns when libvirt reports success (the VM runs on
    the destination and is undefined here), raises otherwise (it runs here)."""
    dom = hv.domain(call.name)
    try:
        with libvirt_errors():
            dom.migrateToURI3(call.dest_uri, call.params(), call.flags())
    except errors.NovaCronError as exc:
        if storage_refusal(exc):
            raise type(exc)(exc.message + UNSAFE_HINT, exc.details) from None
        why = failed_job_message(dom) if cause_unknown(exc) else ""
        if not why:
            raise
        raise type(exc)(f"{exc.message}; the migration job: {why}", exc.details) from None


def migrate_offline(hv: Hypervisor, name: str, dest_uri: str, dest_xml: str) -> None:
    """Moves a stopped VM's definition to the destination's libvirtd (``dest_xml``, the
    destination's retargeted XML, becomes its persistent definition there) and undefines
    it here; raises when libvirt did not (then it is still defined here, and maybe, when
    only the last step failed, there too: the caller asks the destination)."""
    params = {
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: dest_xml,
    }
    with libvirt_errors():
        hv.domain(name).migrateToURI3(dest_uri, params, OFFLINE_FLAGS)


# what libvirt reports when a call failed without saying why (virErrorGenericFailure)
CAUSE_UNKNOWN = "An error occurred, but the cause is unknown"


def cause_unknown(exc: errors.NovaCronError) -> bool:
    """libvirt's own "no cause" failure: the one a kept job reason is added to (another
    message names its cause, and the kept reason may be an earlier job's)."""
    internal = exc.details.get("libvirt_code") == libvirt.VIR_ERR_INTERNAL_ERROR
    return internal and exc.message.endswith(CAUSE_UNKNOWN)


def failed_job_message(dom: libvirt.virDomain) -> str:
    """What libvirt kept of the last job's failure (QEMU's own reason, when it had one):
    some failures of a peer-to-peer migration reach the caller without a cause."""
    try:
        stats: dict[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return ""
    return str(stats.get(libvirt.VIR_DOMAIN_JOB_ERRMSG) or "")


def storage_refusal(exc: errors.NovaCronError) -> bool:
    """Whether libvirt refused because it does not see the disks' storage as shared (its
    other "unsafe" refusal, of a disk cache mode, is not helped by declaring storage)."""
    return (
        exc.details.get("libvirt_code") == libvirt.VIR_ERR_MIGRATE_UNSAFE
        and "shared storage" in exc.message
    )


def job_stats(hv: Hypervisor, name: str, completed: bool = False) -> dict[str, Any]:
    """The running (or last completed) job's statistics; empty when there is none."""
    dom = hv.lookup(name)
    if dom is None:
        return {}
    flags = libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED if completed else 0
    try:
        stats: dict[str, Any] = dom.jobStats(flags)
    except libvirt.libvirtError:
        return {}
    if not completed and stats.get("type") == libvirt.VIR_DOMAIN_JOB_NONE:
        return {}
    return stats


def abort(hv: Hypervisor, name: str) -> bool:
    """Aborts the domain's running job; False when there was none to abort."""
    dom = hv.lookup(name)
    if dom is None:
        return False
    try:
        dom.abortJob()
    except libvirt.libvirtError:
        return False
    return True


def set_max_downtime(hv: Hypervisor, name: str, downtime_ms: int) -> None:
    with libvirt_errors():
        hv.domain(name).migrateSetMaxDowntime(downtime_ms, 0)


# a persistent domain paused for one of these reasons is not received yet: libvirt makes
# the incoming domain persistent in its Finish step before QEMU has read the whole
# stream and before it starts the guest's CPUs (UNKNOWN: nothing to go by)
STILL_ARRIVING = frozenset(
    {
        libvirt.VIR_DOMAIN_PAUSED_UNKNOWN,
        libvirt.VIR_DOMAIN_PAUSED_MIGRATION,
        libvirt.VIR_DOMAIN_PAUSED_STARTING_UP,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY,
        libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED,
    }
)


def arrival(persistent: bool, state: int, reason: int) -> str:
    """What an incoming domain's libvirt state says of its migration: ``arriving`` (not
    finished: transient, or paused while libvirt finishes), ``failed``, or else the
    desired state it is recorded with: ``paused`` (libvirt finished and kept it paused,
    as it was on the source: paused by the user's word) or ``running`` (it runs; or it
    ran here and something paused it since: an I/O error, a watchdog, a guest panic; the
    record then shows the drift).

    ``failed``: persistent and shut off because it failed (``SHUTOFF_FAILED``). That is
    what libvirt leaves when its Finish step fails after making the domain persistent
    (waiting for QEMU, refreshing devices, or starting the CPUs): it stops QEMU and
    keeps the definition, and the source, told of the failure, resumes the VM there.
    Any other persistent domain that is not running stays ``arriving``."""
    if not persistent:
        return "arriving"
    if state == libvirt.VIR_DOMAIN_RUNNING:
        return "running"
    if state == libvirt.VIR_DOMAIN_PAUSED:
        if reason == libvirt.VIR_DOMAIN_PAUSED_USER:
            return "paused"
        if reason not in STILL_ARRIVING:
            return "running"
    if state == libvirt.VIR_DOMAIN_SHUTOFF and reason == libvirt.VIR_DOMAIN_SHUTOFF_FAILED:
        return "failed"
    return "arriving"


def remove_failed_arrival(hv: Hypervisor, name: str, uuid: str) -> bool:
    """Undefines what a failed Finish left here (:func:`arrival`'s ``failed``): the
    domain ``name`` if it is the migration's (its UUID is ``uuid``) and libvirt still
    says ``failed`` of it (never a domain that runs, or was started again since).
    True when it was removed."""
    dom = hv.lookup(name)
    if dom is None:
        return False
    try:
        if dom.UUIDString() != uuid:
            return False
        state, reason = dom.state()
        if arrival(dom.isPersistent() == 1, state, reason) != "failed":
            return False
        dom.undefine()
    except libvirt.libvirtError:
        return False  # changed or vanished meanwhile: left as it is
    return True


def offline_arrival(hv: Hypervisor, name: str, uuid: str) -> str:
    """What libvirt has here of a stopped VM moving in offline: ``absent`` (nothing, or
    a domain of that name that is not the migration's), ``arriving`` (libvirt's
    transient placeholder while it prepares), ``stopped`` once it is defined here, or
    what :func:`arrival` says of it when it has been started here since."""
    dom = hv.lookup(name)
    if dom is None:
        return "absent"
    try:
        if dom.UUIDString() != uuid:
            return "absent"
        persistent = dom.isPersistent() == 1
        active = dom.isActive() == 1
        state, reason = dom.state()
    except libvirt.libvirtError:
        return "absent"  # vanished between the lookup and the questions
    if not persistent:
        return "arriving"
    return arrival(persistent, state, reason) if active else "stopped"


def remove_offline_arrival(hv: Hypervisor, name: str, uuid: str) -> bool:
    """Undefines the stopped VM an offline migration that failed left here (libvirt
    defined it, then failed to undefine it on the source): only the migration's domain
    (``uuid``), and only while it is not running. True when it was removed."""
    dom = hv.lookup(name)
    if dom is None:
        return False
    try:
        if dom.UUIDString() != uuid or dom.isActive() == 1:
            return False
        dom.undefineFlags(UNDEFINE_FLAGS)
    except libvirt.libvirtError:
        return False
    return True


def incoming_state(hv: Hypervisor, name: str) -> str:
    """``absent``, or :func:`arrival`'s word on the domain libvirt has there:
    ``arriving``, ``failed``, or ``running``/``paused`` once it has arrived."""
    dom = hv.lookup(name)
    if dom is None:
        return "absent"
    try:
        persistent = dom.isPersistent() == 1
        state, reason = dom.state()
    except libvirt.libvirtError:
        return "absent"  # vanished between the lookup and the question
    return arrival(persistent, state, reason)
