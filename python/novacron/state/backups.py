"""Backups of the node's state store (``node.backup``): consistent copies taken while the
daemon runs, kept in ``<state_dir>/backups``, the newest ``[daemon] backups_kept``.

The store holds what libvirt does not: records and desired states, role bindings,
quotas, networks, operations and the hash-chained audit log. A copy is taken with
sqlite's online backup (one consistent snapshot; the daemon's other calls on the store
wait for it, a few milliseconds for a store of a few MB), written to a temporary name,
checked (``integrity_check``, the schema version, the VMs it holds), made one
self-contained file (no WAL), synced and renamed into place, mode 0600. Blocking: run it
on the store's thread.

Restoring is an offline step (``docs/operations.md``): stop the daemon, put the copy in
place of ``state.db`` (and remove ``state.db-wal`` / ``-shm``), start the daemon; its
reconciliation then compares the records with libvirt's domains as at every start.
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from novacron import errors

PREFIX = "state-"
SUFFIX = ".db"


@dataclass(frozen=True)
class Backups:
    directory: Path
    kept: int  # the newest this many are kept; older ones are removed after a new one

    def names(self) -> list[str]:
        """The backups there, oldest first (their names sort by the time they were taken)."""
        if not self.directory.is_dir():
            return []
        return sorted(
            p.name
            for p in self.directory.iterdir()
            if p.name.startswith(PREFIX) and p.name.endswith(SUFFIX) and p.is_file()
        )

    def take(self, db: sqlite3.Connection, now: float | None = None) -> dict[str, Any]:
        """Copies ``db`` into a new backup, checks it, removes the oldest past ``kept``;
        says what it made and what it removed."""
        try:
            self.directory.mkdir(mode=0o700, parents=True, exist_ok=True)
            os.chmod(self.directory, 0o700)
        except OSError as exc:
            raise errors.Internal(f"the backup failed: {exc}") from None
        path = self._new_path(time.time() if now is None else now)
        partial = path.with_name(f".{path.name}.partial")
        try:
            copy = sqlite3.connect(partial)
            try:
                os.chmod(partial, 0o600)
                db.backup(copy)
                copy.execute("PRAGMA journal_mode=DELETE")  # one self-contained file
                checked = _check(copy)
            finally:
                copy.close()
            _sync(partial)
            partial.rename(path)
            _sync(self.directory)
        except (sqlite3.Error, OSError) as exc:
            partial.unlink(missing_ok=True)
            raise errors.Internal(f"the backup failed: {exc}") from None
        removed = self._rotate(path)
        return {
            "path": str(path),
            "bytes": path.stat().st_size,
            **checked,
            "kept": self.names(),
            "removed": removed,
        }

    def _new_path(self, now: float) -> Path:
        """``state-20261204T120000Z-000.db``: the time, then a count within the second,
        so that names sort in the order taken (the count is one past the highest of that
        second, never a removed one's again)."""
        stamp = time.strftime("%Y%m%dT%H%M%SZ", time.gmtime(now))
        start = f"{PREFIX}{stamp}-"
        counts = [
            name[len(start) : -len(SUFFIX)] for name in self.names() if name.startswith(start)
        ]
        following = max((int(c) for c in counts if c.isdigit()), default=-1) + 1
        if following > 999:
            raise errors.Conflict("too many backups in one second")
        return self.directory / f"{start}{following:03d}{SUFFIX}"

    def _rotate(self, made: Path) -> list[str]:
        names = [n for n in self.names() if n != made.name]
        gone = names[: max(0, len(names) + 1 - self.kept)]
        for name in gone:
            with contextlib.suppress(FileNotFoundError):
                (self.directory / name).unlink()
        return gone


def _check(copy: sqlite3.Connection) -> dict[str, Any]:
    """What a copy holds, once sqlite found it sound (else the backup fails)."""
    integrity = copy.execute("PRAGMA integrity_check").fetchone()[0]
    if integrity != "ok":
        raise sqlite3.DatabaseError(f"the copy is not sound: {integrity}")
    return {
        "schema_version": copy.execute("PRAGMA user_version").fetchone()[0],
        "vms": copy.execute("SELECT count(*) FROM vms").fetchone()[0],
        "audit_entries": copy.execute("SELECT count(*) FROM audit").fetchone()[0],
        "integrity": integrity,
    }


def _sync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
