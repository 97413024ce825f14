"""How the system tests are grouped for pytest-xdist's two workers (tests/xdist_system.py)."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

from tests import xdist_system
from tests.xdist_system import HOST_LIBVIRTD, SYSTEM, group_of


def test_a_module_on_hosts_of_its_own_is_a_unit_of_its_own() -> None:
    assert group_of("tests/system/test_migration.py::test_cancel_mid_way") == (
        "tests/system/test_migration.py"
    )
    assert group_of("tests/system/test_two_hosts.py::test_x[2]") == "tests/system/test_two_hosts.py"


def test_every_other_system_module_shares_the_machines_libvirtd_group() -> None:
    for nodeid in (
        "tests/system/test_guest_lifecycle.py::test_boot_pause_resume_snapshot_shutdown_delete",
        "tests/system/test_placement_guest.py::test_hugepage_backed_guest_takes_its_pages",
        # on hosts of its own, but it sizes the machine's hugepage pool
        "tests/system/test_migration_placement.py::test_a_dedicated_hugepage_vm_is_placed",
        "tests/system/test_a_module_written_tomorrow.py::test_it",
    ):
        assert group_of(nodeid) == HOST_LIBVIRTD, nodeid


def test_tests_of_other_kinds_are_not_grouped_here() -> None:
    assert group_of("tests/unit/test_codec.py::test_x") is None
    assert group_of("tests/integration/test_load.py::test_x") is None
    assert group_of("tests/system/helpers/test_x.py::test_y") is None


def test_every_module_named_on_hosts_of_its_own_exists() -> None:
    modules = {p.stem for p in SYSTEM.glob("test_*.py")}
    assert not xdist_system.OWN_HOSTS - modules


def _runs(dir_: Path, *args: str) -> bool:
    config = SimpleNamespace(args=list(args), invocation_params=SimpleNamespace(dir=dir_))
    return xdist_system.runs_system_tests(config)  # type: ignore[arg-type]


def test_the_machines_libvirtd_is_started_only_for_runs_that_hold_system_tests() -> None:
    root = SYSTEM.parents[1]
    assert _runs(root, "tests/system")
    assert _runs(root, "tests")
    assert _runs(root)  # (no path: the invocation directory, which holds them)
    assert _runs(root, "tests/unit", "tests/system/test_console.py::test_x")
    assert _runs(SYSTEM, "test_console.py")
    assert not _runs(root, "tests/unit", "tests/integration")
    assert not _runs(root, "tests/unit/test_codec.py::test_x")
