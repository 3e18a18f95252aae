"""Remote exceptions shown as the user's own: their traceback is the
caller's frame, then the remote frames, with none of this package between.

A remote exception is raised by ``_codec`` deep inside the client (the
stream, the loop thread, ``run_sync``), and each frame it passes through on
its way out is put in front of its traceback. :data:`user_frames` guards
each public entry point (``compute()``, ``async_run()``, ``Job.result()``,
a map's iteration): as the exception leaves, its traceback is cut to where
the remote frames start (``pool_wire.tracebacks`` marks them), or to
nothing for a :class:`RemoteError`, whose remote traceback is text. The
``with`` statement re-raises it without adding its own frame, so the next
frame is the caller's. Other errors (a timeout, no server) keep their
frames: those happened here.
"""

from __future__ import annotations

import types
from typing import Literal

from distribute_client.errors import RemoteError
from pool_wire.tracebacks import is_remote_frame


def remote_part(error: BaseException) -> types.TracebackType | None | bool:
    """Where ``error``'s remote frames start; None for a RemoteError (all
    remote, as text); False for an error that did not come from a worker."""
    tb = error.__traceback__
    while tb is not None:
        if is_remote_frame(tb.tb_frame):
            return tb
        tb = tb.tb_next
    return None if isinstance(error, RemoteError) else False


def drop_client_frames(error: BaseException) -> None:
    """Cut the client's frames off a remote exception's traceback."""
    remote = remote_part(error)
    if remote is None or isinstance(remote, types.TracebackType):
        error.__traceback__ = remote


class _UserFrames:
    """``with user_frames:`` around a public entry point's body (reentrant)."""

    def __enter__(self) -> None:
        return None

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: types.TracebackType | None,
    ) -> Literal[False]:
        if error is not None:
            drop_client_frames(error)
        return False  # re-raised by the with statement, as it is now


user_frames = _UserFrames()
