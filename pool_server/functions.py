"""Pickled functions the server keeps, so a client sends each one once.

A call may carry its function beside its payload, by key (the hash of its
pickled bytes: the same bytes are the same function, so caching changes no
meaning). The first call of a function brings the bytes; later calls bring
only the key, and the server hands the bytes to each worker that lacks them
(``process.py``). The store is bounded by bytes, least recently used out
first; a key it no longer holds is answered FunctionNeeded and the client
sends the bytes again, so an eviction costs a round trip, never a call.
"""

from __future__ import annotations

import collections

from pool_wire.limits import MAX_ID_CHARS
from pool_wire.payload import function_key

# Enough for thousands of ordinary functions, or a few with big closures.
DEFAULT_MAX_BYTES = 256 * 1024 * 1024


class FunctionNeeded(Exception):
    """The call names a function by key only, and the store does not hold it."""


class FunctionStore:
    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._functions: collections.OrderedDict[str, bytes] = collections.OrderedDict()

    def __len__(self) -> int:
        return len(self._functions)

    def __repr__(self) -> str:
        return f"<FunctionStore {len(self)} functions, {self.bytes}/{self.max_bytes} bytes>"

    def resolve(self, key: str, function: bytes) -> bytes:
        """The pickled function of ``key``: ``function`` if it was sent (then
        kept), else the one kept from before; FunctionNeeded if neither."""
        if function:
            if len(key) > MAX_ID_CHARS or function_key(function) != key:
                raise ValueError("function_hash is not the key of the function sent with it")
            self._keep(key, function)
            return function
        kept = self._functions.get(key)
        if kept is None:
            raise FunctionNeeded(key)
        self._functions.move_to_end(key)
        return kept

    def _keep(self, key: str, function: bytes) -> None:
        if key in self._functions:
            self._functions.move_to_end(key)
            return
        self._functions[key] = function
        self.bytes += len(function)
        while self.bytes > self.max_bytes and len(self._functions) > 1:
            _, evicted = self._functions.popitem(last=False)
            self.bytes -= len(evicted)
