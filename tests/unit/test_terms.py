"""Channel terms: what a source sends to a destination, from its prepare answer."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron import errors
from novacron._core import WIRE_VERSION
from novacron.migration import outgoing, terms


def test_this_release_offers_its_own_page_format_and_packed_pages() -> None:
    offered = terms.offered()
    assert offered == {"page_format": WIRE_VERSION, "features": ["packed-pages"]}
    # as it crosses the wire (the answer is msgpack), a source of this release takes it
    answer = msgpack.unpackb(msgpack.packb({"node": "b", "channel": offered}))
    assert terms.of_answer(answer) == terms.Terms(packed_heads=True)
    assert terms.of_answer(answer).features() == ["packed-pages"]


def test_a_destination_from_before_the_terms_gets_pages_frames_only() -> None:
    assert WIRE_VERSION == terms.LEGACY_PAGE_FORMAT  # else this release cannot reach it
    assert terms.of_answer({"op": "x", "node": "b"}) == terms.Terms(packed_heads=False)
    assert terms.Terms(packed_heads=False).features() == []


def test_features_are_taken_by_name_and_unknown_ones_ignored() -> None:
    answer = {"channel": {"page_format": WIRE_VERSION, "features": ["x-future", "packed-pages"]}}
    assert terms.of_answer(answer).packed_heads
    answer = {"channel": {"page_format": WIRE_VERSION, "features": ["x-future"]}}
    assert not terms.of_answer(answer).packed_heads
    assert not terms.of_answer({"channel": {"page_format": WIRE_VERSION}}).packed_heads


@pytest.mark.parametrize(
    "channel",
    [
        {"page_format": WIRE_VERSION + 1, "features": ["packed-pages"]},
        {"page_format": WIRE_VERSION - 1},
        {"page_format": str(WIRE_VERSION)},
        {"page_format": True},
        {"features": ["packed-pages"]},
        {"page_format": WIRE_VERSION, "features": "packed-pages"},
        {"page_format": WIRE_VERSION, "features": [1]},
        {"page_format": WIRE_VERSION, "features": ["f"] * 65},
        ["page_format", WIRE_VERSION],
        WIRE_VERSION,
    ],
)
def test_another_page_format_or_malformed_terms_are_refused(channel: Any) -> None:
    with pytest.raises(terms.Incompatible):
        terms.of_answer({"channel": channel})


def test_the_source_fails_an_incompatible_destination_as_a_migration_failure() -> None:
    answer = {"node": "b", "channel": {"page_format": WIRE_VERSION + 1, "features": []}}
    with pytest.raises(errors.MigrationFailed) as caught:
        outgoing._terms(answer, "vm1")
    assert caught.value.code == "migration_failed"
    assert f"page format {WIRE_VERSION + 1}" in caught.value.message
    assert f"writes {WIRE_VERSION}" in caught.value.message
    assert caught.value.details == {"vm": "vm1", "node": "b"}


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


@given(
    st.dictionaries(
        st.sampled_from(["channel", "node", "op", "page_format", "features"]) | st.text(),
        values,
    )
    | st.fixed_dictionaries({"channel": st.dictionaries(st.text(max_size=12), values)})
    | st.fixed_dictionaries(
        {"channel": st.fixed_dictionaries({"page_format": values, "features": values})}
    )
)
def test_any_answer_gives_terms_or_a_clear_refusal(answer: dict[str, Any]) -> None:
    try:
        agreed = terms.of_answer(answer)
    except terms.Incompatible as exc:
        assert str(exc)
        channel = answer.get("channel")
        assert channel is not None
        ok_format = isinstance(channel, dict) and channel.get("page_format") == WIRE_VERSION
        features = channel.get("features", []) if isinstance(channel, dict) else None
        ok_features = isinstance(features, list) and all(isinstance(f, str) for f in features)
        assert not (
            ok_format
            and type(channel.get("page_format")) is int
            and ok_features
            and len(features or ()) <= 64
        )
    else:
        # granted only where the answer says so
        channel = answer.get("channel")
        if channel is None:
            assert agreed == terms.Terms(packed_heads=False)
        else:
            assert channel["page_format"] == WIRE_VERSION
            assert agreed.packed_heads == ("packed-pages" in channel.get("features", []))
