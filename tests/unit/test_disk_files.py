"""``novacron.vm.disk_files``: disk images used in place, looked at when named — on real
files and on qcow2 images and chains made by QEMU's own ``qemu-img``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron import errors
from novacron.auth.identity import Identity
from novacron.vm.disk_files import InUse, Named, check
from novacron.vm.host_files import Offered

OPERATOR = Identity(
    kind="tls", user="op", roles=frozenset({"operator"}), tenants=frozenset({"acme"})
)
ADMIN = Identity(kind="tls", user="root", roles=frozenset({"admin"}), tenants=None)


def qemu_img(*args: str | Path) -> None:
    subprocess.run(["qemu-img", *map(str, args)], check=True, capture_output=True)


def overlay(path: Path, backing: str | Path, fmt: str = "qcow2") -> Path:
    qemu_img("create", "-f", "qcow2", "-u", "-b", backing, "-F", fmt, path, "1M")
    return path


def offered(root: Path) -> Offered:
    return Offered(
        disk_dirs=(str(root / "images/{tenant}"),), boot_dirs=(), state_dir=root / "state"
    )


@pytest.fixture
def root(tmp_path: Path) -> Path:
    for d in ("images/acme", "images/globex", "elsewhere", "state"):
        (tmp_path / d).mkdir(parents=True)
    qemu_img("create", "-f", "qcow2", tmp_path / "images/acme/a.qcow2", "1M")
    qemu_img("create", "-f", "raw", tmp_path / "images/acme/a.raw", "1M")
    return tmp_path


def run(
    root: Path,
    *named: Named,
    who: Identity = OPERATOR,
    own: tuple[InUse, ...] = (),
    others: tuple[InUse, ...] = (),
) -> None:
    check(who, "acme", list(named), offered(root), list(own), list(others))


def test_good_images_pass_and_each_fault_has_its_code(root: Path) -> None:
    acme = root / "images/acme"
    run(root, Named("disks[0].path", str(acme / "a.qcow2"), "qcow2"))
    run(root, Named("disks[0].path", str(acme / "a.raw"), "raw"))
    run(root, Named("disks[0].path", str(acme / "a.qcow2"), "raw"))  # (raw: QEMU reads no header)
    faults: list[tuple[Named, str]] = [
        (Named("disks[0].path", str(acme / "none.qcow2"), "qcow2"), "no such file"),
        (Named("disks[0].path", str(acme), "raw"), "not a regular file"),
        (Named("disks[0].path", str(acme / "a.raw"), "qcow2"), "not a qcow2 image"),
    ]
    for disk, words in faults:
        with pytest.raises(errors.InvalidParams, match=words) as info:
            run(root, disk, who=ADMIN)
        assert info.value.details["param"] == "disks[0].path"
        assert info.value.details["path"] == disk.path


def test_a_chain_needing_a_missing_file_is_refused_after_the_permission_check(
    root: Path,
) -> None:
    acme = root / "images/acme"
    inside = overlay(acme / "in.qcow2", acme / "gone.raw", "raw")
    outside = overlay(acme / "out.qcow2", root / "elsewhere/gone.raw", "raw")
    for who in (OPERATOR, ADMIN):
        with pytest.raises(errors.InvalidParams, match=r"backing file .* does not exist") as info:
            run(root, Named("path", str(inside), "qcow2"), who=who)
        assert info.value.details["backing"] == str(acme / "gone.raw")
    # whether a file outside the offer exists is not told to who may not name it
    with pytest.raises(errors.PermissionDenied):
        run(root, Named("path", str(outside), "qcow2"))
    with pytest.raises(errors.InvalidParams, match="does not exist"):
        run(root, Named("path", str(outside), "qcow2"), who=ADMIN)


def test_protocols_and_unreadable_headers_need_admin(root: Path) -> None:
    acme = root / "images/acme"
    nbd = overlay(acme / "nbd.qcow2", "nbd://127.0.0.1:10809/x", "raw")
    with pytest.raises(errors.PermissionDenied, match="not a file this daemon can check"):
        run(root, Named("path", str(nbd), "qcow2"))
    run(root, Named("path", str(nbd), "qcow2"), who=ADMIN)
    odd = acme / "odd.qcow2"  # qcow2's magic, then a version no QEMU writes
    odd.write_bytes(b"QFI\xfb" + (9).to_bytes(4, "big") + bytes(200))
    with pytest.raises(errors.PermissionDenied, match="chain cannot be checked"):
        run(root, Named("path", str(odd), "qcow2"))


def test_a_chain_is_not_read_past_what_the_caller_may_name(root: Path) -> None:
    """A backing file the caller may not name is not opened (a FIFO there would hold
    the check for ever); one that is offered but not a file is refused to an operator,
    and left to QEMU for an admin."""
    acme = root / "images/acme"
    os.mkfifo(root / "elsewhere/pipe")
    os.mkfifo(acme / "pipe")
    outside = overlay(acme / "out.qcow2", root / "elsewhere/pipe", "raw")
    inside = overlay(acme / "in.qcow2", acme / "pipe", "raw")
    chained = overlay(acme / "chained.qcow2", acme / "in.qcow2")
    with pytest.raises(errors.PermissionDenied, match="not in a directory this node offers"):
        run(root, Named("path", str(outside), "qcow2"))
    with pytest.raises(errors.PermissionDenied, match="not a regular file or a block device"):
        run(root, Named("path", str(chained), "qcow2"))
    for disk in (outside, inside, chained):
        run(root, Named("path", str(disk), "qcow2"), who=ADMIN)


def test_one_file_is_one_disk_of_a_vm_by_any_name(root: Path) -> None:
    acme = root / "images/acme"
    os.link(acme / "a.raw", acme / "hard.raw")
    (acme / "soft.raw").symlink_to(acme / "a.raw")
    for other in ("hard.raw", "soft.raw", "a.raw"):
        with pytest.raises(errors.InvalidParams, match=r"same file as disks\[0\]\.path"):
            run(
                root,
                Named("disks[0].path", str(acme / "a.raw"), "raw"),
                Named("disks[1].path", str(acme / other), "raw"),
            )
    mine = InUse("v", "acme", str(acme / "a.raw"), "raw")
    with pytest.raises(errors.InvalidParams, match="same file as the VM's disk"):
        run(root, Named("path", str(acme / "hard.raw"), "raw"), own=(mine,))
    # a disk of the VM that is gone (a file removed by hand) is no one's file
    gone = InUse("v", "acme", str(acme / "removed.raw"), "raw")
    run(root, Named("path", str(acme / "a.raw"), "raw"), own=(gone,))


def test_one_file_has_one_format_on_a_node(root: Path) -> None:
    acme = root / "images/acme"
    ours = InUse("a9", "acme", str(acme / "a.qcow2"), "qcow2")
    theirs = InUse("g9", "globex", str(acme / "a.qcow2"), "qcow2")
    run(root, Named("path", str(acme / "a.qcow2"), "qcow2"), others=(ours, theirs))  # (shared)
    with pytest.raises(errors.Conflict, match="vm 'a9' on this node as qcow2, not raw"):
        run(root, Named("path", str(acme / "a.qcow2"), "raw"), others=(ours,))
    with pytest.raises(errors.Conflict, match="another VM on this node") as info:
        run(root, Named("path", str(acme / "a.qcow2"), "raw"), others=(theirs,))
    assert "g9" not in str(info.value) and info.value.details["format"] == "qcow2"
    with pytest.raises(errors.Conflict, match="vm 'g9'"):  # an admin sees every tenant
        run(root, Named("path", str(acme / "a.qcow2"), "raw"), others=(theirs,), who=ADMIN)


# where each image of a chain lies: the tenant's own directory, another tenant's, or
# outside every offered one
PLACES = st.sampled_from(["images/acme", "images/globex", "elsewhere"])


@settings(
    max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(places=st.lists(PLACES, min_size=1, max_size=4), relative=st.booleans())
def test_an_operator_is_refused_exactly_the_chains_that_leave_its_files(
    root: Path, places: list[str], relative: bool
) -> None:
    """For any chain (the named overlay in the tenant's directory, then backing images
    wherever ``places`` puts them, named absolute or relative): an operator is refused
    iff some image of it lies outside the tenant's directory; an admin never is."""
    run_dir = root / "chains" / os.urandom(6).hex()
    images = [run_dir / place / f"{i}.img" for i, place in enumerate(places)]
    for image in images:
        image.parent.mkdir(parents=True, exist_ok=True)
    qemu_img("create", "-f", "raw", images[-1], "1M")
    for upper, lower in zip(reversed(images[:-1]), reversed(images[1:]), strict=True):
        name = os.path.relpath(lower, upper.parent) if relative else str(lower)
        fmt = "raw" if lower == images[-1] else "qcow2"
        overlay(upper, name, fmt)
    top_dir = root / "images/acme" / run_dir.name
    top_dir.mkdir()
    first = os.path.relpath(images[0], top_dir) if relative else str(images[0])
    top = overlay(top_dir / "top.qcow2", first, "raw" if len(images) == 1 else "qcow2")
    offer = Offered(
        disk_dirs=(str(root / "images/{tenant}"), str(run_dir / "images/{tenant}")),
        boot_dirs=(),
        state_dir=root / "state",
    )
    named = [Named("path", str(top), "qcow2")]
    leaves = any(place != "images/acme" for place in places)
    try:
        check(OPERATOR, "acme", named, offer, [], [])
        refused = False
    except errors.PermissionDenied as exc:
        refused = True
        assert exc.details["param"] == "path (its backing file)"
    assert refused == leaves, places
    check(ADMIN, "acme", named, offer, [], [])
