"""A seeded fuzz of every documented method with its own parameter names: mostly
sensible values (so calls reach deep into the handlers, and the VMs, snapshots,
networks and bindings they make are worked on by later calls), some of every other
type. Whatever comes, the daemon answers with a documented error, never ``internal``,
logs no traceback, and records every call the audit log must record (a call whose
params could not be digested once went unrecorded). Runs in a network namespace of
its own: ``net.create`` builds real bridges."""

from __future__ import annotations

import json
import random
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from novacron import errors
from novacron.auth import policy
from tests.daemon_harness import UNLIMITED
from tests.integration.test_networks import start_daemon
from tests.netns import Namespace
from tests.pki_harness import Pki, client, free_port, tls_daemon

SEED = 20261206
CALLS = 1500

# each method's parameter names, as docs/protocol.md lists them (methods that turn a
# connection into a stream, and the cluster's forwarding, are left out)
METHODS: dict[str, tuple[str, ...]] = {
    "session.hello": ("client",),
    "node.info": (),
    "node.backup": (),
    "node.cordon": ("reason",),
    "node.uncordon": (),
    "node.drain": ("destination", "keep_stopped", "reason", "compression"),
    "vm.create": (
        "name",
        "tenant",
        "vcpus",
        "memory_mib",
        "disks",
        "nics",
        "cpu_policy",
        "memory_policy",
        "hugepage_kib",
        "restart",
        "max_vcpus",
        "max_memory_mib",
        "cloud_init",
        "start",
        "kernel",
        "initrd",
        "cmdline",
    ),
    "vm.list": ("tenant",),
    "vm.get": ("name",),
    "vm.start": ("name",),
    "vm.shutdown": ("name", "force", "timeout_s"),
    "vm.stop": ("name",),
    "vm.pause": ("name",),
    "vm.resume": ("name",),
    "vm.reboot": ("name",),
    "vm.update": ("name", "vcpus", "memory_mib", "max_vcpus", "max_memory_mib", "restart"),
    "vm.delete": ("name", "force", "keep_disks"),
    "vm.snapshot.create": ("vm", "name", "description"),
    "vm.snapshot.list": ("vm",),
    "vm.snapshot.revert": ("vm", "name"),
    "vm.snapshot.delete": ("vm", "name"),
    "vm.clone": ("name", "new_name", "start"),
    "vm.disk.attach": ("vm", "size_gib", "image", "path", "format", "limits"),
    "vm.disk.detach": ("vm", "target", "keep_volume", "timeout_s"),
    "vm.disk.resize": ("vm", "target", "size_gib"),
    "vm.disk.limit": ("vm", "target", "read_bytes_per_s", "write_iops"),
    "vm.stats": ("name",),
    "vm.stats.list": ("tenant",),
    "vm.guest": ("name",),
    "image.list": ("tenant",),
    "vm.console.open": ("name", "console", "force", "scrollback"),
    "vm.console.write": ("console", "data"),
    "vm.console.close": ("console",),
    "vm.console.log": ("name", "offset", "limit"),
    "net.create": ("name", "tenant", "kind", "bridge", "mtu", "uplink", "vni", "remotes", "port"),
    "net.list": ("tenant",),
    "net.get": ("name",),
    "net.delete": ("name",),
    "vm.nic.attach": ("vm", "network", "mac", "model", "limits"),
    "vm.nic.detach": ("vm", "mac", "timeout_s"),
    "vm.nic.limit": ("vm", "mac", "inbound_bytes_per_s", "outbound_bytes_per_s"),
    "cluster.status": (),
    "vm.migrate": ("name", "destination", "compression", "max_downtime_ms", "bandwidth_mbps"),
    "op.get": ("op",),
    "op.list": ("limit",),
    "op.cancel": ("op",),
    "migration.result": ("op",),
    "migration.abort": ("op",),
    "auth.whoami": (),
    "auth.bind": ("principal", "role", "tenants"),
    "auth.unbind": ("principal",),
    "auth.bindings": (),
    "quota.get": ("tenant",),
    "quota.set": ("tenant", "max_vcpus", "max_memory_mib", "max_vms", "disk_limits"),
    "audit.tail": ("limit",),
    "audit.verify": (),
    "tls.reload": (),
}

VMS = ("vm1", "vm2", "vm3", "c1")


