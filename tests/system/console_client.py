"""A test's view of one ``vm.console.open`` (or ``watch``): the output so far and how it
ended."""

from __future__ import annotations

import time

from novacron.client import SyncClient


class Console:
    """One client's console: what it printed so far, and how it ended."""

    def __init__(
        self,
        client: SyncClient,
        vm: str,
        force: bool = False,
        watch: bool = False,
        scrollback: int = 0,
    ) -> None:
        self.client = client
        method = "vm.console.watch" if watch else "vm.console.open"
        opened = client.call(method, name=vm, force=force or None, scrollback=scrollback or None)
        assert opened["read_only"] is watch
        self.number = opened["console"]
        self.output = b""
        self.chunks: list[bytes] = []  # each notification's data, in order
        self.closed: dict[str, object] | None = None

    def pump(self, timeout: float = 0.2) -> None:
        for note in self.client.notifications(timeout):
            payload = note.params[0]
            if payload["console"] < self.number:
                # an earlier console of this client, closed: its output the daemon sent
                # before answering the close (none follows that answer), read with it
                continue
            assert payload["console"] == self.number  # (one open console per client here)
            if note.method == "console":
                self.output += payload["data"]
                self.chunks.append(payload["data"])
            elif note.method == "console.closed":
                self.closed = payload

    def wait_for(self, needle: bytes, timeout: float = 120, after: int = 0) -> None:
        deadline = time.monotonic() + timeout
        while needle not in self.output[after:]:
            assert time.monotonic() < deadline, f"{needle!r} not in {self.output[-800:]!r}"
            assert self.closed is None, f"console closed: {self.closed}"
            self.pump()

    def wait_closed(self, timeout: float = 60) -> dict[str, object]:
        deadline = time.monotonic() + timeout
        while self.closed is None:
            assert time.monotonic() < deadline, "no console.closed"
            self.pump()
        return self.closed
