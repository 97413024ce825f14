"""The authorisation matrix against the live daemon over TLS: hypothesis draws a
caller (role x tenants, each a real client certificate), a method and a target VM's
tenant; the daemon's answer must be what the policy table decides. Cross-tenant
access never succeeds."""

from __future__ import annotations

import itertools
from pathlib import Path
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from novacron import errors
from novacron.auth import policy
from novacron.auth.identity import Identity
from tests.pki_harness import Pki, client, free_port, tls_daemon

ROLES = ["admin", "operator", "viewer", "node"]
TENANT_SETS: list[tuple[str, ...]] = [("acme",), ("globex",), ("acme", "globex"), ()]
VMS = {"acme": "vm-acme", "globex": "vm-globex", "initech": "vm-initech"}
# methods that take a VM and leave the fixture intact whatever the outcome
VM_METHODS = [
    "vm.get",
    "vm.stats",
    "vm.snapshot.list",
    "vm.resume",
    "vm.reboot",
    "vm.update",
    "vm.console.open",  # (the test driver's VMs have no console: conflict once allowed)
    "vm.console.watch",  # (likewise; the read role may watch)
]
OTHER_METHODS = [
    "vm.list",
    "vm.stats.list",
    "node.info",
    "node.backup",
    "node.cordon",
    "node.uncordon",
    "audit.tail",
    "auth.bindings",
    "quota.get",
    "auth.whoami",
]


def test_matrix(tmp_path: Path) -> None:
    pki = Pki.create(tmp_path / "pki")
    port = free_port()
    d = tls_daemon(tmp_path, pki, port).start()
    callers: dict[tuple[str, tuple[str, ...]], Any] = {}
    try:
        with d.client() as local:
            for tenant, name in VMS.items():
                local.call("vm.create", name=name, tenant=tenant, memory_mib=64)
        for n, (role, tenants) in enumerate(itertools.product(ROLES, TENANT_SETS)):
            files = pki.issue(f"u{n}", role, tenants, addresses=("127.0.0.1",))
            callers[(role, tenants)] = client(port, files).__enter__()

        @settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
        @given(
            st.sampled_from(sorted(callers)),
            st.sampled_from(VM_METHODS + OTHER_METHODS),
            st.sampled_from(sorted(VMS)),
        )
        def check(who: tuple[str, tuple[str, ...]], method: str, target: str) -> None:
            role, tenants = who
            identity = Identity(
                kind="tls",
                user="x",
                roles=frozenset({role}),
                tenants=None if role == "admin" else frozenset(tenants),
            )
            c = callers[who]
            if method in VM_METHODS:
                key = "vm" if method == "vm.snapshot.list" else "name"
                params: dict[str, Any] = {key: VMS[target]}
                if method == "vm.update":
                    params["restart"] = "on-failure"  # (what it is: the fixture stays)
                expected = policy.decide(identity, method, target)
            elif method == "quota.get":
                params = {"tenant": target}
                expected = policy.decide(identity, method, target)
            else:
                params = {}
                expected = policy.decide(identity, method, None)
            try:
                result = c.call(method, **params)
                outcome = "allow"
            except (errors.PermissionDenied, errors.NotFound) as exc:
                outcome = exc.code
                result = None
            except errors.Conflict:
                outcome = "allow"  # got past authorisation; the VM's state refused it
                result = None
            assert outcome == expected, (who, method, target)
            if method in ("vm.list", "vm.stats.list") and outcome == "allow":
                seen = {vm["tenant"] for vm in result}
                assert all(identity.sees(t) for t in seen), "a list leaked another tenant"
            if outcome == "allow" and target and method in VM_METHODS:
                assert identity.sees(target), "cross-tenant access succeeded"

        check()
    finally:
        for c in callers.values():
            c.close()
        assert d.stop() in (0, None)
    assert "Traceback" not in d.log_text()