def values(rng: random.Random) -> dict[str, Callable[[], Any]]:
    """Mostly valid values for each parameter name (a few just outside their range)."""
    pick = rng.choice

    def limits() -> dict[str, Any]:
        return {pick(["read_iops", "write_bytes_per_s"]): pick([0, 100, 2**40, -1])}

    return {
        "name": lambda: pick([*VMS, "net1", "net2", "s1"]),
        "vm": lambda: pick(VMS),
        "new_name": lambda: pick(["c1", "vm3"]),
        "tenant": lambda: pick(["default", "acme"]),
        "vcpus": lambda: pick([1, 2, 0, 513]),
        "max_vcpus": lambda: pick([1, 4, 512]),
        "memory_mib": lambda: pick([16, 64, 15, 100]),
        "max_memory_mib": lambda: pick([64, 256]),
        "disks": lambda: [pick([{"size_gib": 1}, {"size_gib": 1, "format": "raw"}])],
        "nics": lambda: [pick([{"network": "net1"}, {"network": "net2", "model": "e1000"}])],
        "cpu_policy": lambda: pick(["shared", "dedicated"]),
        "memory_policy": lambda: pick(["strict", "interleave"]),
        "hugepage_kib": lambda: pick([0, 2048]),
        "restart": lambda: pick(["on-failure", "never"]),
        "cloud_init": lambda: pick([{"user_data": "#cloud-config\n"}, {"user_data": b"\x00"}]),
        "kernel": lambda: "/nonexistent/vmlinuz",
        "initrd": lambda: "/nonexistent/initrd",
        "cmdline": lambda: "console=ttyS0",
        "start": lambda: rng.random() < 0.3,
        "force": lambda: rng.random() < 0.5,
        "keep_disks": lambda: rng.random() < 0.5,
        "keep_volume": lambda: rng.random() < 0.5,
        "keep_stopped": lambda: rng.random() < 0.5,
        "timeout_s": lambda: pick([0, 0.5, 3600, -1]),
        "description": lambda: pick(["", "before", "x" * 5000]),
        "target": lambda: pick(["vda", "vdb", "sda"]),
        "size_gib": lambda: pick([1, 2, 65537]),
        "image": lambda: "/nonexistent/base.qcow2",
        "path": lambda: pick(["/nonexistent/x.img", "/etc/passwd"]),
        "format": lambda: pick(["qcow2", "raw"]),
        "limits": limits,
        "disk_limits": limits,
        "read_bytes_per_s": lambda: pick([0, 1000]),
        "write_iops": lambda: pick([0, 100]),
        "inbound_bytes_per_s": lambda: pick([0, 125000]),
        "outbound_bytes_per_s": lambda: pick([0, 125000]),
        "console": lambda: pick([1, 2]),
        "data": lambda: pick([b"ls\n", "ls\n"]),
        "scrollback": lambda: pick([0, 4096]),
        "offset": lambda: pick([0, 100, -1]),
        "limit": lambda: pick([1, 50, 0]),
        "kind": lambda: pick(["bridge", "vxlan"]),
        "bridge": lambda: pick(["fzbr0", "fzbr1"]),
        "mtu": lambda: pick([1500, 9000, 67]),
        "uplink": lambda: pick(["up0", "missing0"]),
        "vni": lambda: pick([7, 16777216]),
        "remotes": lambda: [pick(["10.99.0.2", "::1", "1.2.3"])],
        "port": lambda: pick([4789, 0]),
        "network": lambda: pick(["net1", "net2"]),
        "mac": lambda: pick(["52:54:00:12:34:56", "01:00:5e:00:00:01"]),
        "model": lambda: pick(["virtio", "e1000"]),
        "destination": lambda: pick(["127.0.0.1:1", "[::1]:9"]),
        "compression": lambda: pick(["lz4", "zstd", "none"]),
        "max_downtime_ms": lambda: pick([1, 300]),
        "bandwidth_mbps": lambda: pick([0, 100]),
        "op": lambda: pick(["op-1", "00000000-0000-0000-0000-000000000000"]),
        "principal": lambda: pick(["user:bob", "cn:node-a", "uid:1000"]),
        "role": lambda: pick(["admin", "operator", "viewer"]),
        "tenants": lambda: pick([["acme"], ["*"], []]),
        "max_vms": lambda: pick([None, 0, 5]),
        "reason": lambda: "maintenance",
        "client": lambda: "fuzz",
    }


def anything(rng: random.Random) -> Any:
    """A value of any type the wire carries."""
    return rng.choice(
        [0, -1, 2**64 - 1, -(2**63), 1.5, float("inf"), float("nan"), "", "x" * 70, "\x01",
         "é" * 9, None, True, b"\xff", [], {}, [1, "a"], {"a": 1}, {b"k": 1, "k": 2}]
    )  # fmt: skip


def drawn(
    rng: random.Random,
    good: dict[str, Callable[[], Any]],
    method: str,
    aimed: dict[str, list[str]] | None = None,
) -> dict[str, Any]:
    """Some of ``method``'s parameters, each a sensible value or, for a key ``aimed``
    names, mostly one of the names it lists."""
    names = aimed or {}
    params: dict[str, Any] = {}
    for key in METHODS[method]:
        if rng.random() < 0.6:
            named = key in names and rng.random() < 0.8
            params[key] = rng.choice(names[key]) if named else good[key]()
    return params


@pytest.fixture
def ns() -> Iterator[Namespace]:
    space = Namespace("fuzz")
    space.veth("up0", "up0p")
    yield space
    space.remove()


