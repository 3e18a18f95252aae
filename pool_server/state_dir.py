"""The state dir: private to the server's user, and held by one server at a time.

It holds the job journal, whose pickled payloads run again after a restart,
and the server's token, so another user who could change it could run code
as this server's user, and one who could read it could read every result.
It is made 0700 and its files 0600 whatever the umask, and checked at start:
anything others could write is refused (someone may have changed it), and
anything others could only read is made private, with a warning.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import stat
from pathlib import Path

log = logging.getLogger("pool_server.state_dir")

_OTHERS_WRITE = stat.S_IWGRP | stat.S_IWOTH
_OTHERS_ANY = stat.S_IRWXG | stat.S_IRWXO


class StateDirError(OSError):
    """The state dir cannot be used; the message says why and how to fix it."""


def prepare_state_dir(state_dir: Path) -> None:
    """Create ``state_dir`` (0700) if needed; refuse or tighten what others can reach."""
    try:
        state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        paths = [state_dir, *_files_in(state_dir)]
        for path in paths:
            _make_private(path, state_dir)
    except StateDirError:
        raise
    except OSError as e:
        raise StateDirError(f"cannot use the state dir {state_dir}: {e}") from None


def _files_in(state_dir: Path) -> list[Path]:
    """The state dir's own entries, and one level below (the payload files)."""
    found = []
    for entry in state_dir.iterdir():
        found.append(entry)
        if entry.is_dir() and not entry.is_symlink():
            found.extend(entry.iterdir())
    return found


def _make_private(path: Path, state_dir: Path) -> None:
    info = path.lstat()
    if info.st_uid != os.geteuid():
        raise StateDirError(
            f"{path} belongs to uid {info.st_uid}, not this server's user ({os.geteuid()}); "
            f"give the server a --state-dir of its own"
        )
    mode = stat.S_IMODE(info.st_mode)
    if mode & _OTHERS_WRITE:
        fix = f"chmod -R go-rwx {state_dir}" if path == state_dir else f"chmod go-rwx {path}"
        raise StateDirError(
            f"{path} can be changed by other users (mode {stat.filemode(info.st_mode)}), and "
            "the journal's jobs run as this server's user after a restart; if nobody else "
            f"changed it, run `{fix}` and start again"
        )
    if mode & _OTHERS_ANY:
        log.warning(
            "%s could be read by other users (mode %s); made it private",
            path,
            stat.filemode(info.st_mode),
        )
        path.chmod(mode & ~_OTHERS_ANY)


def lock_state_dir(state_dir: Path) -> contextlib.AbstractContextManager[object]:
    """Hold an exclusive lock on the state dir: two servers must not share a journal."""
    fd = os.open(state_dir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    lock_file = os.fdopen(fd, "r+")
    try:
        fcntl.flock(lock_file, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = lock_file.read().strip() or "another process"
        lock_file.close()
        raise StateDirError(
            f"state dir {state_dir} is in use by pool-server pid {holder}; "
            "give each server its own --state-dir"
        ) from None
    lock_file.truncate(0)
    lock_file.write(str(os.getpid()))
    lock_file.flush()
    return lock_file
