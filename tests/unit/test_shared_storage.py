"""Which disks lie on storage declared shared (``[migration] shared_storage``), and the
libvirt flag that follows."""

from __future__ import annotations

import secrets
from pathlib import Path

from hypothesis import given, settings
from hypothesis import strategies as st

from novacron.migration import shared_storage
from novacron.vm import domain_xml
from novacron.vm.domain_xml import DiskSource
from novacron.vm.driver import Hypervisor


def test_disks_inside_a_declared_directory_are_declared(tmp_path: Path) -> None:
    shared, local = tmp_path / "shared", tmp_path / "local"
    (shared / "vms").mkdir(parents=True)
    local.mkdir()
    inside, deeper, outside = shared / "a.qcow2", shared / "vms" / "b.raw", local / "c.raw"
    for disk in (inside, deeper, outside):
        disk.touch()
    disks = [str(inside), str(deeper), str(outside)]
    assert shared_storage.undeclared(disks, [str(shared)]) == [str(outside)]
    assert shared_storage.undeclared(disks, [str(shared), str(local)]) == []
    assert shared_storage.undeclared(disks, []) == disks
    # a file not there (yet) is judged by its path
    assert shared_storage.undeclared([str(shared / "new.raw")], [str(shared)]) == []


def test_a_prefix_of_the_name_is_not_inside(tmp_path: Path) -> None:
    (tmp_path / "shared").mkdir()
    (tmp_path / "shared-not").mkdir()
    disk = str(tmp_path / "shared-not" / "d.raw")
    assert shared_storage.undeclared([disk], [str(tmp_path / "shared")]) == [disk]


def test_links_and_dot_dots_are_resolved_on_both_sides(tmp_path: Path) -> None:
    shared, local = tmp_path / "shared", tmp_path / "local"
    shared.mkdir()
    local.mkdir()
    (local / "d.raw").touch()
    # a link in the shared directory to a local file: the file is local
    (shared / "link.raw").symlink_to(local / "d.raw")
    assert shared_storage.undeclared([str(shared / "link.raw")], [str(shared)]) == [
        str(shared / "link.raw")
    ]
    dotdot = str(shared / ".." / "local" / "d.raw")
    assert shared_storage.undeclared([dotdot], [str(shared)]) == [dotdot]
    # a declared directory given through a link covers the files of its target
    (tmp_path / "mnt").symlink_to(shared)
    (shared / "e.raw").touch()
    assert shared_storage.undeclared([str(shared / "e.raw")], [str(tmp_path / "mnt")]) == []


def disk(kind: str, path: str | None, readonly: bool = False, empty: bool = False) -> DiskSource:
    return DiskSource(target="vdx", kind=kind, path=path, readonly=readonly, empty=empty)


def test_all_declared_needs_file_disks_all_inside(tmp_path: Path) -> None:
    inside, outside = str(tmp_path / "d.raw"), "/elsewhere/e.raw"
    dirs = [str(tmp_path)]
    assert shared_storage.all_declared([], dirs) == []
    assert shared_storage.all_declared([disk("file", inside)], dirs) == [inside]
    assert shared_storage.all_declared([disk("file", inside), disk("file", outside)], dirs) == []
    # disks libvirt migrates without a look do not need declaring, but are no file disk
    assert shared_storage.all_declared([disk("block", "/dev/vg/lv")], dirs) == []
    assert shared_storage.all_declared(
        [disk("file", inside), disk("block", "/dev/vg/lv"), disk("network", None)], dirs
    ) == [inside]


def test_disks_libvirt_does_not_check_are_left_out_as_it_leaves_them_out(tmp_path: Path) -> None:
    inside = str(tmp_path / "d.raw")
    dirs = [str(tmp_path)]
    iso = disk("file", "/var/lib/isos/install.iso", readonly=True)
    no_medium = disk("file", None, readonly=True, empty=True)
    assert shared_storage.all_declared([disk("file", inside), iso, no_medium], dirs) == [inside]
    # a read-write local disk is not left out
    assert shared_storage.all_declared([disk("file", inside), disk("file", "/var/x")], dirs) == []


