"""A map's progress bar (``f.map(xs, progress=True)``).

The bar is ``tqdm.auto``'s: a widget in Jupyter (a text bar there when
ipywidgets is missing), a text bar on stderr elsewhere, whether or not
stderr is a terminal: it is shown because the caller asked for it (issue 15:
it was silently left out in notebooks, whose stderr is no terminal).

It counts calls, and moves by fractions of them: its position is the calls
whose results have come back plus, for each chunk still running, the share
its calls have reported with ``progress()``. A call reporting ``f`` in a
chunk of ``n`` calls, of which ``i`` have finished, reports ``(i + f) / n``
for the chunk (``pool_wire.progress``), so the bar counts ``i + f`` of that
chunk's calls: a chunk's finished calls show once one of its calls reports,
and all of them once its results are back. Calls that never report move it
when their chunk comes back, which is about every second (``_chunk_size``).
The last progress message shows beside the bar.
"""

from __future__ import annotations

from typing import Any


class MapBar:
    """The bar of one map; does nothing when not ``enabled``. Called on the
    client's event loop thread only."""

    def __init__(self, enabled: bool, total: int | None, name: str) -> None:
        self._bar: Any = None
        if enabled:
            # Imported here: in a notebook without ipywidgets tqdm.auto warns
            # as it is imported, which only a map that shows a bar should cause.
            from tqdm.auto import tqdm

            self._bar = tqdm(total=total, desc=name, unit="call")
        self._arrived = 0  # calls whose results came back
        self._running: dict[int, float] = {}  # chunk (its first call's index) -> calls' worth

    @property
    def enabled(self) -> bool:
        return self._bar is not None

    def reported(self, chunk: int, calls: int, fraction: float | None, message: str) -> None:
        """Chunk ``chunk`` of ``calls`` calls reported ``fraction`` of itself done."""
        if self._bar is None:
            return
        if message:
            self._bar.set_postfix_str(message, refresh=False)
        if fraction is not None:
            self._running[chunk] = min(max(fraction, 0.0), 1.0) * calls
        self._show()
        # Drawn now, not at tqdm's next update: a running call's report may
        # be the last event for a long while (the worker throttles them).
        self._bar.refresh()

    def arrived(self, chunk: int, calls: int) -> None:
        """The results of chunk ``chunk``, ``calls`` calls, came back."""
        if self._bar is None:
            return
        self._running.pop(chunk, None)
        self._arrived += calls
        self._show()

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def _show(self) -> None:
        position = self._arrived + sum(self._running.values())
        whole = int(position)
        self._bar.n = whole if position - whole < 0.005 else round(position, 2)
        self._bar.update(0)  # redraws, at most every tqdm's mininterval
