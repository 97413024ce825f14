from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.cluster.etcd import (
    KeyValue,
    WatchCompacted,
    _watch_batch,
    b64,
    prefix_end,
    unb64,
)


@given(st.binary(min_size=1, max_size=8), st.binary(max_size=8), st.binary(max_size=8))
def test_prefix_end_bounds_exactly_the_prefixed_keys(
    prefix: bytes, suffix: bytes, other: bytes
) -> None:
    end = prefix_end(prefix)
    inside = prefix + suffix
    assert prefix <= inside < end or end == b"\x00"
    if not other.startswith(prefix):
        assert not (prefix <= other < end) or end == b"\x00"


def test_prefix_end_examples() -> None:
    assert prefix_end(b"/novacron/v1/nodes/") == b"/novacron/v1/nodes0"
    assert prefix_end(b"a\xff") == b"b"
    assert prefix_end(b"\xff\xff") == b"\x00"  # every key


@given(st.binary(max_size=64))
def test_base64_round_trip(data: bytes) -> None:
    assert unb64(b64(data)) == data


def test_key_value_defaults_follow_protobuf_json() -> None:
    kv = KeyValue.from_json({"key": b64(b"k"), "create_revision": "7", "mod_revision": "9"})
    assert kv == KeyValue(b"k", b"", 7, 9, 0)


def test_watch_lines() -> None:
    line = json.dumps(
        {
            "result": {
                "header": {"revision": "12"},
                "events": [
                    {"kv": {"key": b64(b"/a"), "value": b64(b"x"), "mod_revision": "11"}},
                    {"type": "DELETE", "kv": {"key": b64(b"/b"), "mod_revision": "12"}},
                ],
            }
        }
    )
    batch = _watch_batch(line)
    assert batch is not None
    revision, events = batch
    assert revision == 12
    assert [(e.kind, e.kv.key, e.kv.value) for e in events] == [
        ("put", b"/a", b"x"),
        ("delete", b"/b", b""),
    ]
    created = _watch_batch(json.dumps({"result": {"header": {"revision": "3"}, "created": True}}))
    assert created == (0, [])
    assert _watch_batch("  ") is None
    assert _watch_batch(json.dumps({"error": {"grpc_code": 14}})) is None


def test_a_watch_from_a_compacted_revision_says_so() -> None:
    """etcd cancels such a watch with the compaction's revision: the caller must read
    the keys again (retrying the same revision would fail forever)."""
    line = json.dumps(
        {"result": {"header": {"revision": "40"}, "canceled": True, "compact_revision": "35"}}
    )
    with pytest.raises(WatchCompacted) as caught:
        _watch_batch(line)
    assert caught.value.compact_revision == 35
