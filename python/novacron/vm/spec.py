"""The normalised, validated form of a ``vm.create`` request."""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from novacron.errors import InvalidParams
from novacron.net.nic import MAX_NICS, NicSpec, check_unique, parse_nic, stored_nic
from novacron.rpc.params import Params, check_int, check_name, check_path, check_text

MAX_VCPUS = 512
MAX_MEMORY_MIB = 16 * 1024 * 1024
MAX_DISKS = 16
MAX_DISK_GIB = 64 * 1024
DISK_FORMATS = ("qcow2", "raw")
CPU_POLICIES = ("shared", "dedicated")
MEMORY_POLICIES = ("strict", "preferred", "interleave")
HUGEPAGE_SIZES_KIB = (2048, 1048576)
# what the daemon does when it finds the VM shut off while it should run (vm/restarts.py)
RESTART_POLICIES = ("on-failure", "never")
MAX_DISK_LIMIT = 10**15  # bytes or operations a second (QEMU's own bound for a throttle)


def disk_target(index: int) -> str:
    """``vda``, ``vdb``, ... ``vdz``, ``vdaa``: virtio disk names."""
    letters = ""
    index += 1
    while index:
        index, rem = divmod(index - 1, 26)
        letters = chr(ord("a") + rem) + letters
    return "vd" + letters


@dataclass(frozen=True)
class DiskLimits:
    """How fast the guest may read and write a disk, a second (0: no limit), as QEMU
    throttles it (libvirt's ``<iotune>``)."""

    read_bytes_per_s: int = 0
    write_bytes_per_s: int = 0
    read_iops: int = 0
    write_iops: int = 0

    def to_dict(self) -> dict[str, int]:
        """The limits set (no key for one that is not)."""
        return {k: v for k, v in asdict(self).items() if v}

    @classmethod
    def of(cls, values: dict[str, int]) -> DiskLimits | None:
        """The limits ``values`` names; None when it sets none."""
        limits = cls(**values)
        return limits if limits.to_dict() else None


DISK_LIMIT_KEYS = tuple(f.name for f in fields(DiskLimits))


@dataclass(frozen=True)
class DiskSpec:
    """A new volume of ``size_gib`` in the daemon's pool (empty, or a copy of the base
    ``image``), or an existing image ``path``."""

    size_gib: int | None = None
    path: str | None = None
    format: str = "qcow2"
    # the base image a new volume is copied from: for its making only, never stored (a
    # volume so made is like any other; it needs neither the base nor a newer release)
    image: str | None = None
    # the guest's name for it; None: by its position (the first disk vda, the next vdb, ...).
    # Set when it differs from that: a disk attached where one was detached before
    target: str | None = None
    limits: DiskLimits | None = None  # None: unthrottled

    def to_dict(self) -> dict[str, Any]:
        """As stored: ``target`` and ``limits`` only when set (a spec without them stays
        readable by releases before them)."""
        doc: dict[str, Any] = {"size_gib": self.size_gib, "path": self.path, "format": self.format}
        # (no image: see above)
        if self.target is not None:
            doc["target"] = self.target
        if self.limits is not None:
            doc["limits"] = self.limits.to_dict()
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> DiskSpec:
        limits = doc.get("limits")
        return cls(**{**doc, "limits": None if limits is None else DiskLimits.of(limits)})

    @property
    def managed(self) -> bool:
        """True when the daemon created the volume (and deletes it with the VM)."""
        return self.size_gib is not None or self.image is not None


