"""When a VM paused on a full disk is resumed: every failed disk a file with room again
on its file system; anything else is left to the operator."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from novacron.vm import no_space


def domain(*disks: str) -> str:
    return f"<domain><name>v</name><devices>{''.join(disks)}</devices></domain>"


def file_disk(target: str, path: Path | str) -> str:
    return (
        f"<disk type='file' device='disk'><driver name='qemu' type='raw'/>"
        f"<source file='{path}'/><target dev='{target}' bus='virtio'/></disk>"
    )


def test_a_full_disk_with_room_again_is_resumed_and_one_without_waits(tmp_path: Path) -> None:
    image = tmp_path / "a.raw"
    image.write_bytes(b"")
    xml = domain(file_disk("vda", image), file_disk("vdb", tmp_path / "b.raw"))
    st_ = os.statvfs(tmp_path)
    room = st_.f_bavail * st_.f_frsize
    assert no_space.free_bytes(str(image)) == room
    found = no_space.judge(xml, {"vda": "no_space"}, 1 << 20)
    assert found.action == "resume"
    assert abs(found.free["vda"] - room) < (64 << 20)  # (others write there meanwhile)
    assert no_space.judge(xml, {"vda": "no_space"}, room + (1 << 40)).action == "wait"


def test_what_the_daemon_cannot_judge_is_left_to_the_operator(tmp_path: Path) -> None:
    image = tmp_path / "a.raw"
    image.write_bytes(b"")
    block = (
        "<disk type='block' device='disk'><driver name='qemu' type='raw'/>"
        "<source dev='/dev/vg/lv'/><target dev='vdc'/></disk>"
    )
    xml = domain(file_disk("vda", image), file_disk("vdb", "/nowhere/at/all.raw"), block)
    assert no_space.judge(xml, {}, 0).action == "leave"  # (libvirt names none)
    other = no_space.judge(xml, {"vda": "no_space", "vdb": "unspecified"}, 0)
    assert (other.action, other.why) == ("leave", "disk(s) vdb failed for another reason")
    assert "not a file" in no_space.judge(xml, {"vdc": "no_space"}, 0).why
    assert "not a file" in no_space.judge(xml, {"vdz": "no_space"}, 0).why
    gone = no_space.judge(xml, {"vdb": "no_space"}, 0)
    assert gone.action == "leave" and gone.why.startswith("disk vdb:")


@given(
    st.dictionaries(
        st.sampled_from(["vda", "vdb", "vdc"]),
        st.sampled_from(["no_space", "unspecified"]),
        max_size=3,
    ),
    st.integers(min_value=0, max_value=1 << 50),
)
def test_a_vm_is_resumed_only_when_every_failed_disk_is_a_full_file_with_room(
    failed: dict[str, str], wanted: int
) -> None:
    here = Path(__file__).resolve()
    xml = domain(file_disk("vda", here), file_disk("vdb", here))  # vdc: none
    found = no_space.judge(xml, failed, wanted)
    if found.action == "resume":
        assert failed and set(failed.values()) == {"no_space"} and "vdc" not in failed
        assert all(room >= wanted for room in found.free.values())
        assert set(found.free) == set(failed)
    elif found.action == "wait":
        assert any(room < wanted for room in found.free.values())
    else:
        assert found.action == "leave" and found.why
        assert not failed or "unspecified" in failed.values() or "vdc" in failed
