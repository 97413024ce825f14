"""Role bindings on a real state store."""

from __future__ import annotations

from pathlib import Path

import pytest

from novacron import errors
from novacron.auth.bindings import Bindings
from novacron.auth.identity import Identity
from novacron.blocking import Pool
from novacron.state.db import StateStore


def unix(user: str, groups: tuple[str, ...] = ()) -> Identity:
    return Identity(kind="unix", user=user, groups=groups)


async def test_bindings_give_roles_and_tenants(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    b = Bindings(store, Pool("sqlite", 1))
    await b.bind("user:alice", "operator", ["acme"])
    await b.bind("group:auditors", "viewer", ["acme", "beta"])
    alice = b.apply(unix("alice", ("staff", "auditors")))
    assert alice.roles == {"operator", "viewer"} and alice.tenants == frozenset({"acme", "beta"})
    assert b.apply(unix("carol")).roles == frozenset()
    admin = Identity(kind="unix", user="root", roles=frozenset({"admin"}), tenants=None)
    assert b.apply(admin) is admin
    tls = Identity(kind="tls", user="alice")
    assert b.apply(tls) is tls, "bindings are for Unix callers only"
    # survives a reload from the store
    again = Bindings(store, Pool("sqlite", 1))
    await again.load()
    assert again.entries() == b.entries()
    assert await again.unbind("user:alice") is True
    assert await again.unbind("user:alice") is False
    await b.bind("group:ops", "admin", [])
    assert b.apply(unix("dave", ("ops",))).tenants is None
    with pytest.raises(errors.InvalidParams):
        await b.bind("alice", "viewer", ["acme"])
    store.close()
