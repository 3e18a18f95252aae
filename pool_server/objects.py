"""Objects stored once for calls to use by reference (``Client.put``).

A large object a function needs (a model, a table) is put once and passed
as a ``Ref``; each call then carries only the key, and each worker gets the
object once, as it gets functions (``pool_wire.refs``). The store is memory
only, bounded in bytes (``--max-object-bytes``): objects go when deleted or
when the server stops, and a durable job cannot refer to one. Each caller
(token name) has objects of its own, as it has jobs: another's cannot be
used, deleted or probed for.
"""

from __future__ import annotations

from pool_server.errors import InvalidCall
from pool_wire.payload import function_key
from pool_wire.refs import KEY_PREFIX


class ObjectStore:
    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self.bytes = 0
        self._objects: dict[tuple[str, str], bytes] = {}  # by (owner, key)

    def __len__(self) -> int:
        return len(self._objects)

    def put(self, owner: str, pickled: bytes) -> str:
        """Store ``pickled`` for ``owner`` (again: a no-op); its key."""
        if not pickled:
            raise InvalidCall("PutObject needs the object's pickled bytes")
        key = KEY_PREFIX + function_key(pickled)
        if (owner, key) in self._objects:
            return key
        if self.bytes + len(pickled) > self.max_bytes:
            raise InvalidCall(
                f"the object store has no room for {len(pickled)} more bytes: it holds "
                f"{len(self._objects)} objects, {self.bytes} of --max-object-bytes "
                f"{self.max_bytes}; delete the ones no longer needed (Client.delete(ref))"
            )
        self._objects[owner, key] = pickled
        self.bytes += len(pickled)
        return key

    def get(self, owner: str, key: str) -> bytes:
        try:
            return self._objects[owner, key]
        except KeyError:
            raise InvalidCall(
                f"the call refers to object {key}, which this server does not hold: it was "
                "deleted, the server restarted, or it was put on another server; put it again"
            ) from None

    def delete(self, owner: str, key: str) -> int:
        """Forget ``owner``'s ``key``; the bytes freed (0 if it was not stored)."""
        pickled = self._objects.pop((owner, key), b"")
        self.bytes -= len(pickled)
        return len(pickled)
