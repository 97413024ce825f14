from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.daemon_harness import Daemon


@pytest.fixture
def daemon(tmp_path: Path) -> Iterator[Daemon]:
    d = Daemon(
        socket=tmp_path / "run" / "novacrond.sock",
        state_dir=tmp_path / "state",
        log=tmp_path / "novacrond.log",
    ).start()
    yield d
    rc = d.stop()
    assert rc in (0, None), d.log_text()
    assert "Traceback" not in d.log_text(), d.log_text()
