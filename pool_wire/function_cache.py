"""The bounded LRU of functions a worker keeps, and the server mirrors (issue 10).

A call whose payload has ``function_hash`` set carries no function: the
worker takes it from this cache. The server sends a function's pickled
bytes (a ``FUNCTION`` line, ``pool_wire.protocol``) only when its mirror of
that worker's cache lacks the key. Both sides run this same class with the
same bounds, and apply the same operations in the same order (``put`` for
each FUNCTION line, ``get`` for each job's function; stored objects, which
share the cache, are looked up with ``peek``, which leaves their recency as
it was), and the server is the only one that sends that worker jobs: so the
mirror is exact, and a worker misses only through a bug. Even then the call is not lost: the worker
answers ``missing`` and the server sends the function again.

Sizes are those of the pickled bytes, which both sides know; what the
unpickled function costs the worker is not known to the server, and is
roughly proportional.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Generic, TypeVar

# Enough for the functions of a busy notebook session and the objects its
# calls refer to (``pool_wire.refs``, which share the cache); a worker holds
# up to this much of them, pickled or not.
FUNCTION_CACHE_ENTRIES = 64
FUNCTION_CACHE_BYTES = 1 << 30

V = TypeVar("V")


class FunctionCache(Generic[V]):
    """Least recently used eviction past ``max_entries`` or ``max_bytes``;
    the newest entry is always kept, however large."""

    def __init__(
        self, max_entries: int = FUNCTION_CACHE_ENTRIES, max_bytes: int = FUNCTION_CACHE_BYTES
    ) -> None:
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self.size = 0  # the sum of the entries' sizes
        self._entries: OrderedDict[str, tuple[int, V]] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: str) -> bool:
        return key in self._entries

    def keys(self) -> list[str]:
        """Least recently used first."""
        return list(self._entries)

    def get(self, key: str) -> V | None:
        """The value of ``key``, now the most recently used; None if absent."""
        entry = self._entries.get(key)
        if entry is None:
            return None
        self._entries.move_to_end(key)
        return entry[1]

    def peek(self, key: str) -> V | None:
        """The value of ``key``, its recency unchanged; None if absent (how
        both sides look up stored objects, ``pool_wire.refs``)."""
        entry = self._entries.get(key)
        return None if entry is None else entry[1]

    def put(self, key: str, value: V, size: int) -> None:
        """Add (or replace) ``key`` as the most recently used, then evict."""
        self.discard(key)
        self._entries[key] = (size, value)
        self.size += size
        while len(self._entries) > 1 and (
            len(self._entries) > self.max_entries or self.size > self.max_bytes
        ):
            _, (evicted, _) = self._entries.popitem(last=False)
            self.size -= evicted

    def discard(self, key: str) -> None:
        entry = self._entries.pop(key, None)
        if entry is not None:
            self.size -= entry[0]
