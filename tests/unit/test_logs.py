from __future__ import annotations

import json
import logging

from novacron.logs import JsonFormatter, KeyValueFormatter, kv


def record(msg: str, **fields: object) -> logging.LogRecord:
    rec = logging.LogRecord("novacron.t", logging.INFO, __file__, 1, msg, None, None)
    rec.__dict__.update(kv(**fields))
    return rec


def test_key_value_lines_quote_what_needs_quoting() -> None:
    line = KeyValueFormatter().format(record("vm.created", vm="web1", detail='a "b" c', n=3))
    assert "level=info" in line
    assert "event=vm.created" in line
    assert "vm=web1" in line
    assert 'detail="a \\"b\\" c"' in line
    assert "n=3" in line
    assert "\n" not in line


def test_json_lines() -> None:
    doc = json.loads(JsonFormatter().format(record("vm.deleted", vm="x")))
    assert doc["event"] == "vm.deleted"
    assert doc["vm"] == "x"
    assert doc["level"] == "info"
