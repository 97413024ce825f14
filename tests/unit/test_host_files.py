"""``novacron.vm.host_files``: which host files a caller may give a VM, on a real tree
of files and symbolic links."""

from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron.auth.identity import Identity
from novacron.errors import PermissionDenied
from novacron.vm.host_files import Offered, check
from novacron.vm.spec import DiskSpec, VmSpec

OPERATOR = Identity(
    kind="tls", user="op", roles=frozenset({"operator"}), tenants=frozenset({"acme"})
)
ADMIN = Identity(kind="tls", user="root", roles=frozenset({"admin"}), tenants=None)


def vm(tenant: str = "acme", *, disk: Path | None = None, **boot: Path) -> VmSpec:
    disks = (DiskSpec(path=str(disk), format="raw"),) if disk else ()
    files: dict[str, Any] = {k: str(v) for k, v in boot.items()}
    return VmSpec(name="v", vcpus=1, memory_mib=64, tenant=tenant, disks=disks, **files)


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    for d in ("images/acme", "images/globex", "images-evil", "boot", "state/images", "etc"):
        (tmp_path / d).mkdir(parents=True)
    for f in (
        "images/acme/root.qcow2",
        "images/globex/db.qcow2",
        "images-evil/x.raw",
        "boot/vmlinuz",
        "boot/initrd.img",
        "state/state.db",
        "state/images/other-vda.qcow2",
        "etc/shadow",
    ):
        (tmp_path / f).write_bytes(b"x")
    return tmp_path


def offered(tree: Path, disks: str = "images/{tenant}", boot: str = "boot") -> Offered:
    return Offered(
        disk_dirs=tuple(str(tree / d) for d in disks.split(",") if d),
        boot_dirs=tuple(str(tree / d) for d in boot.split(",") if d),
        state_dir=tree / "state",
    )


def denied(spec: VmSpec, offer: Offered, param: str) -> None:
    with pytest.raises(PermissionDenied) as info:
        check(OPERATOR, spec, offer)
    assert info.value.details["param"] == param
    assert "admin role" in info.value.message


def test_files_in_the_offered_directories_are_given(tree: Path) -> None:
    offer = offered(tree)
    check(OPERATOR, vm(disk=tree / "images/acme/root.qcow2"), offer)
    check(OPERATOR, vm(kernel=tree / "boot/vmlinuz", initrd=tree / "boot/initrd.img"), offer)
    check(OPERATOR, vm(), offer)  # new volumes in the daemon's pool name no host file


def test_other_files_are_refused_to_all_but_admins(tree: Path) -> None:
    offer = offered(tree)
    cases = [
        (vm(disk=tree / "etc/shadow"), "disks[0].path"),
        (vm(disk=tree / "images/globex/db.qcow2"), "disks[0].path"),  # another tenant's
        (vm(disk=tree / "images-evil/x.raw"), "disks[0].path"),  # a prefix is no parent
        (vm(disk=tree / "boot/vmlinuz"), "disks[0].path"),  # boot files are not disks
        (vm(kernel=tree / "images/acme/root.qcow2"), "kernel"),  # nor disks boot files
        (vm(kernel=tree / "boot/vmlinuz", initrd=tree / "etc/shadow"), "initrd"),
        (vm(disk=tree / "images/acme"), "disks[0].path"),  # the directory itself
    ]
    for spec, param in cases:
        denied(spec, offer, param)
        check(ADMIN, spec, offer)  # root's equal already


