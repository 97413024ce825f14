"""novacron.cli.argtypes: the seconds the CLI uses itself are finite and in range."""

from __future__ import annotations

import argparse
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from novacron.cli.argtypes import seconds


@given(st.floats(allow_nan=True, allow_infinity=True), st.booleans())
def test_seconds_take_exactly_the_finite_values_in_range(value: float, zero: bool) -> None:
    parse = seconds(3600, zero=zero)
    fits = math.isfinite(value) and (value > 0 or (zero and value == 0)) and value <= 3600
    if fits:
        assert parse(repr(value)) == value
    else:
        with pytest.raises(argparse.ArgumentTypeError, match="seconds must be"):
            parse(repr(value))


def test_seconds_say_what_is_wrong() -> None:
    with pytest.raises(argparse.ArgumentTypeError, match="'soon' is not a number"):
        seconds(10)("soon")
    with pytest.raises(argparse.ArgumentTypeError, match="more than 0 and at most 10"):
        seconds(10)("0")
    with pytest.raises(argparse.ArgumentTypeError, match="from 0 to 10"):
        seconds(10, zero=True)("-0.5")
    assert seconds(10, zero=True)("0") == 0
