"""Which disks lie on storage declared shared (``[migration] shared_storage``), and the
libvirt flag that follows."""

from __future__ import annotations

from pathlib import Path

from novacron.migration import shared_storage


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


def test_all_declared_needs_disks(tmp_path: Path) -> None:
    assert not shared_storage.all_declared([], [str(tmp_path)])
    assert shared_storage.all_declared([str(tmp_path / "d.raw")], [str(tmp_path)])
    assert not shared_storage.all_declared(
        [str(tmp_path / "d.raw"), "/elsewhere/e.raw"], [str(tmp_path)]
    )


def test_the_hint_names_the_setting() -> None:
    assert "[migration] shared_storage" in shared_storage.UNSAFE_HINT
