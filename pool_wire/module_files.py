"""What a module's source file holds, as a digest both sides compare.

A module that travels by reference (installed, or named in depmodules) is
imported by the worker from the server's disk, and a worker keeps what it
imported. So the client sends, beside the call, the digest of each such
module's file as it has it (``CallRequest.module_files``); the worker
reloads a module whose file changed since it imported it, and warns, in the
call's stderr, when its copy is not the client's (``worker_proc.freshness``).
"""

from __future__ import annotations

import hashlib
import os

# (path, mtime_ns, size) -> digest: a file is read again only once it changed.
_digests: dict[tuple[str, int, int], str] = {}


def file_digest(path: str) -> str:
    """The digest of the file at ``path``; "" if it cannot be read."""
    try:
        stat = os.stat(path)
    except OSError:
        return ""
    key = (path, stat.st_mtime_ns, stat.st_size)
    digest = _digests.get(key)
    if digest is None:
        try:
            with open(path, "rb") as file:
                digest = hashlib.blake2b(file.read(), digest_size=16).hexdigest()
        except OSError:
            return ""
        _digests[key] = digest
    return digest
