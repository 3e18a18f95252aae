"""A worker's shared-memory arena: large payloads beside the lines (issue 10).

The server makes one memfd per worker process at spawn and hands it over
with ``pass_fds``; both sides keep it mapped for the worker's whole life.
A payload above ``ARENA_THRESHOLD_BYTES`` is written into it, and the line
carries only its :class:`Span` (``JOBREF`` and ``RESULTREF`` in
``pool_wire.protocol``)::

    server owns the arena          worker owns the arena          server owns it
    -----------------------|-------------------------------------|-------------
    writes the argument    JOBREF   reads it, runs the call,     RESULTREF
    at offset 0                     writes the outcome at 0      reads (copies) it out

One arena serves both directions, since a worker runs one job at a time:
between sending a JOB line and reading its RESULT the arena is the
worker's, otherwise the server's. The worker writes its outcome over the
argument only after it has unpickled every object out of it, so neither a
second region nor a copy is needed. No view of the arena ever reaches a
user function (unpickling copies every object out), so nothing a call keeps
can see the arena change under it.

Growing is ftruncate plus a new mapping; the old one goes once the views
into it are released. Neither side can shrink the file: it is sealed with
``F_SEAL_SHRINK``, so a call that truncates its fd fails with EPERM
instead of turning the server's next read of the arena into a SIGBUS.
Memory beyond what is worth keeping is given back with ``MADV_REMOVE``
(:meth:`Arena.trim`), which frees the pages and keeps the size.

Pages are reused, never handed back after each call: a fresh 128 MiB costs
65-70 ms of page faults, measured in issue 10.
"""

from __future__ import annotations

import fcntl
import mmap
import os
from dataclasses import dataclass

from pool_wire.limits import MAX_PAYLOAD_BYTES

# Spans must lie within this: room for the largest payload at any offset
# the protocol uses (0 today); a larger one is a broken line, not a size.
MAX_ARENA_BYTES = 2 * MAX_PAYLOAD_BYTES


@dataclass(frozen=True, slots=True)
class Span:
    """Where a payload lies in the arena."""

    offset: int
    length: int

    @property
    def end(self) -> int:
        return self.offset + self.length


class Arena:
    """One side's mapping of the arena memfd ``fd`` (the fd is owned)."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self._map: mmap.mmap | None = None

    @classmethod
    def create(cls, name: str = "pool-arena") -> Arena:
        """A new, empty arena; its fd is close-on-exec (pass it on explicitly)."""
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        return cls(fd)

    def __repr__(self) -> str:
        return f"<Arena fd={self.fd} mapped={len(self._map) if self._map else 0}>"

    def write(self, data: bytes | bytearray | memoryview, offset: int = 0) -> Span:
        """Copy ``data`` into the arena at ``offset``, growing it if needed."""
        span = Span(offset, len(data))
        if span.length:
            self._mapped(span.end, grow=True)[offset : span.end] = data
        return span

    def read(self, span: Span) -> bytes:
        """A copy of ``span``: the server's, to keep after the arena is reused."""
        if not span.length:
            return b""
        return self._mapped(span.end, grow=False)[span.offset : span.end]

    def view(self, span: Span) -> memoryview:
        """``span`` without a copy: valid only while the reader owns the arena."""
        if not span.length:
            return memoryview(b"")
        return memoryview(self._mapped(span.end, grow=False))[span.offset : span.end]

    def writer(self, offset: int, limit: int) -> ArenaWriter:
        """A file-like object appending at ``offset``, for a pickler."""
        return ArenaWriter(self, offset, limit)

    def trim(self, keep: int) -> None:
        """Give back the memory of every page past ``keep`` bytes (rounded up
        to a page); the arena keeps its size and reads zeros there."""
        keep = -(-keep // mmap.PAGESIZE) * mmap.PAGESIZE
        size = os.fstat(self.fd).st_size
        if size > keep:
            self._mapped(size, grow=False).madvise(mmap.MADV_REMOVE, keep, size - keep)

    def close(self) -> None:
        self._drop_map()
        os.close(self.fd)

    def _mapped(self, end: int, grow: bool) -> mmap.mmap:
        """The mapping, covering ``[0, end)``; grown (``grow``) or checked."""
        if not 0 <= end <= MAX_ARENA_BYTES:
            raise ValueError(f"arena span ending at {end} is out of range")
        size = os.fstat(self.fd).st_size
        if size < end:
            if not grow:
                raise ValueError(f"arena span ending at {end} is past the arena's {size} bytes")
            # Doubling: a payload slightly larger than the last costs no new
            # mapping; the size is address space, pages come when touched.
            size = min(max(end, 2 * size), MAX_ARENA_BYTES)
            os.ftruncate(self.fd, size)
        if self._map is None or len(self._map) < end:
            self._drop_map()
            self._map = mmap.mmap(self.fd, size)
        return self._map

    def _drop_map(self) -> None:
        """Unmap now, or, while views into the old mapping live, when they go."""
        if self._map is not None:
            try:
                self._map.close()
            except BufferError:  # views exported: the mapping lives until they are gone
                pass
            self._map = None


class ArenaWriter:
    """Appends into an arena from ``offset`` on, up to ``limit`` bytes: the
    file a pickler streams a large value into, without a bytes copy first."""

    def __init__(self, arena: Arena, offset: int, limit: int) -> None:
        self._arena = arena
        self._start = self._end = offset
        self._limit = limit

    def write(self, data: bytes | memoryview) -> int:
        length = memoryview(data).nbytes
        if self._end + length - self._start > self._limit:
            raise ValueError(f"it pickles to over {self._limit} bytes")
        self._arena.write(data, self._end)
        self._end += length
        return length

    @property
    def span(self) -> Span:
        return Span(self._start, self._end - self._start)