def test_a_disk_whose_check_must_not_be_skipped_keeps_it(tmp_path: Path) -> None:
    inside = str(tmp_path / "d.raw")
    dirs = [str(tmp_path)]
    for kind in ("nvme", "volume", "some-future-type"):
        assert shared_storage.all_declared([disk("file", inside), disk(kind, None)], dirs) == []
    # a read-only one of them is left out as libvirt leaves it
    assert shared_storage.all_declared(
        [disk("file", inside), disk("volume", None, readonly=True)], dirs
    ) == [inside]


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.sampled_from(["file", "block", "network", "nvme", "volume", "dir", "other"]),
            st.booleans(),  # inside the declared directory (file disks)
            st.booleans(),  # read-only
            st.booleans(),  # empty
        ),
        max_size=6,
    )
)
def test_declared_only_when_every_checked_disk_is_safe_to_skip(
    spec: list[tuple[str, bool, bool, bool]],
) -> None:
    root = "/nonexistent-novacron-test/shared"
    disks = [
        disk(kind, f"{root if inside else '/local'}/{i}.img", readonly, empty)
        for i, (kind, inside, readonly, empty) in enumerate(spec)
    ]
    checked = [d for d in disks if not d.readonly and not d.empty]
    safe = bool(checked) and any(d.kind == "file" for d in checked)
    for d in checked:
        if d.kind == "file":
            safe &= d.path is not None and d.path.startswith(root + "/")
        else:
            safe &= d.kind in {"block", "network", "dir"}
    got = shared_storage.all_declared(disks, [root])
    assert bool(got) == safe
    assert got == ([d.path for d in checked if d.kind == "file"] if safe else [])


def test_the_hint_names_the_setting() -> None:
    assert "[migration] shared_storage" in shared_storage.UNSAFE_HINT


def test_pool_volumes_are_judged_as_what_they_are() -> None:
    """A storage-pool volume is looked up as libvirt does (here in the test driver's
    ``default-pool``, a directory pool at ``/default-pool``): a file volume is a file
    disk at its path; one that cannot be looked up stays a volume, never declared."""
    name = f"novacron-{secrets.token_hex(4)}.img"  # (the test driver's state is per process)
    hv = Hypervisor("test:///default")
    try:
        pool = hv.conn.storagePoolLookupByName("default-pool")
        vol = pool.createXML(
            f"<volume><name>{name}</name><capacity>1048576</capacity>"
            "<target><format type='raw'/></target></volume>",
            0,
        )
        try:
            found = DiskSource("vda", "volume", None, False, False, "default-pool", name)
            lost = DiskSource("vdb", "volume", None, False, False, "default-pool", "gone.img")
            block = disk("block", "/dev/vg/lv")
            resolved = shared_storage.resolve_volumes(hv, [found, lost, block])
        finally:
            vol.delete(0)
    finally:
        hv.close()
    assert [(d.kind, d.path) for d in resolved] == [
        ("file", f"/default-pool/{name}"),
        ("volume", None),
        ("block", "/dev/vg/lv"),
    ]
    assert resolved[0].target == "vda"
    assert shared_storage.all_declared(resolved[:1], ["/default-pool"]) == [f"/default-pool/{name}"]
    assert shared_storage.all_declared(resolved[:1], ["/elsewhere"]) == []
    assert shared_storage.all_declared(resolved, ["/default-pool"]) == []  # the lost one


def test_parse_disks_names_a_volumes_pool() -> None:
    xml = """<domain><devices>
      <disk type='volume' device='disk'><source pool='p' volume='v'/><target dev='vda'/></disk>
    </devices></domain>"""
    (only,) = domain_xml.parse_disks(xml)
    assert (only.kind, only.pool, only.volume, only.path) == ("volume", "p", "v", None)
