from __future__ import annotations

from dataclasses import replace
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.errors import InvalidParams
from novacron.rpc.params import Params
from novacron.vm.spec import (
    DISK_LIMIT_KEYS,
    MAX_DISK_LIMIT,
    DiskLimits,
    DiskSpec,
    VmSpec,
    parse_create,
    parse_disk,
    stored_spec,
)


def create(**args: object) -> tuple[VmSpec, bool]:
    return parse_create(Params(dict(args)))


def test_minimal_and_defaults() -> None:
    spec, start = create(name="a")
    assert (spec.vcpus, spec.memory_mib, spec.tenant, start) == (1, 512, "default", False)
    assert spec.restart == "on-failure"


def test_restart_policy() -> None:
    spec, _ = create(name="a", restart="never")
    assert spec.restart == "never" and VmSpec.from_dict(spec.to_dict()) == spec
    with pytest.raises(InvalidParams, match="restart must be one of on-failure, never"):
        create(name="a", restart="always")


def test_the_default_restart_policy_is_written_as_earlier_releases_wrote_specs() -> None:
    """Records and metadata written before restart policies read as the default, and a
    spec with the default reads on such a release (which refuses keys it does not know)."""
    doc = VmSpec(name="a", vcpus=1, memory_mib=64).to_dict()
    assert "restart" not in doc
    assert VmSpec.from_dict(doc).restart == "on-failure"
    assert VmSpec(name="a", vcpus=1, memory_mib=64, restart="never").to_dict()["restart"] == "never"


def test_full() -> None:
    spec, start = create(
        name="a",
        vcpus=4,
        memory_mib=1024,
        kernel="/k",
        initrd="/i",
        cmdline="console=ttyS0",
        disks=[{"size_gib": 2}, {"path": "/img/x.raw", "format": "raw"}],
        tenant="acme",
        start=True,
    )
    assert spec.disks == (DiskSpec(size_gib=2), DiskSpec(path="/img/x.raw", format="raw"))
    assert spec.disks[0].managed and not spec.disks[1].managed
    assert start
    assert VmSpec.from_dict(spec.to_dict()) == spec


@pytest.mark.parametrize(
    "args",
    [
        {"name": "a", "vcpus": 0},
        {"name": "a", "memory_mib": 8},
        {"name": "a", "initrd": "/i"},
        {"name": "a", "cmdline": "x"},
        {"name": "a", "disks": [{}]},
        {"name": "a", "disks": [{"size_gib": 1, "path": "/x"}]},
        {"name": "a", "disks": [{"image": "/x", "path": "/y"}]},
        {"name": "a", "disks": [{"image": "base.qcow2"}]},
        {"name": "a", "disks": [{"image": "/x", "size_gib": 0}]},
        {"name": "a", "disks": [{"image": "/x", "format": "vmdk"}]},
        {"name": "a", "disks": [{"size_gib": 1, "format": "vmdk"}]},
        {"name": "a", "disks": [{"path": "x"}]},
        {"name": "a", "disks": [{"size_gib": 1, "bus": "ide"}]},
        {"name": "a", "disks": [{"size_gib": 1, "limits": {"read_mbps": 5}}]},
        {"name": "a", "disks": [{"size_gib": 1, "limits": {"read_iops": -1}}]},
        {"name": "a", "disks": [{"size_gib": 1, "limits": {"read_iops": 10**15 + 1}}]},
        {"name": "a", "disks": [{"size_gib": 1, "limits": {"read_iops": "5"}}]},
        {"name": "a", "disks": [{"size_gib": 1, "limits": [5]}]},
        {"name": "a", "disks": "1"},
        {"name": "a", "tenant": "Bad Tenant"},
        {"name": "a", "colour": "red"},
    ],
)
def test_refusals(args: dict[str, Any]) -> None:
    with pytest.raises(InvalidParams):
        create(**args)


def test_a_disk_copied_from_a_base_image_is_stored_as_a_new_volume() -> None:
    """``image`` names where the volume's first bytes come from: the format and size are
    the image's unless given (filled in once it is opened), and the stored spec is that
    of any new volume, readable by releases before base images."""
    bare = parse_disk("disks[0]", {"image": "/srv/images/debian.qcow2"})
    assert bare == DiskSpec(image="/srv/images/debian.qcow2", format="")
    assert bare.managed
    sized = parse_disk("disk", {"image": "/srv/images/d.raw", "size_gib": 20, "format": "raw"})
    assert (sized.size_gib, sized.format, sized.image) == (20, "raw", "/srv/images/d.raw")
    assert sized.to_dict() == {"size_gib": 20, "path": None, "format": "raw"}
    assert DiskSpec.from_dict(sized.to_dict()) == DiskSpec(size_gib=20, format="raw")