def test_base_images_come_from_image_dirs_or_disk_dirs(tree: Path) -> None:
    """A file a caller may use in place it may also copy; ``image_dirs`` offers files to
    copy only (the daemon reads them, QEMU never opens them)."""
    (tree / "bases").mkdir()
    (tree / "bases/debian.qcow2").write_bytes(b"x")
    offer = Offered(
        disk_dirs=(str(tree / "images/{tenant}"),),
        boot_dirs=(),
        state_dir=tree / "state",
        image_dirs=(str(tree / "bases"),),
    )

    def copy_of(path: Path) -> VmSpec:
        return replace(vm(), disks=(DiskSpec(image=str(path), format=""),))

    check(OPERATOR, copy_of(tree / "bases/debian.qcow2"), offer)
    check(OPERATOR, copy_of(tree / "images/acme/root.qcow2"), offer)
    for path in (tree / "etc/shadow", tree / "images/globex/db.qcow2", tree / "bases"):
        denied(copy_of(path), offer, "disks[0].image")
        check(ADMIN, copy_of(path), offer)
    # a base image is no disk to use in place
    denied(vm(disk=tree / "bases/debian.qcow2"), offer, "disks[0].path")
    with pytest.raises(PermissionDenied, match=r"image_dirs: .*/bases; disk_dirs: "):
        check(OPERATOR, copy_of(tree / "etc/shadow"), offer)
    shut = Offered(disk_dirs=(), boot_dirs=(), state_dir=tree / "state")
    with pytest.raises(PermissionDenied, match=r"image_dirs: none; disk_dirs: none"):
        check(OPERATOR, copy_of(tree / "bases/debian.qcow2"), shut)


def test_nothing_is_offered_by_default(tree: Path) -> None:
    offer = Offered(disk_dirs=(), boot_dirs=(), state_dir=tree / "state")
    with pytest.raises(PermissionDenied, match=r"\[vm\] boot_dirs: none"):
        check(OPERATOR, vm(kernel=tree / "boot/vmlinuz"), offer)
    check(OPERATOR, vm(), offer)


def test_the_daemons_state_is_never_offered(tree: Path) -> None:
    offer = offered(tree, disks=".", boot=".")  # a careless offer: everything under tree
    check(OPERATOR, vm(disk=tree / "etc/shadow"), offer)  # (offered, if unwisely)
    denied(vm(disk=tree / "state/state.db"), offer, "disks[0].path")
    denied(vm(disk=tree / "state/images/other-vda.qcow2"), offer, "disks[0].path")
    denied(vm(kernel=tree / "state/state.db"), offer, "kernel")


def test_symbolic_links_are_followed_before_comparing(tree: Path) -> None:
    offer = offered(tree)
    out = tree / "images/acme/escape.raw"
    out.symlink_to(tree / "etc/shadow")
    denied(vm(disk=out), offer, "disks[0].path")
    (tree / "images/acme/up").symlink_to(tree / "images/globex")
    denied(vm(disk=tree / "images/acme/up/db.qcow2"), offer, "disks[0].path")
    into = tree / "etc/link.qcow2"
    into.symlink_to(tree / "images/acme/root.qcow2")
    check(OPERATOR, vm(disk=into), offer)  # it is the offered file
    # an offered directory that is itself a link is compared as what it points at
    (tree / "boot-link").symlink_to(tree / "boot")
    check(OPERATOR, vm(kernel=tree / "boot/vmlinuz"), offered(tree, boot="boot-link"))


NAMES = st.sampled_from(["images", "acme", "globex", "boot", "state", "etc", "a", "l1", "l2"])


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    parts=st.lists(NAMES, min_size=1, max_size=4),
    links=st.lists(st.tuples(NAMES, st.lists(NAMES, max_size=3)), max_size=3),
    admin=st.booleans(),
)
def test_a_given_file_always_resolves_inside_an_offer(
    tree: Path, parts: list[str], links: list[tuple[str, list[str]]], admin: bool
) -> None:
    """Whatever links lie on the way, a non-admin is given a file only if its resolved
    path is inside an offered directory and outside the daemon's state."""
    for name, target in links:
        link = tree / "images/acme" / name
        if not link.exists() and not link.is_symlink():
            link.symlink_to(tree.joinpath(*target) if target else tree)
    path = tree.joinpath("images/acme", *parts)
    offer = offered(tree)
    who = ADMIN if admin else OPERATOR
    try:
        check(who, vm(disk=path), offer)
        given_ = True
    except PermissionDenied:
        given_ = False
    real = Path(os.path.realpath(path))
    root = Path(os.path.realpath(tree / "images/acme"))
    state = Path(os.path.realpath(tree / "state"))
    if admin:
        assert given_
    elif given_:
        assert real != root and real.is_relative_to(root), (path, real)
        assert not real.is_relative_to(state), (path, real)
    else:
        assert not (real != root and real.is_relative_to(root)) or real.is_relative_to(state)
