"""Identities read from ``getpeercert()`` dicts, including hostile ones."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from novacron.pki.names import ROLES, from_peercert, san_uris


def peercert(cn: Any, uris: list[str], serial: str = "0A") -> dict[str, Any]:
    return {
        "subject": ((("commonName", cn),),),
        "subjectAltName": (*(("URI", u) for u in uris), ("DNS", "x")),
        "serialNumber": serial,
    }


def test_roles_and_tenants_from_san() -> None:
    found = from_peercert(peercert("alice", san_uris(["operator"], ["acme", "beta"])))
    assert found is not None
    assert (found.name, found.roles, found.tenants, found.serial) == (
        "alice",
        frozenset({"operator"}),
        frozenset({"acme", "beta"}),
        10,
    )


def test_unusable_certificates() -> None:
    assert from_peercert(None) is None
    assert from_peercert({}) is None
    assert from_peercert(peercert("Alice Smith", [])) is None
    found = from_peercert(peercert("bob", ["urn:novacron:role:god", "urn:novacron:tenant:../x"]))
    assert found is not None and found.roles == frozenset() and found.tenants == frozenset()


@given(st.text(max_size=40), st.lists(st.text(max_size=60), max_size=5))
def test_never_more_than_the_certificate_says(cn: str, uris: list[str]) -> None:
    found = from_peercert(peercert(cn, uris))
    if found is None:
        return
    assert found.roles <= set(ROLES)
    for role in found.roles:
        assert f"urn:novacron:role:{role}" in uris
    for tenant in found.tenants:
        assert f"urn:novacron:tenant:{tenant}" in uris
