from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.errors import InvalidParams
from novacron.rpc.params import NAME_RE, Params, check_name, check_path, check_text


@given(st.text(max_size=80))
def test_check_name_accepts_exactly_the_documented_names(text: str) -> None:
    ok = bool(NAME_RE.fullmatch(text))
    if ok:
        assert check_name(text) == text
        assert 1 <= len(text) <= 63
    else:
        with pytest.raises(InvalidParams):
            check_name(text)


@pytest.mark.parametrize(
    "bad", ["", "-a", "A", "a b", "a/b", "../x", "x" * 64, "é", 5, None, ["a"]]
)
def test_bad_names(bad: object) -> None:
    with pytest.raises(InvalidParams):
        check_name(bad)


@pytest.mark.parametrize("bad", ["rel/path", "/a/../b", "/a/..", "/a\x00b", "x" * 5000])
def test_bad_paths(bad: str) -> None:
    with pytest.raises(InvalidParams):
        check_path(bad, "p")


def test_text_refuses_control_and_surrogates() -> None:
    for bad in ("a\x00", "a\x1b[31m", "\ud800", "\ufffe"):
        with pytest.raises(InvalidParams):
            check_text(bad, "t")
    assert check_text("tab\tok", "t") == "tab\tok"


def test_params_reader() -> None:
    p = Params({"name": "a", "n": 3, "f": True, "x": 1.5, "l": [1]})
    assert p.name() == "a"
    assert p.integer("n", 1, 5) == 3
    assert p.flag("f") is True
    assert p.number("x", 0, 2, default=0) == 1.5
    assert p.array("l", 2) == [1]
    assert p.integer("missing", 1, 5, default=2) == 2
    p.done()


@pytest.mark.parametrize(
    ("args", "reader"),
    [
        ({"n": True}, lambda p: p.integer("n", 0, 9)),
        ({"n": 10}, lambda p: p.integer("n", 0, 9)),
        ({"n": "3"}, lambda p: p.integer("n", 0, 9)),
        ({"f": 1}, lambda p: p.flag("f")),
        ({"l": {}}, lambda p: p.array("l", 3)),
        ({"l": [1, 2, 3, 4]}, lambda p: p.array("l", 3)),
        ({}, lambda p: p.name()),
        ({"x": True}, lambda p: p.number("x", 0, 1, 0)),
    ],
)
def test_params_refusals(args: dict[str, Any], reader: Callable[[Params], object]) -> None:
    with pytest.raises(InvalidParams):
        reader(Params(args))


def test_unknown_parameters_are_refused_by_name() -> None:
    p = Params({"name": "a", "nmae": "b"})
    p.name()
    with pytest.raises(InvalidParams) as info:
        p.done()
    assert info.value.details["unknown"] == ["nmae"]