def test_every_method_survives_a_seeded_fuzz(tmp_path: Path, ns: Namespace) -> None:
    rng = random.Random(SEED)
    good = values(rng)
    daemon = start_daemon(tmp_path, ns)
    outcomes: dict[str, int] = {}
    must_record = 0  # calls the audit log must hold an entry for
    client = daemon.client(timeout=30)

    def call(method: str, params: dict[str, Any]) -> None:
        nonlocal must_record
        outcome = "ok"
        try:
            client.call(method, **params)
        except errors.NovaCronError as e:
            outcome = e.code
        assert outcome != "internal", (method, params)
        assert outcome != "invalid_request", (method, params)  # params are a map here
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if policy.changes_state(method) or outcome == "permission_denied":
            must_record += 1

    try:
        for n in range(CALLS):
            if n % 25 == 0:  # keep things to work on
                for vm in VMS[:2]:
                    call("vm.create", {"name": vm, "memory_mib": 64, "start": n % 50 == 0})
                call("net.create", {"name": "net1"})
            method = rng.choice(sorted(METHODS))
            params = drawn(rng, good, method)
            for key in params:
                if rng.random() < 0.1:
                    params[key] = anything(rng)
            if rng.random() < 0.05:
                params[rng.choice(sorted(good))] = anything(rng)
            call(method, params)
        verified = client.call("audit.verify")
        assert verified["ok"], verified
        assert verified["entries"] == must_record
        assert client.call("session.hello")["server"] == "novacrond"
    finally:
        client.close()
        rc = daemon.stop()
    assert rc in (0, None), daemon.log_text()
    log = daemon.log_text()
    assert "Traceback" not in log and "rpc.internal_error" not in log, log
    # the run reached past argument checking: calls succeeded and state was refused
    assert outcomes["ok"] > CALLS // 10 and outcomes.get("conflict", 0) > 10, outcomes


def test_an_operator_of_one_tenant_cannot_touch_or_see_another(
    tmp_path: Path, ns: Namespace
) -> None:
    """The same fuzz over TLS by an operator of acme, aimed at globex's objects by name:
    globex's VMs, snapshot, network, quota and the bindings are as they were, and no
    answer or error carries what only globex's objects hold (the VM's UUID, its disk's
    path, its NIC's MAC) or globex's name unless the caller wrote it."""
    rng = random.Random(SEED + 1)
    good = values(rng)
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    daemon = tls_daemon(tmp_path, pki, port, *UNLIMITED)
    daemon.prefix = ns.prefix
    daemon.start()
    local = daemon.client()
    files = pki.issue("alice", "operator", ("acme",))
    alice = ns.inside(lambda: client(port, files))  # the daemon listens in the namespace
    try:
        local.call("net.create", name="gnet", tenant="globex")
        vm = local.call(
            "vm.create",
            name="g1",
            tenant="globex",
            memory_mib=64,
            disks=[{"size_gib": 1}],
            nics=[{"network": "gnet"}],
        )
        local.call("vm.snapshot.create", vm="g1", name="gs1")
        local.call("vm.create", name="g2", tenant="globex", memory_mib=64, start=True)
        local.call("quota.set", tenant="globex", max_vms=7)
        secrets = {vm["uuid"], vm["disks"][0]["path"], vm["nics"][0]["mac"]}

        def globex() -> dict[str, Any]:
            return {
                "vms": local.call("vm.list", tenant="globex"),
                "snapshots": local.call("vm.snapshot.list", vm="g1"),
                "networks": local.call("net.list", tenant="globex"),
                "quota": local.call("quota.get", tenant="globex"),
                "bindings": local.call("auth.bindings"),
            }

        before = globex()
        aimed = {
            "name": ["g1", "g2", "gnet", "gs1", "a1", "anet"],
            "vm": ["g1", "g2", "a1"],
            "tenant": ["globex", "acme"],
            "network": ["gnet", "anet"],
        }
        outcomes: dict[str, int] = {}
        for n in range(CALLS):
            if n % 25 == 0:
                for method, made in (
                    ("net.create", {"name": "anet", "tenant": "acme"}),
                    ("vm.create", {"name": "a1", "tenant": "acme", "memory_mib": 64}),
                ):
                    try:
                        alice.call(method, **made)
                    except errors.NovaCronError:
                        pass
            method = rng.choice(sorted(METHODS))
            params = drawn(rng, good, method, aimed)
            try:
                said = json.dumps(alice.call(method, **params), default=repr)
                outcome = "ok"
            except errors.NovaCronError as e:
                said = json.dumps([str(e), e.details], default=repr)
                outcome = e.code
            assert outcome != "internal", (method, params)
            outcomes[outcome] = outcomes.get(outcome, 0) + 1
            assert not any(secret in said for secret in secrets), (method, params, said)
            wrote = json.dumps(params, default=repr)
            assert "globex" not in said or "globex" in wrote, (method, params, said)
        assert globex() == before
    finally:
        alice.close()
        local.close()
        rc = daemon.stop()
    assert rc in (0, None) and "Traceback" not in daemon.log_text(), daemon.log_text()
    assert outcomes["ok"] > CALLS // 10 and outcomes["permission_denied"] > CALLS // 10, outcomes
