"""The CLI's printing: values are shown as text, never read as rich markup."""

from __future__ import annotations

import io

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console

from novacron.cli import output


def test_brackets_in_values_are_printed(capsys: pytest.CaptureFixture[str]) -> None:
    message = "set [tls] cert, key and ca; [bold]not bold[/bold] [/]"
    output.table([{"detail": message}], [("detail", "DETAIL")])
    output.fields({"error": message, "[key]": 1})
    out = capsys.readouterr().out
    assert out.count("set [tls] cert, key and ca") == 2
    assert out.count("[bold]not bold[/bold] [/]") == 2
    assert "[key]" in out


@settings(max_examples=200)
@given(st.text(alphabet="[]/\\abc =#@", max_size=40))
def test_any_value_survives_fields(value: str) -> None:
    console = Console(width=500, record=True, file=io.StringIO())
    output._consoles["console"] = console
    try:
        output.fields({"v": value})
        output.table([{"v": value}], [("v", "V")])
        text = console.export_text()
        assert text.startswith(f"v  {value}\n"), text
        assert text.splitlines()[-1].strip() == value.strip(), text
    finally:
        output._consoles.pop("console")
