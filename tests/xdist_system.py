"""How the system tests share two pytest-xdist workers (``-n 2 --dist loadgroup``).

A module that runs only on namespaced hosts it brings up (each with its own libvirtd:
:data:`OWN_HOSTS`) goes to one worker whole, so its module-scoped hosts come up once,
alongside any other module. Every other system module uses the machine's libvirtd, and
those all go to one worker, one test at a time: a daemon on the machine's libvirtd sees
(and adopts) every guest defined there, and the two hugepage modules size the machine's
one pool (``test_migration_placement`` runs on hosts of its own but is with them for
that). A new module is in that shared group unless it is added to :data:`OWN_HOSTS`.

The grouping is made here, on the controller, from each test's node id: pytest-xdist's
own ``xdist_group`` marks reach the scheduler as a suffix of the node id that the
workers set, which pytest 9 no longer lets them change (pytest-dev/pytest-xdist#1386:
the marks are silently ignored). The controller also starts the
machine's libvirtd (when none answers) before the workers start and stops it after they
are all done, so two workers never race to start it and neither stops it under the other.
"""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import pytest

from tests.system.libvirt_host import LibvirtHost

SYSTEM = Path(__file__).resolve().parent / "system"
HOST_LIBVIRTD = "host-libvirtd"
OWN_HOSTS = frozenset(
    {
        "test_cluster_migration",
        "test_console_libvirtd",
        "test_migration",
        "test_networking",
        "test_offline_migration",
        "test_snapshot_moves",
        "test_storage_migration",
        "test_two_hosts",
    }
)


def group_of(nodeid: str) -> str | None:
    """The work unit of a system test's node id; None for a test of another kind."""
    path = PurePosixPath(nodeid.split("::", 1)[0])
    if path.parent != PurePosixPath("tests/system"):
        return None
    return str(path) if path.stem in OWN_HOSTS else HOST_LIBVIRTD


def make_scheduler(config: pytest.Config, log: Any) -> Any:
    """``--dist loadgroup`` with the system tests grouped by :func:`group_of`; any other
    test is a unit of its own (or of its ``xdist_group``, as pytest-xdist does)."""
    from xdist.scheduler import LoadGroupScheduling

    class SystemGroups(LoadGroupScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            group = group_of(nodeid)
            return group if group is not None else str(super()._split_scope(nodeid))

    return SystemGroups(config, log)


def runs_system_tests(config: pytest.Config) -> bool:
    """Whether the run's paths hold system tests (the directory, one above, or in it)."""
    for arg in config.args or ["."]:
        path = (config.invocation_params.dir / arg.split("::", 1)[0]).resolve()
        if path == SYSTEM or path in SYSTEM.parents or SYSTEM in path.parents:
            return True
    return False


def start_libvirtd(config: pytest.Config) -> LibvirtHost | None:
    """On an xdist controller whose run holds system tests: the machine's libvirtd
    started, if none answered (else None, and so on a worker, or without xdist)."""
    if hasattr(config, "workerinput") or not getattr(config.option, "numprocesses", None):
        return None
    if not runs_system_tests(config):
        return None
    try:
        return LibvirtHost().start()
    except RuntimeError:
        return None  # (not root, or not installed: each system test's fixture says so)
