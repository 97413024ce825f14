"""What the two ends of a migration channel agree on before it opens.

The destination's ``migration.prepare`` answer says what its channel receiver takes::

    "channel": {"page_format": 4, "page_formats": [4, 5], "features": ["packed-pages"]}

``page_formats`` are the page engine's record stream versions it reads
(``docs/migration-wire.md``; a batch of another version is refused); ``page_format``
is the one a source of an earlier release must write for it (those read only that key
and write only version 4). ``features`` are the optional frames it reads:
``packed-pages`` is ``PACKED_PAGES`` (type 10). The source writes the newest version
both ends know and sends only the frames the destination named, so during a rolling
upgrade a VM can still move between hosts of this release and the earlier one, either
way; a destination that reads no version the source writes fails the migration before
anything moves. An answer without ``page_formats`` reads ``page_format`` alone; one
without ``channel`` comes from a destination older than this negotiation: page format
4, no optional frames. Unknown feature names and versions are ignored (a newer
destination may take more than this source knows of).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from novacron._core import OLDEST_WIRE_VERSION, WIRE_VERSION

__all__ = [
    "FEATURES",
    "LEGACY_PAGE_FORMAT",
    "PACKED_PAGES",
    "Incompatible",
    "Terms",
    "of_answer",
    "offered",
]

PACKED_PAGES = "packed-pages"
FEATURES = (PACKED_PAGES,)  # what this daemon's receiver takes
LEGACY_PAGE_FORMAT = 4  # what a destination that names nothing writes and reads
_MAX_FEATURES = 64
_MAX_FORMATS = 64
WRITTEN = range(OLDEST_WIRE_VERSION, WIRE_VERSION + 1)  # the page formats this node writes


class Incompatible(ValueError):
    """The destination's channel cannot take what this source sends (or its answer
    does not say what it takes in a form this source reads)."""


@dataclass(frozen=True)
class Terms:
    """How the source's sender works for one destination."""

    packed_heads: bool
    page_format: int = WIRE_VERSION

    def features(self) -> list[str]:
        """The optional frames this source sends, by name."""
        return [PACKED_PAGES] if self.packed_heads else []


def offered() -> dict[str, Any]:
    """The ``channel`` entry of this daemon's ``migration.prepare`` answer."""
    return {
        "page_format": LEGACY_PAGE_FORMAT,
        "page_formats": list(WRITTEN),
        "features": list(FEATURES),
    }


def of_answer(answer: Mapping[str, Any]) -> Terms:
    """The terms for a destination that answered ``migration.prepare`` with ``answer``.

    Raises :class:`Incompatible` when the destination reads no page format this daemon
    writes, or for a ``channel`` entry that is not as described above."""
    channel = answer.get("channel")
    page_format = LEGACY_PAGE_FORMAT
    formats: list[int] | None = None
    names: list[str] = []
    if channel is not None:
        if not isinstance(channel, Mapping):
            raise Incompatible("the destination's channel terms are not a map")
        named = channel.get("page_format")
        features = channel.get("features", [])
        if type(named) is not int:
            raise Incompatible("the destination's channel terms name no page format")
        page_format = named
        if (
            not isinstance(features, list)
            or len(features) > _MAX_FEATURES
            or not all(isinstance(f, str) for f in features)
        ):
            raise Incompatible("the destination's channel features are not a list of names")
        names = features
        listed = channel.get("page_formats")
        if listed is not None:
            if (
                not isinstance(listed, list)
                or len(listed) > _MAX_FORMATS
                or not all(type(f) is int for f in listed)
            ):
                raise Incompatible("the destination's page formats are not a list of versions")
            formats = listed
    readable = [f for f in (formats if formats is not None else [page_format]) if f in WRITTEN]
    if not readable:
        raise Incompatible(
            f"the destination reads page format "
            f"{formats if formats is not None else page_format}, this node writes "
            f"{WRITTEN[0]} to {WRITTEN[-1]}: a NovaCron release that reads one of them "
            "must run there"
        )
    return Terms(packed_heads=PACKED_PAGES in names, page_format=max(readable))