def test_disk_names_are_written_only_where_they_leave_their_position() -> None:
    spec = VmSpec(name="v", vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1),))
    assert spec.disk_targets() == ["vda"]
    moved = spec.with_disks(
        [
            DiskSpec(size_gib=1, target="vda"),
            DiskSpec(path="/img/x.raw", format="raw", target="vdc"),  # vdb was detached
            DiskSpec(size_gib=2, target="vdb"),
        ]
    )
    assert moved.disk_targets() == ["vda", "vdc", "vdb"]
    doc = moved.to_dict()
    assert "target" not in doc["disks"][0]
    assert (doc["disks"][1]["target"], doc["disks"][2]["target"]) == ("vdc", "vdb")
    assert VmSpec.from_dict(doc) == moved
    # back in order: nothing written, as a spec from before attachable disks
    tidy = moved.with_disks(
        [DiskSpec(size_gib=1, target="vda"), DiskSpec(size_gib=2, target="vdb")]
    )
    assert all("target" not in d for d in tidy.to_dict()["disks"])
    assert tidy.disk_targets() == ["vda", "vdb"]


LIMIT_MAPS = st.dictionaries(st.sampled_from(DISK_LIMIT_KEYS), st.integers(0, MAX_DISK_LIMIT))


@given(LIMIT_MAPS, st.booleans())
def test_disk_limits_are_read_stored_and_read_back(raw: dict[str, int], managed: bool) -> None:
    disk = {"size_gib": 1} if managed else {"path": "/img/x.raw", "format": "raw"}
    parsed = parse_disk("disks[0]", {**disk, "limits": raw})
    set_ = {k: v for k, v in raw.items() if v}
    # a limit of 0 is none; no limit at all is no limits (and nothing written)
    assert parsed.limits == (DiskLimits(**set_) if set_ else None)
    spec = VmSpec(name="v", vcpus=1, memory_mib=64, disks=(parsed,))
    doc = spec.to_dict()
    assert doc["disks"][0].get("limits") == (set_ or None)
    assert ("limits" in doc["disks"][0]) == bool(set_)
    assert VmSpec.from_dict(doc) == spec


def test_a_disk_without_limits_is_written_as_earlier_releases_wrote_it() -> None:
    doc = VmSpec(name="v", vcpus=1, memory_mib=64, disks=(DiskSpec(size_gib=1),)).to_dict()
    assert doc["disks"] == [{"size_gib": 1, "path": None, "format": "qcow2"}]


def test_room_for_vcpus_plugged_in_while_it_runs() -> None:
    spec, _ = create(name="a", vcpus=2, max_vcpus=8)
    assert (spec.vcpus, spec.max_vcpus, spec.vcpu_slots) == (2, 8, 8)
    assert VmSpec.from_dict(spec.to_dict()) == spec
    same, _ = create(name="a", vcpus=2, max_vcpus=2)  # no room: as if not given
    assert same.max_vcpus is None and same.vcpu_slots == 2
    # unwritten unless set, so a spec without it still reads on releases before it
    assert "max_vcpus" not in same.to_dict()
    with pytest.raises(InvalidParams, match=r"max_vcpus \(1\) is below vcpus \(2\)"):
        create(name="a", vcpus=2, max_vcpus=1)
    with pytest.raises(InvalidParams, match="max_vcpus"):
        create(name="a", max_vcpus=513)


@given(st.integers(1, 512), st.one_of(st.none(), st.integers(1, 512)))
def test_max_vcpus_is_never_below_vcpus(vcpus: int, max_vcpus: int | None) -> None:
    args: dict[str, object] = {"name": "a", "vcpus": vcpus}
    if max_vcpus is not None:
        args["max_vcpus"] = max_vcpus
    if max_vcpus is not None and max_vcpus < vcpus:
        with pytest.raises(InvalidParams):
            create(**args)
        return
    spec, _ = create(**args)
    assert spec.vcpu_slots == max(vcpus, max_vcpus or 0)
    assert spec.vcpus <= spec.vcpu_slots
    assert VmSpec.from_dict(spec.to_dict()) == spec


def test_room_for_memory_moved_by_a_balloon() -> None:
    spec, _ = create(name="a", memory_mib=256, max_memory_mib=1024)
    assert (spec.memory_mib, spec.max_memory_mib, spec.memory_ceiling_mib) == (256, 1024, 1024)
    assert VmSpec.from_dict(spec.to_dict()) == spec
    same, _ = create(name="a", memory_mib=256, max_memory_mib=256)
    assert same.max_memory_mib is None and "max_memory_mib" not in same.to_dict()
    with pytest.raises(InvalidParams, match=r"max_memory_mib \(128\) is below memory_mib"):
        create(name="a", memory_mib=256, max_memory_mib=128)
    with pytest.raises(InvalidParams, match="hugepages"):
        create(name="a", memory_mib=256, max_memory_mib=512, hugepage_kib=2048)


