"""A remote exception's traceback, pickled with the columns of each frame.

tblib rebuilds a traceback from code objects of its own (``raise
__traceback_maker`` compiled at the right line), so Python 3.11's ``^^^^``
markers, which come from the code's ``co_positions()``, underline the
columns of that stub instead of the expression that raised. Here the
worker records each frame's file, name and positions (line, end line,
start and end column, as ``traceback`` reads them), and the client builds
for each frame a code object whose raising instruction sits at exactly
those positions: the markers fall where they fell on the worker.

Both sides import this module: the worker pickles tracebacks with
:func:`reduce_traceback`, whose pickle names :func:`rebuild_traceback`.
The frames rebuilt here carry a mark (:func:`is_remote_frame`), so the
client can tell where the remote part of a traceback starts.
"""

from __future__ import annotations

import itertools
import sys
import types
from collections.abc import Callable
from typing import Any

# (filename, name, lineno, end_lineno, col, end_col); the last three may be None.
Entry = tuple[str, str, int, int | None, int | None, int | None]

# In the globals of every frame rebuilt here.
REMOTE_FRAME_MARK = "__pool_remote_frame__"


def reduce_traceback(
    tb: types.TracebackType,
) -> tuple[Callable[[tuple[Entry, ...]], types.TracebackType | None], tuple[tuple[Entry, ...]]]:
    """The pickle reducer of a traceback: its frames as plain data."""
    entries: list[Entry] = []
    current: types.TracebackType | None = tb
    while current is not None:
        code = current.tb_frame.f_code
        line, end_line, col, end_col = _position(code, current.tb_lasti)
        entries.append((code.co_filename, code.co_name, current.tb_lineno, end_line, col, end_col))
        del line  # tb_lineno is what traceback prints where positions have none
        current = current.tb_next
    return rebuild_traceback, (tuple(entries),)


def _position(
    code: types.CodeType, lasti: int
) -> tuple[int | None, int | None, int | None, int | None]:
    """The positions of the instruction at ``lasti``, as ``traceback`` finds them."""
    if lasti < 0:
        return None, None, None, None
    return next(itertools.islice(code.co_positions(), lasti // 2, None), (None,) * 4)


def rebuild_traceback(entries: tuple[Entry, ...]) -> types.TracebackType | None:
    """A real traceback with a frame per entry, each raising at its positions."""
    first: types.TracebackType | None = None
    last: types.TracebackType | None = None
    for entry in entries:
        tb = _frame_tb(entry)
        if last is None:
            first = tb
        else:
            last.tb_next = tb
        last = tb
    return first


def is_remote_frame(frame: types.FrameType) -> bool:
    """True for a frame :func:`rebuild_traceback` made."""
    return bool(frame.f_globals.get(REMOTE_FRAME_MARK))


def _raise() -> None:
    raise RuntimeError("a remote frame")


def _frame_tb(entry: Entry) -> types.TracebackType:
    filename, name, line, end_line, col, end_col = entry
    code = compile(_stub_source(line, end_line, col, end_col), filename, "exec")
    code = code.replace(co_name=name)
    namespace: dict[str, Any] = {
        REMOTE_FRAME_MARK: True,
        "__file__": filename,
        "__name__": name,
        "__builtins__": {},
        "_r": _raise,
    }
    try:
        exec(code, namespace)
    except Exception:
        tb = sys.exc_info()[2]
        assert tb is not None and tb.tb_next is not None
        own = tb.tb_next  # the stub's frame (tb is this function's)
        own.tb_next = None  # drop _raise's frame
        return own
    raise AssertionError("the stub did not raise")


def _stub_source(line: int, end_line: int | None, col: int | None, end_col: int | None) -> str:
    """Source whose first raising instruction spans exactly these positions.

    One line: an undefined name as wide as the span (a NameError at its
    load). Several lines, or none known: a call of ``_r`` from ``col`` to
    ``end_col`` on its last line (a call spanning lines is underlined to the
    end of its first line; without columns, from the start of the line,
    which ``traceback`` leaves unmarked). The text sits inside parentheses,
    so that it may start at any column.
    """
    blank = "\n" * (line - 1)
    if col is None or end_col is None or end_line is None or end_line < line:
        return blank + "_r(\n)"
    lead = "(" + " " * (col - 1) if col else ""
    close = ")" if col else ""
    if end_line == line and end_col > col:
        return blank + lead + "_" * (end_col - col) + close
    if end_line == line:  # an empty span: nothing to underline
        return blank + "_r(\n)"
    middle = "\n" * (end_line - line)
    return blank + lead + "_r(" + middle + " " * max(end_col - 1, 0) + ")" + close
