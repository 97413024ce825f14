"""How an outgoing migration ends (``source_run.conclude``): a VM that moved is forgotten
here and its operation succeeds with a summary; one that did not stays, and its
operation ends cancelled (only at the operator's word) or failed as ``migration_failed``
whatever the cause was. On libvirt's test driver, with the daemon's own store."""

from __future__ import annotations

from typing import Any

import pytest
import trio
import trio.testing

from novacron import errors
from novacron.migration.options import MigrateOptions
from novacron.migration.service import MigrationService
from novacron.migration.source_run import Run, conclude, tell_abort
from novacron.vm.spec import VmSpec
from tests.unit.conftest import unique


async def outgoing(migrations: MigrationService, offline: bool = False) -> Run:
    name = unique("leaving")
    await migrations.vms.create(VmSpec(name=name, vcpus=1, memory_mib=64), start=False)
    op = await migrations.ops.start("migrate_out", name, "default", "peer:9443", {})
    return Run(migrations, op, MigrateOptions(), offline=offline)


ANSWER = {"node": "node2", "op": "op-there"}


async def test_a_vm_that_moved_is_forgotten_and_summarised(migrations: MigrationService) -> None:
    run = await outgoing(migrations, offline=True)
    await trio.to_thread.run_sync(migrations.vms.hv.undefine, run.op.vm)  # libvirt moved it
    dest = {"state": "succeeded", "result": {"downtime_ms": None}}
    assert await conclude(run, True, ANSWER, dest, trio.current_time()) is True
    doc = await migrations.ops.get(run.op.id)
    assert doc["state"] == "succeeded", doc
    result = doc["result"]
    assert result["destination"] == "node2" and result["destination_op"] == "op-there"
    assert result["destination_state"] == "succeeded" and result["offline"] is True
    assert result["bytes_wire"] == 0 and result["relay_error"] is None
    assert await migrations.vms.records.get(run.op.vm) is None
    assert run.op.vm not in migrations.vms.managed


@pytest.mark.parametrize(
    ("cause", "aborted_for", "state", "code"),
    [
        (None, None, "failed", "migration_failed"),
        (errors.MigrationFailed("link cut"), None, "failed", "migration_failed"),
        (errors.AlreadyExists("taken there"), None, "failed", "migration_failed"),
        (errors.MigrationFailed("stalled"), "stall", "failed", "migration_failed"),
        (None, "cancel", "cancelled", "cancelled"),
    ],
)
async def test_a_vm_that_did_not_move_stays_and_says_why(
    migrations: MigrationService,
    cause: errors.NovaCronError | None,
    aborted_for: str | None,
    state: str,
    code: str,
) -> None:
    run = await outgoing(migrations)
    if cause is not None:
        run.fail(cause)
    run.aborted_for = aborted_for
    assert await conclude(run, False, ANSWER, {}, trio.current_time()) is False
    doc = await migrations.ops.get(run.op.id)
    assert doc["state"] == state and doc["error"]["code"] == code, doc
    if isinstance(cause, errors.AlreadyExists) and aborted_for is None:
        # the destination's refusal, kept as the cause under the migration's own code
        assert doc["error"]["details"]["cause"] == "already_exists", doc
        assert doc["error"]["message"] == "taken there"
    assert await migrations.vms.records.get(run.op.vm) is not None  # still here
    await migrations.vms.delete(run.op.vm, force=True, keep_disks=True)


class Unreachable:
    """A destination whose connection broke, or that never answers."""

    def __init__(self, hang: bool) -> None:
        self.hang = hang

    async def call(self, method: str, **params: Any) -> Any:
        if self.hang:
            await trio.sleep_forever()
        raise trio.BrokenResourceError("gone")


async def test_telling_the_destination_never_fails_nor_waits_long(
    autojump_clock: trio.testing.MockClock,
) -> None:
    await tell_abort(Unreachable(hang=False), ANSWER)  # best effort: no exception
    start = trio.current_time()
    await tell_abort(Unreachable(hang=True), ANSWER)
    assert trio.current_time() - start == pytest.approx(5)
