from __future__ import annotations

import pytest

from novacron import errors

CODES = [
    "invalid_request",
    "method_not_found",
    "invalid_params",
    "unauthenticated",
    "permission_denied",
    "not_found",
    "already_exists",
    "conflict",
    "unavailable",
    "timeout",
    "too_large",
    "insufficient_resources",
    "rate_limited",
    "quota_exceeded",
    "migration_failed",
    "cancelled",
    "internal",
]


def test_every_documented_code_has_a_class() -> None:
    assert sorted(errors.ERRORS_BY_CODE) == sorted(CODES)


@pytest.mark.parametrize("code", CODES)
def test_wire_round_trip(code: str) -> None:
    exc = errors.ERRORS_BY_CODE[code]("msg", {"k": 1})
    again = errors.from_wire(exc.to_wire())
    assert type(again) is type(exc)
    assert (again.code, again.message, again.details) == (code, "msg", {"k": 1})


def test_unknown_and_malformed_errors() -> None:
    newer = errors.from_wire({"code": "rate_limited", "message": "slow down"})
    assert newer.code == "rate_limited"
    assert errors.from_wire("garbage").code == "internal"
    assert "details" not in errors.NotFound("x").to_wire()
