"""Printing results: rich tables for people, JSON for scripts."""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Sequence
from typing import Any

from rich.console import Console
from rich.table import Table

console = Console()
errors = Console(stderr=True)


def as_json(data: Any) -> None:
    sys.stdout.write(json.dumps(data, indent=2, sort_keys=True, default=str) + "\n")


def when(stamp: float | None) -> str:
    if not stamp:
        return "-"
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(stamp))


def table(rows: Sequence[dict[str, Any]], columns: Sequence[tuple[str, str]]) -> None:
    out = Table(show_edge=False, header_style="bold")
    for _, title in columns:
        out.add_column(title)
    for row in rows:
        out.add_row(*(_cell(key, row.get(key)) for key, _ in columns))
    console.print(out)


def _cell(key: str, value: Any) -> str:
    if key.endswith("_at"):
        return when(value)
    if value is None:
        return "-"
    return str(value)


def fields(doc: dict[str, Any], order: Sequence[str] | None = None) -> None:
    keys = list(order) if order else list(doc)
    width = max((len(k) for k in keys), default=0)
    for key in keys:
        value = doc.get(key)
        if isinstance(value, dict | list):
            value = json.dumps(value, default=str)
        console.print(f"[bold]{key:<{width}}[/bold]  {_cell(key, value)}", highlight=False)
