"""Many clients at once on the same few VMs: lifecycle, snapshots, clones, disks and
resizes racing each other (libvirt's test driver answers at once, so the daemon's own
locking is what keeps them apart). Whatever interleaving comes, no call fails as
``internal`` or hangs, and afterwards the records, the storage pool, the quota and the
audit chain agree with each other."""

from __future__ import annotations

import random
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

from novacron import errors
from tests.daemon_harness import UNLIMITED, Daemon

SEED = 20261206
CLIENTS = 8
CALLS_EACH = 200
VMS = ("v1", "v2", "v3")

Make = Callable[[random.Random, str], dict[str, Any]]
OPERATIONS: list[tuple[str, Make]] = [
    (
        "vm.create",
        lambda r, vm: {
            "name": vm,
            "memory_mib": 64,
            "disks": [{"size_gib": 1}] if r.random() < 0.5 else [],
            "start": r.random() < 0.5,
        },
    ),
    ("vm.start", lambda r, vm: {"name": vm}),
    ("vm.stop", lambda r, vm: {"name": vm}),
    ("vm.pause", lambda r, vm: {"name": vm}),
    ("vm.resume", lambda r, vm: {"name": vm}),
    ("vm.reboot", lambda r, vm: {"name": vm}),
    ("vm.shutdown", lambda r, vm: {"name": vm, "force": True, "timeout_s": 0.5}),
    ("vm.delete", lambda r, vm: {"name": vm, "force": r.random() < 0.7}),
    ("vm.update", lambda r, vm: {"name": vm, "vcpus": r.choice([1, 2])}),
    ("vm.snapshot.create", lambda r, vm: {"vm": vm, "name": r.choice(["s1", "s2"])}),
    ("vm.snapshot.delete", lambda r, vm: {"vm": vm, "name": r.choice(["s1", "s2"])}),
    ("vm.snapshot.revert", lambda r, vm: {"vm": vm, "name": r.choice(["s1", "s2"])}),
    ("vm.clone", lambda r, vm: {"name": vm, "new_name": r.choice(VMS)}),
    ("vm.disk.attach", lambda r, vm: {"vm": vm, "size_gib": 1}),
    ("vm.disk.detach", lambda r, vm: {"vm": vm, "target": "vdb", "timeout_s": 0.5}),
    ("vm.disk.resize", lambda r, vm: {"vm": vm, "target": "vda", "size_gib": r.choice([2, 3])}),
    ("vm.get", lambda r, vm: {"name": vm}),
    ("vm.list", lambda r, vm: {}),
    ("node.info", lambda r, vm: {}),
]


def test_racing_clients_leave_records_pool_quota_and_audit_in_agreement(
    tmp_path: Path,
) -> None:
    daemon = Daemon.under(tmp_path, *UNLIMITED).start()
    failures: list[tuple[str, dict[str, Any], str]] = []
    outcomes: dict[str, int] = {}
    lock = threading.Lock()

    def client(k: int) -> None:
        rng = random.Random(SEED + k)
        with daemon.client(timeout=60) as c:
            for _ in range(CALLS_EACH):
                method, make = rng.choice(OPERATIONS)
                params = make(rng, rng.choice(VMS))
                try:
                    c.call(method, **params)
                    outcome = "ok"
                except errors.NovaCronError as e:
                    outcome = e.code
                with lock:
                    outcomes[outcome] = outcomes.get(outcome, 0) + 1
                    if outcome in ("internal", "timeout", "unavailable"):
                        failures.append((method, params, outcome))

    threads = [threading.Thread(target=client, args=(k,)) for k in range(CLIENTS)]
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        assert not failures, failures[:10]
        with daemon.client() as c:
            vms = [c.call("vm.get", name=vm["name"]) for vm in c.call("vm.list")]
            storage = c.call("node.info")["storage"]
            used = c.call("quota.get", tenant="default")["used"]
            # every volume is some VM's disk, and every disk is counted once
            assert storage["volumes"] == sum(len(vm["disks"]) for vm in vms), (vms, storage)
            assert used["vms"] == len(vms)
            assert used["disk_gib"] * 2**30 == storage["committed_bytes"], (used, storage)
            assert used["vcpus"] == sum(vm["vcpus"] for vm in vms)
            assert c.call("audit.verify")["ok"]
    finally:
        rc = daemon.stop()
    assert rc in (0, None), daemon.log_text()
    assert "Traceback" not in daemon.log_text()
    # the races were real: calls got through and calls were refused for the state
    assert outcomes["ok"] > 200 and outcomes["conflict"] > 50, outcomes
