"""Channel terms: what a source sends to a destination, from its prepare answer."""

from __future__ import annotations

from typing import Any

import msgpack
import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron import errors
from novacron._core import OLDEST_WIRE_VERSION, WIRE_VERSION
from novacron.migration import outgoing, terms

WRITTEN = list(range(OLDEST_WIRE_VERSION, WIRE_VERSION + 1))


def test_this_release_offers_its_page_formats_and_packed_pages() -> None:
    offered = terms.offered()
    assert offered == {
        "page_format": terms.LEGACY_PAGE_FORMAT,
        "page_formats": WRITTEN,
        "features": ["packed-pages"],
    }
    assert WRITTEN == [4, 5]
    # as it crosses the wire (the answer is msgpack), a source of this release takes it
    # and writes the newest version
    answer = msgpack.unpackb(msgpack.packb({"node": "b", "channel": offered}))
    assert terms.of_answer(answer) == terms.Terms(packed_heads=True, page_format=WIRE_VERSION)
    assert terms.of_answer(answer).features() == ["packed-pages"]


def test_a_source_of_the_earlier_release_reads_the_version_it_writes() -> None:
    # (the earlier release's check: `page_format` must equal its own version, 4)
    assert terms.offered()["page_format"] == 4


def test_a_destination_of_the_earlier_release_gets_version_4() -> None:
    answer = {"channel": {"page_format": 4, "features": ["packed-pages"]}}
    assert terms.of_answer(answer) == terms.Terms(packed_heads=True, page_format=4)


def test_a_destination_from_before_the_terms_gets_version_4_and_pages_frames_only() -> None:
    assert terms.LEGACY_PAGE_FORMAT in WRITTEN  # else this release cannot reach it
    legacy = terms.Terms(packed_heads=False, page_format=terms.LEGACY_PAGE_FORMAT)
    assert terms.of_answer({"op": "x", "node": "b"}) == legacy
    assert legacy.features() == []


def test_the_newest_version_both_know_is_written_and_unknown_ones_ignored() -> None:
    def agreed(formats: list[int]) -> int:
        channel = {"page_format": 4, "page_formats": formats}
        return terms.of_answer({"channel": channel}).page_format

    assert agreed([4]) == 4
    assert agreed([5, 4]) == 5
    assert agreed([4, 5, 6, 9]) == 5  # a newer destination
    assert agreed([3, 5]) == 5
    # `page_formats` is what a destination of this release reads: it decides
    with pytest.raises(terms.Incompatible, match=r"\[6, 7\]"):
        agreed([6, 7])


def test_features_are_taken_by_name_and_unknown_ones_ignored() -> None:
    answer = {"channel": {"page_format": 4, "features": ["x-future", "packed-pages"]}}
    assert terms.of_answer(answer).packed_heads
    answer = {"channel": {"page_format": 4, "features": ["x-future"]}}
    assert not terms.of_answer(answer).packed_heads
    assert not terms.of_answer({"channel": {"page_format": 4}}).packed_heads


@pytest.mark.parametrize(
    "channel",
    [
        {"page_format": WIRE_VERSION + 1, "features": ["packed-pages"]},
        {"page_format": OLDEST_WIRE_VERSION - 1},
        {"page_format": str(WIRE_VERSION)},
        {"page_format": True},
        {"features": ["packed-pages"]},
        {"page_formats": [4, 5]},
        {"page_format": 4, "page_formats": [3]},
        {"page_format": 4, "page_formats": []},
        {"page_format": 4, "page_formats": 5},
        {"page_format": 4, "page_formats": [True]},
        {"page_format": 4, "page_formats": ["5"]},
        {"page_format": 4, "page_formats": [4] * 65},
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
    assert f"writes {OLDEST_WIRE_VERSION} to {WIRE_VERSION}" in caught.value.message
    assert caught.value.details == {"vm": "vm1", "node": "b"}


values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=20) | st.binary(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=12), inner),
    max_leaves=12,
)


def _int(value: Any) -> bool:
    return type(value) is int


def _ints(value: Any) -> bool:
    return isinstance(value, list) and all(type(v) is int for v in value)


@given(
    st.dictionaries(
        st.sampled_from(["channel", "node", "op", "page_format", "features"]) | st.text(),
        values,
    )
    | st.fixed_dictionaries({"channel": st.dictionaries(st.text(max_size=12), values)})
    | st.fixed_dictionaries(
        {
            "channel": st.fixed_dictionaries(
                {"page_format": values | st.sampled_from(WRITTEN), "features": values},
                optional={"page_formats": values | st.lists(st.integers(0, 9), max_size=4)},
            )
        }
    )
)
def test_any_answer_gives_terms_or_a_clear_refusal(answer: dict[str, Any]) -> None:
    try:
        agreed = terms.of_answer(answer)
    except terms.Incompatible as exc:
        assert str(exc)
        channel = answer.get("channel")
        assert channel is not None
        if not isinstance(channel, dict):
            return
        page_format, formats = channel.get("page_format"), channel.get("page_formats")
        features = channel.get("features", [])
        ok_features = isinstance(features, list) and all(isinstance(f, str) for f in features)
        readable = (
            set(formats) & set(WRITTEN)
            if isinstance(formats, list) and _ints(formats) and len(formats) <= 64
            else ({page_format} & set(WRITTEN) if formats is None and _int(page_format) else set())
        )
        assert not (type(page_format) is int and ok_features and len(features) <= 64 and readable)
    else:
        # granted only where the answer says so
        channel = answer.get("channel")
        if channel is None:
            assert agreed == terms.Terms(packed_heads=False, page_format=4)
        else:
            assert type(channel["page_format"]) is int
            formats = channel.get("page_formats")
            named = formats if formats is not None else [channel["page_format"]]
            assert agreed.page_format == max(set(named) & set(WRITTEN))
            assert agreed.packed_heads == ("packed-pages" in channel.get("features", []))
