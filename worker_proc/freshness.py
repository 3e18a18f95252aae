"""Keep the modules a worker imported by reference as fresh as the caller's.

A worker keeps what it imported, so a module edited on the server's disk
after the import would go on serving its old code, silently. Each call says
which modules it uses by reference, with the digest of each one's file on
the caller's side (``pool_wire.module_files``). Before the call runs, a
module whose file changed since this worker imported it is reloaded, and a
module whose file is not the caller's copy is named in a warning on the
call's stderr (so the caller sees it with the call's own output).
"""

from __future__ import annotations

import importlib
import sys

from pool_wire.module_files import file_digest

# Module name -> the digest of its file when this worker imported (or last
# reloaded) it; first seen by a call, for modules imported before any did.
_imported: dict[str, str] = {}


def remember(name: str) -> None:
    """Note the file of module ``name`` as imported now (a depmodule's import)."""
    path = getattr(sys.modules.get(name), "__file__", None)
    if isinstance(path, str) and name not in _imported:
        _imported[name] = file_digest(path)


def refresh(module_files: tuple[tuple[str, str], ...]) -> tuple[str, bool]:
    """Reload stale modules; what to say about them, as stderr text, and
    whether any was reloaded (then functions unpickled before hold its old
    code, and must be unpickled again)."""
    warnings = []
    reloaded = False
    for name, theirs in module_files:
        module = sys.modules.get(name)
        path = getattr(module, "__file__", None)
        if module is None or not isinstance(path, str):
            continue
        ours = file_digest(path)
        if _imported.setdefault(name, ours) != ours:
            importlib.reload(module)
            _imported[name] = ours
            reloaded = True
            warnings.append(
                f"pool-server worker: reloaded module {name} ({path}): its file changed "
                "since this worker imported it\n"
            )
        if theirs and ours and ours != theirs:
            warnings.append(
                f"pool-server worker: module {name} here ({path}) is not the caller's copy "
                "(its file differs); this call runs this one. Install the same version on both "
                f"sides, or ship it with compute_this(ship=[{name}])\n"
            )
    return "".join(warnings), reloaded
