"""The audit chain on a real store: appends link up, every kind of tampering is found."""

from __future__ import annotations

import hashlib
import sqlite3
from pathlib import Path
from typing import Any

import msgpack
from hypothesis import given
from hypothesis import strategies as st

from novacron.auth.audit import AuditLog, params_digest, verify
from novacron.auth.identity import Identity
from novacron.blocking import Pool
from novacron.state.db import StateStore


async def filled(tmp_path: Path, n: int = 5) -> StateStore:
    store = StateStore(tmp_path / "s.db")
    log = AuditLog(store, Pool("sqlite", 1))
    who = Identity(kind="unix", user="root")
    for i in range(n):
        await log.record(who, "vm.start", {"name": f"vm{i}"}, "ok", "acme")
    return store


async def test_chain_verifies_and_finds_edits(tmp_path: Path) -> None:
    store = await filled(tmp_path)
    assert verify(store)["ok"] and verify(store)["entries"] == 5
    db = sqlite3.connect(tmp_path / "s.db")
    with db:
        db.execute("UPDATE audit SET outcome = 'not_found' WHERE id = 4")
    bad = verify(store)
    assert (bad["ok"], bad["first_bad"], bad["entries"]) == (False, 4, 3)
    with db:
        db.execute("UPDATE audit SET outcome = 'ok' WHERE id = 4")
        db.execute("DELETE FROM audit WHERE id = 1")
    assert verify(store)["first_bad"] == 1
    db.close()
    store.close()


async def test_a_forged_row_with_a_fresh_hash_breaks_the_link(tmp_path: Path) -> None:
    from novacron.state.db import audit_hash

    store = await filled(tmp_path)
    row = store.audit_entries(1, 1)[0]  # entry 2
    row["principal"] = "unix:mallory"
    row["hash"] = audit_hash(row)  # recomputed, so entry 2 alone looks fine
    db = sqlite3.connect(tmp_path / "s.db")
    with db:
        db.execute(
            "UPDATE audit SET principal = ?, hash = ? WHERE id = 2", (row["principal"], row["hash"])
        )
    assert verify(store)["first_bad"] == 3  # entry 3 no longer points at entry 2
    db.close()
    store.close()


def test_digest_is_canonical() -> None:
    assert params_digest({"b": 1, "a": [1, 2]}) == params_digest({"a": [1, 2], "b": 1})
    assert params_digest({"a": b"\x00"}) != params_digest({"a": "x"})


def sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def test_digest_texts_are_the_documented_ones() -> None:
    # params JSON can carry: that JSON, keys sorted, no spaces
    assert params_digest({"name": "vm1", "vcpus": 2, "a": [None, True, 1.5]}) == sha(
        '{"a":[null,true,1.5],"name":"vm1","vcpus":2}'
    )
    # any bin or extension: "bin:" and the tagged copy's JSON
    assert params_digest({"name": "c1", "data": b"\x00\xff"}) == sha(
        'bin:{"s:data":"b:00ff","s:name":"s:c1"}'
    )
    assert params_digest({b"k": 1, "k": msgpack.ExtType(5, b"x")}) == sha(
        'bin:{"b:6b":1,"s:k":"x:5:78"}'
    )
    assert params_digest([msgpack.Timestamp(1, 0)]) == sha('bin:["x:-1:00000001"]')


def test_str_and_bin_keys_in_one_map_have_a_digest() -> None:
    # this failed (a str and a bytes key cannot be sorted together), and the call's
    # audit entry was lost
    assert params_digest({"a": 1, b"a": 2}) != params_digest({"a": 2, b"a": 1})


# what the daemon's decoder can hand the log: keys are str or bin (strict_map_key)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**63), 2**64 - 1),
    st.floats(allow_nan=False),
    st.text(max_size=8),
    st.binary(max_size=8),
    st.builds(msgpack.ExtType, st.integers(0, 127), st.binary(max_size=4)),
)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(
        st.lists(inner, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.binary(max_size=4)), inner, max_size=4),
    ),
    max_leaves=20,
)


def reordered(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: reordered(value[k]) for k in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(v) for v in value]
    return value


@given(values)
def test_any_decoded_params_have_a_digest_whatever_the_key_order(params: Any) -> None:
    digest = params_digest(params)
    assert len(digest) == 64 and digest == params_digest(reordered(params))
    again = msgpack.unpackb(msgpack.packb(params), raw=False, strict_map_key=False)
    assert params_digest(again) == digest  # as the daemon would decode it


def normal(value: Any) -> Any:
    """A value's identity, map order aside: equal exactly when two params are the same."""
    if isinstance(value, dict):
        return ("map", sorted((type(k).__name__, k, repr(normal(v))) for k, v in value.items()))
    if isinstance(value, list):
        return ("array", [normal(v) for v in value])
    return (type(value).__name__, value)


@given(values, values)
def test_different_params_have_different_digests(a: Any, b: Any) -> None:
    if normal(a) != normal(b):
        assert params_digest(a) != params_digest(b)
