"""A raised exception's traceback made fit to travel: starting at the
user's code, and short enough to pickle.

Both answer formats need it: ours (``runner``) and the original Go
server's (``original``).
"""

from __future__ import annotations

import types

# tblib pickles a traceback as a chain nested one level per frame, so a
# RecursionError's ~1,000 frames exceed pickle's own recursion limit and the
# client got a RemoteError instead. A traceback is cut to its first and last
# frames, which show where the recursion was entered and where it ended; 100
# pickle (and unpickle) well within the limit.
TRACEBACK_HEAD_FRAMES = 20
TRACEBACK_TAIL_FRAMES = 80

# How many chained exceptions (__cause__, __context__) are trimmed; a longer
# chain is as rare as it is unreadable.
MAX_CHAINED_EXCEPTIONS = 20


def drop_own_frames(error: BaseException, filename: str) -> None:
    """Start each traceback of ``error``'s chain at the user's code, not at
    the frames of the worker module ``filename`` that called it."""
    for current in _chain(error):
        tb = current.__traceback__
        while tb is not None and tb.tb_frame.f_code.co_filename == filename:
            tb = tb.tb_next
        if tb is not None:
            current.__traceback__ = tb


def _chain(error: BaseException) -> list[BaseException]:
    """``error`` and the exceptions chained to it (cause, context), each once."""
    seen: set[int] = set()
    found: list[BaseException] = []
    pending: list[BaseException] = [error]
    while pending and len(found) < MAX_CHAINED_EXCEPTIONS:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen.add(id(current))
        found.append(current)
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return found


def trim_tracebacks(error: BaseException) -> None:
    """Cut each traceback in ``error``'s chain to its first and last frames,
    with a note saying how many were left out (see TRACEBACK_HEAD_FRAMES)."""
    for current in _chain(error):
        _trim_traceback(current)


def _trim_traceback(error: BaseException) -> None:
    frames: list[types.TracebackType] = []
    tb = error.__traceback__
    while tb is not None:
        frames.append(tb)
        tb = tb.tb_next
    omitted = len(frames) - TRACEBACK_HEAD_FRAMES - TRACEBACK_TAIL_FRAMES
    if omitted <= 0:
        return
    frames[TRACEBACK_HEAD_FRAMES - 1].tb_next = frames[-TRACEBACK_TAIL_FRAMES]
    error.add_note(
        f"(traceback trimmed by the worker: {omitted} of {len(frames)} frames left out "
        f"between the first {TRACEBACK_HEAD_FRAMES} and the last {TRACEBACK_TAIL_FRAMES})"
    )
