"""Source volumes a move kept (the destination's word did not come): which operations
name them, and a sweep that deletes them only on the destination's ``succeeded`` —
never while the destination does not answer, never while a VM here uses them (the real
destination answering: tests/system/test_storage_migration.py)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from novacron.eventbus import EventBus
from novacron.migration import kept_volumes
from novacron.migration.service import MigrationService
from novacron.vm.service import VmService
from novacron.vm.spec import DiskSpec, VmSpec
from tests.unit.conftest import unique


def row(**storage: Any) -> dict[str, Any]:
    return {
        "id": "op1",
        "kind": "migrate_out",
        "result": {"destination_op": "op9", "storage": storage},
    }


KEPT = {"source_volumes": "kept", "kept": {"paths": ["/p/a.qcow2"], "address": "hostb:7443"}}


def test_only_moves_that_kept_their_volumes_are_swept() -> None:
    assert kept_volumes.kept_of(row(**KEPT)) == (["/p/a.qcow2"], "hostb:7443", "op9")
    assert kept_volumes.kept_of(row(**{**KEPT, "source_volumes": "deleted"})) is None
    assert kept_volumes.kept_of({**row(**KEPT), "kind": "migrate_in"}) is None
    assert kept_volumes.kept_of(row(source_volumes="kept")) is None  # (an earlier release's)
    assert kept_volumes.kept_of(row(**{**KEPT, "kept": {"paths": [], "address": "b:1"}})) is None
    assert kept_volumes.kept_of({"id": "x", "kind": "migrate_out", "result": None}) is None


json_like = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=12,
)


@given(st.dictionaries(st.sampled_from(["kind", "result", "id"]), json_like), json_like)
def test_any_stored_result_is_read_without_an_error(doc: dict[str, Any], storage: Any) -> None:
    for candidate in (doc, {**row(), "result": {"storage": storage, "destination_op": "o"}}):
        got = kept_volumes.kept_of(candidate)
        assert got is None or (isinstance(got[0], list) and all(isinstance(p, str) for p in got[0]))


async def kept_move(svc: MigrationService, paths: list[str], address: str) -> str:
    """A finished move that kept ``paths`` (as the source records it)."""
    op = await svc.ops.start("migrate_out", unique("gone"), "default", address, {})
    result = {
        "destination_op": "op9",
        "storage": {**KEPT, "kept": {"paths": paths, "address": address}},
    }
    await svc.ops.finish(op, "succeeded", result)
    return op.id


async def test_no_answer_keeps_them_and_a_vm_using_them_keeps_them_for_good(
    vm_service: VmService, tmp_path: Path
) -> None:
    # node certificates that do not load: no destination can be asked
    config = replace(
        vm_service.config,
        tls_cert=str(tmp_path / "none.crt"),
        tls_key=str(tmp_path / "none.key"),
        tls_ca=str(tmp_path / "ca.crt"),
    )
    svc = MigrationService(config, vm_service, EventBus())
    image = tmp_path / "kept.raw"
    image.write_bytes(b"\1" * 4096)
    silent = await kept_move(svc, [str(image)], "127.0.0.1:1")
    assert await kept_volumes.sweep(svc) == 0
    assert image.exists()
    assert (await svc.ops.get(silent))["result"]["storage"]["source_volumes"] == "kept"
    # a VM here uses the path again (it came back): the volume is never deleted
    await vm_service.create(
        VmSpec(name=unique("back"), vcpus=1, memory_mib=64, disks=(DiskSpec(path=str(image)),)),
        False,
    )
    assert await kept_volumes.sweep(svc) == 0
    storage = (await svc.ops.get(silent))["result"]["storage"]
    assert storage["source_volumes"] == "in_use" and "kept" not in storage
    assert image.exists()
    assert await kept_volumes.sweep(svc) == 0  # (nothing left to look at)


async def test_a_node_without_certificates_sweeps_nothing(
    migration_service: MigrationService, tmp_path: Path
) -> None:
    image = tmp_path / "kept.raw"
    image.write_bytes(b"\1")
    await kept_move(migration_service, [str(image)], "127.0.0.1:1")
    assert migration_service.tls_files() is None
    assert await kept_volumes.sweep(migration_service) == 0
    assert image.exists()