@dataclass(frozen=True)
class VmSpec:
    name: str
    vcpus: int
    memory_mib: int
    tenant: str = "default"
    kernel: str | None = None
    initrd: str | None = None
    cmdline: str | None = None
    disks: tuple[DiskSpec, ...] = field(default_factory=tuple)
    cpu_policy: str = "shared"
    memory_policy: str = "strict"
    hugepage_kib: int | None = None
    nics: tuple[NicSpec, ...] = field(default_factory=tuple)
    restart: str = "on-failure"
    max_vcpus: int | None = None
    max_memory_mib: int | None = None

    @property
    def vcpu_slots(self) -> int:
        """The vCPUs the VM may have while it runs (``max_vcpus``, else ``vcpus``): what
        its placement reserves and its tenant's quota counts."""
        return self.max_vcpus or self.vcpus

    @property
    def memory_ceiling_mib(self) -> int:
        """The memory the VM may have while it runs (``max_memory_mib``, else
        ``memory_mib``): what it boots with before its balloon takes the rest, what its
        placement reserves and its tenant's quota counts."""
        return self.max_memory_mib or self.memory_mib

    def disk_targets(self) -> list[str]:
        """Each disk's device name in the guest, in order."""
        return [d.target or disk_target(i) for i, d in enumerate(self.disks)]

    def named_disks(self) -> list[DiskSpec]:
        """The disks, each with its device name set (as :meth:`with_disks` takes them)."""
        return [replace(d, target=t) for d, t in zip(self.disks, self.disk_targets(), strict=True)]

    def with_disks(self, disks: list[DiskSpec]) -> VmSpec:
        """This spec with ``disks`` (each with its target set), targets written only where
        they differ from the position's (a spec without any stays readable by releases
        before attachable disks)."""
        kept = []
        for i, disk in enumerate(disks):
            assert disk.target is not None
            positional = disk.target == disk_target(i)
            kept.append(replace(disk, target=None if positional else disk.target))
        return replace(self, disks=tuple(kept))

    def to_dict(self) -> dict[str, Any]:
        doc = asdict(self)
        doc["disks"] = [d.to_dict() for d in self.disks]
        doc["nics"] = [n.to_dict() for n in self.nics]
        if self.restart == "on-failure":
            # the default goes unwritten: a release before restart policies refuses a spec
            # key it does not know, so a VM with the default can still migrate to one
            del doc["restart"]
        for key in ("max_vcpus", "max_memory_mib"):
            if doc[key] is None:
                del doc[key]  # unwritten unless set, for the same reason
        return doc

    @classmethod
    def from_dict(cls, doc: dict[str, Any]) -> VmSpec:
        disks = tuple(DiskSpec.from_dict(d) for d in doc.get("disks", []))
        nics = tuple(NicSpec.from_dict(n) for n in doc.get("nics", []))
        return cls(**{**doc, "disks": disks, "nics": nics})


