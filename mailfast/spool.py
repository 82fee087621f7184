"""Message content while it arrives: in memory, or in a spool file when large.

Memory per connection is bounded by ``memory_limit``: a larger body moves to an
unlinked-on-discard file in the spool directory and streams there. The spool
file needs no fsync: durability is the job of the copies made from it.

A spool that cannot be written (a full disk) must not cut the connection:
the rest of the content is counted and dropped, and ``error`` tells the
caller to refuse the message after its end, with a reply.
"""

from __future__ import annotations

import os

_IOV_MAX = 1024  # writev(2) refuses longer vectors on Linux


class MessageBuffer:
    def __init__(self, spool_dir: str, memory_limit: int):
        self._spool_dir = spool_dir
        self._memory_limit = memory_limit
        self._chunks: list[bytes] = []
        self.size = 0
        self._fd = -1
        self._path = ""
        self.error: OSError | None = None  # the spool failed; content dropped

    def write(self, octets: bytes) -> None:
        self.size += len(octets)
        if self.error is not None:
            return
        if self._fd < 0 and self.size <= self._memory_limit:
            self._chunks.append(octets)
            return
        try:
            if self._fd < 0:
                self._spill()
            # A write to the page cache, not a sync: cheap enough for the loop.
            write_all(self._fd, [octets])
        except OSError as exc:
            self.error = exc
            self.discard()

    def _spill(self) -> None:
        os.makedirs(self._spool_dir, exist_ok=True)
        name = f"{os.getpid()}.{id(self):x}.{self.size}"
        self._path = os.path.join(self._spool_dir, name)
        self._fd = os.open(
            self._path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600
        )
        os.unlink(self._path)  # nothing to clean up after a crash
        write_all(self._fd, self._chunks)
        self._chunks = []

    def write_to(self, fd: int, prefix: bytes) -> None:
        """Write ``prefix`` and the whole message to ``fd`` (a blocking call)."""
        if self._fd < 0:
            pieces = [prefix, *self._chunks]
            if len(pieces) > _IOV_MAX:
                pieces = [prefix, b"".join(self._chunks)]
            write_all(fd, pieces)
            return
        write_all(fd, [prefix])
        offset = 0
        while offset < self.size:
            # sendfile(2) copies file to file inside the kernel, and unlike
            # copy_file_range(2) it works across file systems.
            copied = os.sendfile(fd, self._fd, offset, self.size - offset)
            if copied == 0:
                raise OSError("spool file shorter than the message")
            offset += copied

    def head(self, limit: int) -> bytes:
        """The first ``limit`` octets (header inspection)."""
        if self._fd < 0:
            return b"".join(self._chunks)[:limit]
        return os.pread(self._fd, limit, 0)

    def discard(self) -> None:
        self._chunks = []
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


def write_all(fd: int, pieces: list[bytes]) -> None:
    """writev(2) until every octet of ``pieces`` is written."""
    total = sum(map(len, pieces))
    written = os.writev(fd, pieces)
    if written == total:
        return
    rest = b"".join(pieces)[written:]  # a short write: rare, so keep it simple
    while rest:
        rest = rest[os.write(fd, rest) :]
