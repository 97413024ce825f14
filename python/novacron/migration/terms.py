"""What the two ends of a migration channel agree on before it opens.

The destination's ``migration.prepare`` answer says what its channel receiver takes::

    "channel": {"page_format": 4, "features": ["packed-pages"]}

``page_format`` is the page engine's record stream version (``docs/migration-wire.md``;
a batch of another version is refused), ``features`` the optional frames it reads:
``packed-pages`` is ``PACKED_PAGES`` (type 10). The source sends only what the
destination named, so during a rolling upgrade a VM can still move to a host that runs
the earlier release; a page format the source does not write fails the migration before
anything moves. An answer without ``channel`` comes from a destination older than this
negotiation: page format 4, no optional frames. Unknown feature names are ignored (a
newer destination may take more than this source knows of).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from novacron._core import WIRE_VERSION

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


class Incompatible(ValueError):
    """The destination's channel cannot take what this source sends (or its answer
    does not say what it takes in a form this source reads)."""


@dataclass(frozen=True)
class Terms:
    """How the source's sender works for one destination."""

    packed_heads: bool

    def features(self) -> list[str]:
        """The optional frames this source sends, by name."""
        return [PACKED_PAGES] if self.packed_heads else []


def offered() -> dict[str, Any]:
    """The ``channel`` entry of this daemon's ``migration.prepare`` answer."""
    return {"page_format": WIRE_VERSION, "features": list(FEATURES)}


def of_answer(answer: Mapping[str, Any]) -> Terms:
    """The terms for a destination that answered ``migration.prepare`` with ``answer``.

    Raises :class:`Incompatible` for a page format other than this daemon's, or a
    ``channel`` entry that is not as described above."""
    channel = answer.get("channel")
    page_format: object = LEGACY_PAGE_FORMAT
    names: list[str] = []
    if channel is not None:
        if not isinstance(channel, Mapping):
            raise Incompatible("the destination's channel terms are not a map")
        page_format = channel.get("page_format")
        features = channel.get("features", [])
        if type(page_format) is not int:
            raise Incompatible("the destination's channel terms name no page format")
        if (
            not isinstance(features, list)
            or len(features) > _MAX_FEATURES
            or not all(isinstance(f, str) for f in features)
        ):
            raise Incompatible("the destination's channel features are not a list of names")
        names = features
    if page_format != WIRE_VERSION:
        raise Incompatible(
            f"the destination reads page format {page_format}, this node writes "
            f"{WIRE_VERSION}: both must run a NovaCron release with the same page format"
        )
    return Terms(packed_heads=PACKED_PAGES in names)