def parse_disk(what: str, raw: Any) -> DiskSpec:
    """One disk of ``vm.create`` (``what``: its name in errors) or of ``vm.disk.attach``."""
    if not isinstance(raw, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    unknown = set(raw) - {"size_gib", "path", "image", "format", "limits"}
    if unknown:
        raise InvalidParams(f"{what}: unknown key(s) {sorted(map(str, unknown))}", {"param": what})
    size, path, image = raw.get("size_gib"), raw.get("path"), raw.get("image")
    if path is not None and (size is not None or image is not None):
        raise InvalidParams(f"{what}: path goes with neither size_gib nor image", {"param": what})
    if size is None and path is None and image is None:
        raise InvalidParams(f"{what} needs size_gib, image or path", {"param": what})
    fmt = raw.get("format", "qcow2")
    if fmt not in DISK_FORMATS:
        raise InvalidParams(f"{what}.format must be one of {DISK_FORMATS}", {"param": what})
    limits = None
    if raw.get("limits") is not None:
        limits = DiskLimits.of(parse_disk_limits(f"{what}.limits", raw["limits"]))
    size_gib = None if size is None else check_int(size, f"{what}.size_gib", 1, MAX_DISK_GIB)
    if image is not None:
        # the format is the image's (checked against it when it is opened): kept only
        # when given, and the size, when not given, is the image's own
        given = raw.get("format")
        return DiskSpec(
            size_gib=size_gib,
            format=fmt if given is not None else "",
            image=check_path(image, f"{what}.image"),
            limits=limits,
        )
    if size_gib is not None:
        return DiskSpec(size_gib=size_gib, format=fmt, limits=limits)
    return DiskSpec(path=check_path(path, f"{what}.path"), format=fmt, limits=limits)


def parse_disk_limits(what: str, raw: Any) -> dict[str, int]:
    """A map of disk limits (``what``: its name in errors): any of ``read_bytes_per_s``,
    ``write_bytes_per_s``, ``read_iops``, ``write_iops``, each 0 (none) to 10^15."""
    if not isinstance(raw, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    unknown = set(raw) - set(DISK_LIMIT_KEYS)
    if unknown:
        raise InvalidParams(
            f"{what}: unknown key(s) {sorted(map(str, unknown))} (known: "
            f"{', '.join(DISK_LIMIT_KEYS)})",
            {"param": what},
        )
    return {k: check_int(v, f"{what}.{k}", 0, MAX_DISK_LIMIT) for k, v in raw.items()}


def _hugepages(p: Params) -> int | None:
    value = p.integer("hugepage_kib", 0, HUGEPAGE_SIZES_KIB[-1], default=0)
    if value == 0:
        return None
    if value not in HUGEPAGE_SIZES_KIB:
        raise InvalidParams(
            f"hugepage_kib must be one of {HUGEPAGE_SIZES_KIB} (or 0 for normal pages)",
            {"param": "hugepage_kib"},
        )
    return value


def parse_create(p: Params) -> tuple[VmSpec, bool]:
    """Reads ``vm.create`` arguments; returns the spec and whether to start it."""
    spec = VmSpec(
        name=p.name("name"),
        vcpus=p.integer("vcpus", 1, MAX_VCPUS, default=1),
        memory_mib=p.integer("memory_mib", 16, MAX_MEMORY_MIB, default=512),
        tenant=p.name("tenant", default="default"),
        kernel=p.opt_path("kernel"),
        initrd=p.opt_path("initrd"),
        cmdline=p.opt_text("cmdline", max_len=2048),
        disks=tuple(
            parse_disk(f"disks[{i}]", d) for i, d in enumerate(p.array("disks", MAX_DISKS))
        ),
        cpu_policy=p.choice("cpu_policy", CPU_POLICIES, "shared"),
        memory_policy=p.choice("memory_policy", MEMORY_POLICIES, "strict"),
        hugepage_kib=_hugepages(p),
        nics=tuple(parse_nic(n, f"nics[{i}]") for i, n in enumerate(p.array("nics", MAX_NICS))),
        restart=p.choice("restart", RESTART_POLICIES, "on-failure"),
        max_vcpus=p.integer("max_vcpus", 1, MAX_VCPUS, default=0) or None,
        max_memory_mib=p.integer("max_memory_mib", 16, MAX_MEMORY_MIB, default=0) or None,
    )
    spec = checked_room(spec)
    if spec.max_vcpus == spec.vcpus:  # no room to plug any: as if not given
        spec = replace(spec, max_vcpus=None)
    if spec.max_memory_mib == spec.memory_mib:
        spec = replace(spec, max_memory_mib=None)
    check_unique(spec.nics)
    start = p.flag("start")
    p.done()
    check_hugepages(spec)
    if spec.kernel is None and (spec.initrd is not None or spec.cmdline is not None):
        raise InvalidParams(
            "initrd and cmdline need kernel (direct kernel boot)", {"param": "kernel"}
        )
    return spec, start


def checked_room(spec: VmSpec) -> VmSpec:
    """``spec``, or ``invalid_params`` when its ``max_vcpus`` is below its ``vcpus``, its
    ``max_memory_mib`` below its ``memory_mib``, or memory on hugepages has room (a
    balloon cannot give hugepages back)."""
    for most, now in (("max_vcpus", "vcpus"), ("max_memory_mib", "memory_mib")):
        ceiling, value = getattr(spec, most), getattr(spec, now)
        if ceiling is not None and ceiling < value:
            raise InvalidParams(
                f"{most} ({ceiling}) is below {now} ({value}): raise it too (while the VM is"
                " stopped)",
                {"param": most},
            )
    if spec.hugepage_kib and spec.memory_ceiling_mib > spec.memory_mib:
        raise InvalidParams(
            "memory on hugepages has no room to grow or shrink (max_memory_mib)",
            {"param": "max_memory_mib"},
        )
    return spec


def check_hugepages(spec: VmSpec) -> None:
    """Memory backed by hugepages must be a whole number of them."""
    if spec.hugepage_kib and (spec.memory_mib * 1024) % spec.hugepage_kib:
        raise InvalidParams(
            f"memory_mib must be a whole number of {spec.hugepage_kib} KiB hugepages",
            {"param": "memory_mib"},
        )


TARGET_RE = re.compile(r"vd[a-z]{1,3}")


def stored_spec(doc: Any, what: str = "spec") -> VmSpec:
    """A spec as stored (:meth:`VmSpec.to_dict`'s form) that came from elsewhere — another
    node's ``migration.prepare``, a domain's metadata adopted without a record — checked
    as strictly as ``vm.create`` checks a request: every key known, every value of its
    type and range (``invalid_params`` naming ``what.key`` otherwise; such a spec once
    reached placement and XML building and failed there as an internal error)."""
    if not isinstance(doc, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    known = {f.name for f in fields(VmSpec)}
    unknown = set(doc) - known
    if unknown or not {"name", "vcpus", "memory_mib"} <= set(doc):
        raise InvalidParams(
            f"{what}: unknown key(s) {sorted(map(str, unknown))} or name, vcpus or memory_mib"
            " missing",
            {"param": what},
        )

    def get(key: str, check: Any, *args: Any) -> Any:
        value = doc.get(key)
        return None if value is None else check(value, f"{what}.{key}", *args)

    def one_of(value: Any, at: str, choices: tuple[Any, ...]) -> Any:
        if value not in choices:
            raise InvalidParams(f"{at} must be one of {choices}", {"param": at})
        return value

    disks, nics = doc.get("disks", []), doc.get("nics", [])
    for key, items, most in (("disks", disks, MAX_DISKS), ("nics", nics, MAX_NICS)):
        if not isinstance(items, list) or len(items) > most:
            raise InvalidParams(
                f"{what}.{key} must be a list of at most {most}", {"param": f"{what}.{key}"}
            )
    spec = VmSpec(
        name=check_name(doc["name"], f"{what}.name"),
        vcpus=check_int(doc["vcpus"], f"{what}.vcpus", 1, MAX_VCPUS),
        memory_mib=check_int(doc["memory_mib"], f"{what}.memory_mib", 16, MAX_MEMORY_MIB),
        tenant=check_name(doc.get("tenant", "default"), f"{what}.tenant"),
        kernel=get("kernel", check_path),
        initrd=get("initrd", check_path),
        cmdline=get("cmdline", check_text, 2048),
        disks=tuple(_stored_disk(d, f"{what}.disks[{i}]") for i, d in enumerate(disks)),
        cpu_policy=one_of(doc.get("cpu_policy", "shared"), f"{what}.cpu_policy", CPU_POLICIES),
        memory_policy=one_of(
            doc.get("memory_policy", "strict"), f"{what}.memory_policy", MEMORY_POLICIES
        ),
        hugepage_kib=get("hugepage_kib", one_of, HUGEPAGE_SIZES_KIB),
        nics=tuple(stored_nic(n, f"{what}.nics[{i}]") for i, n in enumerate(nics)),
        restart=one_of(doc.get("restart", "on-failure"), f"{what}.restart", RESTART_POLICIES),
        max_vcpus=get("max_vcpus", check_int, 1, MAX_VCPUS),
        max_memory_mib=get("max_memory_mib", check_int, 16, MAX_MEMORY_MIB),
    )
    targets = spec.disk_targets()
    if len(set(targets)) != len(targets):
        raise InvalidParams(f"{what}: two disks have the same target", {"param": what})
    check_unique(spec.nics)
    check_hugepages(checked_room(spec))
    return spec


def _stored_disk(raw: Any, what: str) -> DiskSpec:
    if not isinstance(raw, dict):
        raise InvalidParams(f"{what} must be a map", {"param": what})
    unknown = set(raw) - {"size_gib", "path", "format", "target", "limits"}
    size, path = raw.get("size_gib"), raw.get("path")
    if unknown or (size is None) == (path is None):
        raise InvalidParams(
            f"{what}: unknown key(s) {sorted(map(str, unknown))}, or not one of size_gib and path",
            {"param": what},
        )
    fmt = raw.get("format")
    if fmt not in DISK_FORMATS:
        raise InvalidParams(f"{what}.format must be one of {DISK_FORMATS}", {"param": what})
    target = raw.get("target")
    if target is not None and not (isinstance(target, str) and TARGET_RE.fullmatch(target)):
        raise InvalidParams(f"{what}.target must be a virtio disk name (vdb)", {"param": what})
    limits = raw.get("limits")
    return DiskSpec(
        size_gib=None if size is None else check_int(size, f"{what}.size_gib", 1, MAX_DISK_GIB),
        path=None if path is None else check_path(path, f"{what}.path"),
        format=fmt,
        target=target,
        limits=None
        if limits is None
        else DiskLimits.of(parse_disk_limits(f"{what}.limits", limits)),
    )
