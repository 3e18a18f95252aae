"""References to objects stored once on the server (``Client.put``).

A :class:`Ref` pickles as a call of :func:`resolve` with its key, wherever
it sits in a call (an argument, a function's global), and the client notes
each key it pickles (:func:`collecting`) so that the request can name them.
The server sends a worker each object it lacks before the call, as it sends
functions (they share the worker's cache, ``pool_wire.function_cache``),
and on the worker :func:`resolve` turns the key back into the object,
unpickled once per worker. Anywhere else a Ref does not resolve.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

KEY_PREFIX = "ref-"


class RefMissing(LookupError):
    """The worker lacks the object of a key (the server sends it again)."""


@dataclass(frozen=True)
class Ref:
    """An object stored on the server: pass it in place of the object."""

    key: str
    size: int  # of its pickled bytes

    def __repr__(self) -> str:
        return f"<Ref {self.key} ({self.size} bytes)>"

    def __reduce__(self) -> tuple[Callable[[str], Any], tuple[str]]:
        keys = getattr(_collected, "keys", None)
        if keys is not None:
            keys.add(self.key)
        return resolve, (self.key,)


_collected = threading.local()
_resolver: Callable[[str], Any] | None = None


@contextlib.contextmanager
def collecting() -> Iterator[set[str]]:
    """The keys of the Refs pickled in this thread meanwhile."""
    keys: set[str] = set()
    outer = getattr(_collected, "keys", None)
    _collected.keys = keys
    try:
        yield keys
    finally:
        _collected.keys = outer
        if outer is not None:
            outer.update(keys)


def set_resolver(resolver: Callable[[str], Any]) -> None:
    """How this process (a worker) finds the object of a key."""
    global _resolver
    _resolver = resolver


def resolve(key: str) -> Any:
    if _resolver is None:
        raise LookupError(
            f"{key} is a Ref to an object stored on a pool-server: it stands for the object "
            "only in calls run by that server's workers"
        )
    return _resolver(key)
