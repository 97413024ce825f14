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


identities = st.builds(
    Identity,
    kind=st.just("unix"),
    user=st.text(min_size=1, max_size=5),
    roles=st.frozensets(st.sampled_from(["admin", "viewer", "nobody"]), max_size=2),
)


@given(identities, st.sampled_from([*sorted(policy.METHOD_PERMISSIONS), "vm.nuke", "x"]))
def test_decision_matches_table(identity: Identity, method: str) -> None:
    needed = policy.METHOD_PERMISSIONS.get(method)
    expected = needed is not None and (needed == policy.PUBLIC or "admin" in identity.roles)
    assert policy.allowed(identity, method) is expected
