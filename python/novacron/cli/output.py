"""Printing results: rich tables for people, JSON for scripts.

``console`` and ``errors`` (stdout and stderr) are made on first use: ``rich`` takes
~40 ms to import, which a ``--json`` command (a script's) never needs."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from rich.console import Console

_consoles: dict[str, Console] = {}


def _console(name: str = "console") -> Console:
    if name not in _consoles:
        from rich.console import Console  # noqa: PLC0415 - the reason is above

        _consoles[name] = Console(stderr=name == "errors")
    return _consoles[name]


def __getattr__(name: str) -> Console:
    """``output.console`` and ``output.errors`` (PEP 562)."""
    if name not in ("console", "errors"):
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return _console(name)


def as_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    from rich.table import Table  # noqa: PLC0415 - see the module's docstring
    from rich.text import Text  # noqa: PLC0415

    out = Table(show_edge=False, header_style="bold")
    for _, title in columns:
        out.add_column(title)
    for row in rows:  # values are text, never markup ("set [tls] cert" stays whole)
        out.add_row(*(Text(_cell(key, row.get(key))) for key, _ in columns))
    _console().print(out)


def _cell(key: str, value: Any) -> str:
    if key.endswith("_at"):
        return when(value)
    if value is None:
        return "-"
    return str(value)


def fields(doc: dict[str, Any], order: Sequence[str] | None = None) -> None:
    from rich.text import Text  # noqa: PLC0415 - see the module's docstring

    keys = list(order) if order else list(doc)
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        value = doc.get(key)
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        line = Text.assemble((f"{key:<{width}}", "bold"), "  ", _cell(key, value))
        _console().print(line, highlight=False)
