from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from hypothesis import given
from hypothesis import strategies as st

from novacron.api import Services, build_registry
from novacron.auth import policy
from novacron.auth.identity import Identity
from novacron.config import dev_defaults
from novacron.eventbus import EventBus
from novacron.state.db import StateStore
from novacron.vm.driver import Hypervisor
from novacron.vm.service import VmService


def registry_methods(tmp_path: Path) -> set[str]:
    config = replace(dev_defaults(), state_dir=tmp_path)
    store = StateStore(tmp_path / "state.db")
    vms = VmService(config, Hypervisor(config.hypervisor_uri), store)
    try:
        return set(build_registry(Services(config=config, vms=vms, bus=EventBus())).methods)
    finally:
        store.close()


def test_every_registered_method_has_a_permission(tmp_path: Path) -> None:
    missing = registry_methods(tmp_path) - set(policy.METHOD_PERMISSIONS)
    assert not missing, f"methods without a permission entry: {missing}"


def test_table_has_no_stale_entries(tmp_path: Path) -> None:
    assert set(policy.METHOD_PERMISSIONS) == registry_methods(tmp_path)


ROLES = ["admin", "operator", "viewer", "node", "nobody"]
TENANTS = ["acme", "globex", "initech"]


@st.composite
def identities(draw: st.DrawFn) -> Identity:
    roles = draw(st.frozensets(st.sampled_from(ROLES), max_size=2))
    tenants = draw(st.frozensets(st.sampled_from(TENANTS), max_size=2))
    return Identity(
        kind=draw(st.sampled_from(["unix", "tls"])),
        user="u",
        roles=roles,
        tenants=None if "admin" in roles else tenants,
    )


EXPECTED_GRANTS = {  # written from the role list, independently of ROLE_GRANTS
    "admin": {"public", "read", "write", "admin", "node"},
    "operator": {"public", "read", "write"},
    "viewer": {"public", "read"},
    "node": {"public", "node"},
}


@given(
    identities(),
    st.sampled_from([*sorted(policy.METHOD_PERMISSIONS), "vm.nuke", "x"]),
    st.one_of(st.none(), st.sampled_from(TENANTS)),
)
def test_authorisation_matrix(identity: Identity, method: str, target: str | None) -> None:
    needed = policy.METHOD_PERMISSIONS.get(method)
    granted = set().union(*(EXPECTED_GRANTS.get(r, set()) for r in identity.roles)) | {"public"}
    decision = policy.decide(identity, method, target)
    if needed is None or needed not in granted:
        assert decision == "permission_denied"
    elif target is not None and identity.tenants is not None and target not in identity.tenants:
        assert decision == "not_found"  # cross-tenant access never succeeds
    else:
        assert decision == "allow"
    if decision == "allow" and target is not None:
        assert "admin" in identity.roles or target in (identity.tenants or ())
    assert policy.allowed(identity, method) is (decision != "permission_denied")


def test_a_consoles_opening_is_audited_but_not_its_keystrokes() -> None:
    assert policy.changes_state("vm.console.open")
    assert not policy.changes_state("vm.console.write")
    assert not policy.changes_state("vm.console.close")
    assert all(policy.changes_state(m) for m in ("vm.create", "vm.disk.limit", "auth.bind"))
    assert not policy.changes_state("vm.get")
