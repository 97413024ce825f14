"""Runs daemons under a child subreaper that reaps their orphans at once.

    python subreaper.py 'virtlogd -d -p PIDFILE' 'libvirtd -d --listen -p PIDFILE'

runs each command in turn (each a daemon that forks into the background and whose
foreground process exits once it is up), then waits for every process that ends up
its child until none is left. ``PR_SET_CHILD_SUBREAPER`` makes the daemons, and the
QEMU processes libvirtd double-forks, children of this process instead of PID 1.

Why: libvirtd stops a QEMU (``virsh destroy``, the source of a finished migration) by
signalling it and polling until its pid is gone, which happens only when the zombie is
reaped. PID 1 of these test machines reaps orphans 1.4-2 s late (measured), where
systemd on a real host reaps at once; every stopped guest would pay that.
"""

from __future__ import annotations

import ctypes
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence
from typing import IO

PR_SET_CHILD_SUBREAPER = 36


def launch(
    commands: Sequence[str], prefix: Sequence[str] = (), log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    """Starts this script (after ``prefix``, e.g. an ``nsenter`` into a host) on
    ``commands``; its output goes to ``log``."""
    return subprocess.Popen(
        [*prefix, sys.executable, __file__, *commands],
        stdin=subprocess.DEVNULL,
        stdout=log,
        stderr=log,
        start_new_session=True,
    )


def stop(reaper: subprocess.Popen[bytes] | None) -> None:
    r"""Ends a :func:`launch`\ ed reaper (its daemons are stopped first by the caller)."""
    if reaper is not None:
        reaper.kill()
        reaper.wait(timeout=10)


def main(commands: list[str]) -> int:
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        print(f"subreaper: prctl: {os.strerror(err)}", file=sys.stderr)
        return 1
    for command in commands:
        done = subprocess.run(shlex.split(command), check=False)
        if done.returncode != 0:
            print(f"subreaper: {command!r} exited {done.returncode}", file=sys.stderr)
            return 1
    while True:
        try:
            os.wait()
        except ChildProcessError:  # every daemon and every guest is gone
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
