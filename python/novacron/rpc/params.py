"""Reading and checking named RPC arguments.

Handlers read every argument through :class:`Params` and finish with :meth:`Params.done`,
which refuses unknown names, so a typo in a client is an ``invalid_params`` error and not
a silently ignored option.
"""

from __future__ import annotations

import re
from typing import Any

from novacron.errors import InvalidParams

NAME_RE = re.compile(r"[a-z0-9][a-z0-9._-]{0,62}")
MAX_STRING = 4096


def check_name(value: Any, what: str = "name") -> str:
    if not isinstance(value, str) or not NAME_RE.fullmatch(value):
        raise InvalidParams(
            f"{what} must be 1-63 characters of [a-z0-9._-] starting with a letter or digit",
            {"param": what},
        )
    return value


def check_text(value: Any, what: str, max_len: int = MAX_STRING, multiline: bool = False) -> str:
    if not isinstance(value, str):
        raise InvalidParams(f"{what} must be a string", {"param": what})
    if len(value) > max_len:
        raise InvalidParams(f"{what} is longer than {max_len} characters", {"param": what})
    allowed = "\t\n\r" if multiline else "\t"
    if any((ord(c) < 0x20 and c not in allowed) or 0x7F <= ord(c) < 0xA0 for c in value):
        raise InvalidParams(f"{what} contains control characters", {"param": what})
    if any(0xD800 <= ord(c) <= 0xDFFF or ord(c) in (0xFFFE, 0xFFFF) for c in value):
        raise InvalidParams(f"{what} contains characters XML cannot carry", {"param": what})
    return value


def check_path(value: Any, what: str) -> str:
    path = check_text(value, what)
    if not path.startswith("/"):
        raise InvalidParams(f"{what} must be an absolute path", {"param": what})
    if "/../" in path + "/" or path.endswith("/.."):
        raise InvalidParams(f"{what} must not contain '..'", {"param": what})
    return path


def check_int(value: Any, what: str, lo: int, hi: int) -> int:
    if type(value) is not int:
        raise InvalidParams(f"{what} must be an integer", {"param": what})
    if not lo <= value <= hi:
        raise InvalidParams(f"{what} must be between {lo} and {hi}", {"param": what})
    return value


class Params:
    def __init__(self, args: dict[str, Any]) -> None:
        self._args = args
        self._seen: set[str] = set()

    def raw(self) -> dict[str, Any]:
        """A copy of every argument as received (to pass a call on unchanged)."""
        return dict(self._args)

    def given(self, key: str) -> bool:
        """Whether the caller passed ``key`` (with a non-nil value)."""
        return self._args.get(key) is not None

    def _get(self, key: str, required: bool) -> Any:
        self._seen.add(key)
        if key not in self._args or self._args[key] is None:
            if required:
                raise InvalidParams(f"missing parameter {key!r}", {"param": key})
            return None
        return self._args[key]

    def name(self, key: str = "name", default: str | None = None) -> str:
        value = self._get(key, default is None)
        return default if value is None and default is not None else check_name(value, key)

    def opt_name(self, key: str) -> str | None:
        value = self._get(key, False)
        return None if value is None else check_name(value, key)

    def integer(self, key: str, lo: int, hi: int, default: int | None = None) -> int:
        value = self._get(key, default is None)
        if value is None and default is not None:
            return default
        return check_int(value, key, lo, hi)

    def number(self, key: str, lo: float, hi: float, default: float) -> float:
        value = self._get(key, False)
        if value is None:
            return default
        if type(value) not in (int, float) or not lo <= value <= hi:
            raise InvalidParams(f"{key} must be a number between {lo} and {hi}", {"param": key})
        return float(value)

    def flag(self, key: str, default: bool = False) -> bool:
        value = self._get(key, False)
        if value is None:
            return default
        if type(value) is not bool:
            raise InvalidParams(f"{key} must be a boolean", {"param": key})
        return value

    def text(
        self,
        key: str,
        default: str | None = None,
        max_len: int = MAX_STRING,
        multiline: bool = False,
    ) -> str:
        value = self._get(key, default is None)
        if value is None and default is not None:
            return default
        return check_text(value, key, max_len, multiline)

    def binary(self, key: str, max_len: int) -> bytes:
        """Bytes (MessagePack bin; text is taken as its UTF-8), 1 to ``max_len`` of them."""
        value = self._get(key, True)
        if isinstance(value, str):
            value = value.encode()
        if not isinstance(value, bytes) or not 1 <= len(value) <= max_len:
            raise InvalidParams(
                f"{key} must be 1 to {max_len} bytes (binary or text)", {"param": key}
            )
        return value

    def mapping(self, key: str, max_items: int = 64) -> dict[str, Any]:
        value = self._get(key, False)
        if value is None:
            return {}
        if not isinstance(value, dict) or len(value) > max_items:
            raise InvalidParams(f"{key} must be a map of at most {max_items} items", {"param": key})
        return value

    def opt_text(self, key: str, max_len: int = MAX_STRING) -> str | None:
        value = self._get(key, False)
        return None if value is None else check_text(value, key, max_len)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self._get(key, False)
        if value is None:
            return default
        if value not in choices:
            raise InvalidParams(f"{key} must be one of {', '.join(choices)}", {"param": key})
        return str(value)

    def opt_path(self, key: str) -> str | None:
        value = self._get(key, False)
        return None if value is None else check_path(value, key)

    def array(self, key: str, max_items: int) -> list[Any]:
        value = self._get(key, False)
        if value is None:
            return []
        if not isinstance(value, list):
            raise InvalidParams(f"{key} must be an array", {"param": key})
        if len(value) > max_items:
            raise InvalidParams(f"{key} has more than {max_items} items", {"param": key})
        return value

    def done(self) -> None:
        unknown = sorted(set(self._args) - self._seen)
        if unknown:
            raise InvalidParams(f"unknown parameter(s): {', '.join(unknown)}", {"unknown": unknown})