# what vm.create takes (valid requests): their specs as the daemon stores them
REQUESTS = st.fixed_dictionaries(
    {"name": st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True)},
    optional={
        "vcpus": st.integers(1, 8),
        "memory_mib": st.sampled_from([64, 512, 2048]),
        "tenant": st.sampled_from(["default", "acme"]),
        "disks": st.lists(
            st.one_of(
                st.fixed_dictionaries(
                    {"size_gib": st.integers(1, 100)},
                    optional={"format": st.sampled_from(["qcow2", "raw"]), "limits": LIMIT_MAPS},
                ),
                st.fixed_dictionaries({"path": st.sampled_from(["/img/a.qcow2", "/b.raw"])}),
            ),
            max_size=3,
        ),
        "nics": st.lists(
            st.fixed_dictionaries(
                {"network": st.sampled_from(["n1", "n2"])},
                optional={"model": st.sampled_from(["virtio", "e1000"])},
            ),
            max_size=3,
        ),
        "cpu_policy": st.sampled_from(["shared", "dedicated"]),
        "memory_policy": st.sampled_from(["strict", "preferred", "interleave"]),
        "restart": st.sampled_from(["on-failure", "never"]),
        "max_vcpus": st.sampled_from([8, 16]),
        "kernel": st.just("/boot/k"),
    },
)


@given(REQUESTS)
def test_a_stored_spec_from_elsewhere_reads_back_as_the_spec_it_was(
    request: dict[str, Any],
) -> None:
    spec, _ = create(**request)
    assert stored_spec(spec.to_dict()) == spec
    # disks attached where one was detached keep their names
    if spec.disks:
        moved = spec.with_disks([replace(spec.named_disks()[0], target="vdq")])
        assert stored_spec(moved.to_dict()) == moved


ANY_JSON = st.recursive(
    st.one_of(
        st.none(), st.booleans(), st.integers(-(2**40), 2**40), st.floats(), st.text(max_size=8)
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=3), st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@given(REQUESTS, st.data())
def test_a_mangled_stored_spec_is_refused_as_invalid_params_or_read(
    request: dict[str, Any], data: st.DataObject
) -> None:
    """Another node's spec with any value of any type anywhere: a spec, or invalid_params
    (such specs reached placement and XML building and failed as internal errors)."""
    doc = create(**request)[0].to_dict()
    place: dict[str, Any] = doc
    if doc["disks"] and data.draw(st.booleans()):
        place = data.draw(st.sampled_from(doc["disks"]))
    elif doc["nics"] and data.draw(st.booleans()):
        place = data.draw(st.sampled_from(doc["nics"]))
    key = data.draw(st.sampled_from([*place, "limits", "target", "zz"]))
    place[key] = data.draw(ANY_JSON)
    try:
        spec = stored_spec(doc)
    except InvalidParams as exc:
        assert exc.details["param"].startswith("spec")
    else:
        assert stored_spec(spec.to_dict()) == spec


@pytest.mark.parametrize(
    ("change", "param"),
    [
        ({"vcpus": "2"}, "spec.vcpus"),
        ({"memory_mib": 1.5}, "spec.memory_mib"),
        ({"nics": "x"}, "spec.nics"),
        ({"nics": [{"network": "n1"}]}, "spec.nics[0]"),
        ({"disks": [{"size_gib": 1, "format": "qcow2", "path": "/x"}]}, "spec.disks[0]"),
        ({"disks": [{"path": 1.5, "format": "raw"}]}, "spec.disks[0].path"),
        ({"disks": [{"size_gib": 1, "format": "qcow2", "target": "../x"}]}, "spec.disks[0]"),
        ({"cpu_policy": {"a": 1}}, "spec.cpu_policy"),
        ({"hugepage_kib": 4096}, "spec.hugepage_kib"),
        ({"max_vcpus": 0}, "spec.max_vcpus"),
        ({"vcpus": 4, "max_vcpus": 2}, "max_vcpus"),
        ({"tenant": "Bad Tenant"}, "spec.tenant"),
        ({"extra": 1}, "spec"),
    ],
)
def test_stored_spec_refusals_name_the_key(change: dict[str, Any], param: str) -> None:
    doc = {**VmSpec(name="a", vcpus=1, memory_mib=64).to_dict(), **change}
    with pytest.raises(InvalidParams) as refused:
        stored_spec(doc)
    assert refused.value.details["param"] == param
