"""A volume's bytes through libvirt's storage streams (``virStorageVolDownload`` /
``virStorageVolUpload``), both sparse: holes in the file travel as lengths, not as
zeros. The two ends of a storage copy (:mod:`~novacron.migration.disk_copy`), and a raw
volume's copy in the pool (:func:`copy`, ``vm.clone``).

Blocking, like every libvirt call: each method runs on a worker thread of the
hypervisor pool, one thread at a time per stream. libvirt's errors become NovaCron's
(:func:`~novacron.vm.libvirt_errors.translate`).
"""

from __future__ import annotations

import contextlib

import libvirt

from novacron.vm.libvirt_errors import libvirt_errors

READ_SIZE = 1024 * 1024  # gathered from libvirt's smaller packets before a chunk is packed


class VolumeReader:
    """The file of the volume at ``path``, from its start: :meth:`read` until it
    answers ``b""``, then :meth:`close`."""

    def __init__(self, conn: libvirt.virConnect, path: str) -> None:
        with libvirt_errors():
            vol = conn.storageVolLookupByPath(path)
            self._stream = conn.newStream(0)
            vol.download(self._stream, 0, 0, libvirt.VIR_STORAGE_VOL_DOWNLOAD_SPARSE_STREAM)
        self._pending = 0  # a hole's length, found while gathering data

    def read(self, size: int = READ_SIZE) -> bytes | int:
        """The next data (up to ``size`` bytes, stopping before a hole), or the length of
        the hole that comes next (an int), or ``b""`` at the end."""
        if self._pending:
            hole, self._pending = self._pending, 0
            return hole
        parts: list[bytes] = []
        got_len = 0
        with libvirt_errors():
            while got_len < size:
                got = self._stream.recvFlags(size - got_len, libvirt.VIR_STREAM_RECV_STOP_AT_HOLE)
                if got == -3:  # a hole next
                    hole = int(self._stream.recvHole(0))
                    if not parts:
                        return hole
                    self._pending = hole
                    break
                if isinstance(got, int):
                    raise ValueError(f"libvirt's stream answered {got}")
                if not got:
                    break
                parts.append(got)
                got_len += len(got)
        return b"".join(parts)

    def close(self, complete: bool) -> None:
        """Ends the stream: ``complete`` after the whole file was read (libvirt reports
        a failure it had not yet), else abandoned."""
        _end(self._stream, complete)


class VolumeWriter:
    """The file of the volume at ``path``, written from its start (a new, empty
    volume): :meth:`write` and :meth:`skip` in order, then :meth:`close`."""

    def __init__(self, conn: libvirt.virConnect, path: str) -> None:
        with libvirt_errors():
            vol = conn.storageVolLookupByPath(path)
            self._stream = conn.newStream(0)
            vol.upload(self._stream, 0, 0, libvirt.VIR_STORAGE_VOL_UPLOAD_SPARSE_STREAM)

    def write(self, data: bytes) -> None:
        rest = data
        with libvirt_errors():
            while rest:
                sent = self._stream.send(rest)
                if sent <= 0:
                    raise ValueError(f"libvirt's stream answered {sent}")
                rest = rest[sent:]  # (a copy only when libvirt took part of it)

    def skip(self, length: int) -> None:
        """``length`` zero bytes, as a hole."""
        with libvirt_errors():
            self._stream.sendHole(length, 0)

    def close(self, complete: bool) -> None:
        """``complete``: everything was written, libvirt confirms it (or reports what
        failed); else the upload is abandoned."""
        _end(self._stream, complete)


def copy(conn: libvirt.virConnect, source: str, dest: str) -> None:
    """The bytes of the volume at ``source`` into the new, empty volume at ``dest``, as
    they are (holes as holes)."""
    reader = VolumeReader(conn, source)
    done = False
    try:
        writer = VolumeWriter(conn, dest)
        try:
            while (piece := reader.read()) != b"":
                if isinstance(piece, int):
                    writer.skip(piece)
                else:
                    writer.write(piece)
            done = True
        finally:
            writer.close(done)
    finally:
        reader.close(done)


def _end(stream: libvirt.virStream, complete: bool) -> None:
    """A stream finished (libvirt's last word on it raised as NovaCron's error), or
    abandoned (whatever libvirt says then)."""
    if complete:
        with libvirt_errors():
            stream.finish()
    else:
        with contextlib.suppress(libvirt.libvirtError):
            stream.abort()
