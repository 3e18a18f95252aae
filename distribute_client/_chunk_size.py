"""How many calls a map puts in each chunk, from how long its calls run.

A map of 1-second calls in chunks of 25 showed nothing for 25 s (issue 15).
So a map starts with chunks of ``FIRST_CHUNK_CALLS``, whose results come
back as soon as those calls have run, then sizes every later chunk from the
calls' measured running time (``run_seconds`` of their outcomes, averaged
over every call measured so far) so that a chunk runs about
``TARGET_CHUNK_S``, never more than the cap (``_batch.calls_per_job``, the
size every chunk had before). Calls that take microseconds reach the cap at
the first measurement; calls that take a second or more stay one per chunk.

A ``chunk_size`` the caller chose (or 1, for a function with ``retry_on``)
is used as it is, from the first chunk. A durable map of known length has
a ``floor`` besides: its jobs must fit in one job listing (``Batch.results``
reads them from anywhere), so slow calls share chunks once there are more
than ``_batch.MAX_JOBS_PER_DURABLE_MAP`` of them.
"""

from __future__ import annotations

from collections.abc import Iterable

from distribute_client._codec import Returned
from pool_wire.payload import CallOutcome

# What a chunk should take to run: long enough that its fixed cost (an RPC
# and a worker round trip, about a millisecond) is noise, short enough that
# results and the progress bar move every second or so.
TARGET_CHUNK_S = 1.0

# Calls in each chunk sent before any has been measured.
FIRST_CHUNK_CALLS = 1


class ChunkSizer:
    """The size of a map's next chunk: ``fixed`` if given, else measured,
    at most ``cap``."""

    def __init__(self, cap: int, fixed: int | None = None, floor: int = 1) -> None:
        self._cap = max(1, cap)
        self._fixed = fixed
        self._floor = min(max(1, floor), self._cap)
        self._calls = 0
        self._seconds = 0.0

    def __repr__(self) -> str:
        return f"<ChunkSizer {self.size()} calls (cap {self._cap}, {self._calls} measured)>"

    @property
    def measured(self) -> bool:
        """Whether the size is known: chosen, or measured from some outcomes."""
        return self._fixed is not None or self._calls > 0

    def size(self) -> int:
        if self._fixed is not None:
            return self._fixed
        if not self._calls:
            return max(self._floor, min(FIRST_CHUNK_CALLS, self._cap))
        per_call = self._seconds / self._calls
        if per_call * self._cap <= TARGET_CHUNK_S:
            return self._cap
        return max(self._floor, min(self._cap, int(TARGET_CHUNK_S / per_call)))

    def observe(self, outcomes: Iterable[CallOutcome | Returned]) -> None:
        """Count the running time of a chunk's calls."""
        for outcome in outcomes:
            self._calls += 1
            self._seconds += max(outcome.run_seconds, 0.0)
