"""Option types the CLI checks itself: values it uses locally (sleeps, timeouts), where
NaN, infinity or a negative number would crash the client or wait forever."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def seconds(most: float, zero: bool = False) -> Callable[[str], float]:
    """An argparse type: a finite number of seconds above 0 (or 0 too, with ``zero``) and
    at most ``most``."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
        bad = not math.isfinite(value) or value < 0 or (value == 0 and not zero)
        if bad or value > most:
            span = f"from 0 to {most:.0f}" if zero else f"more than 0 and at most {most:.0f}"
            raise argparse.ArgumentTypeError(f"{text!r}: seconds must be {span}")
        return value

    return parse
