"""What a running durable job prints, as it prints it (``StreamLogs``).

The worker sends a running call's output as OUTPUT lines
(``pool_wire.protocol``); the job keeps the last ``LOG_TAIL_CHARS`` of it
in a :class:`JobLog`, and hands every new piece to its followers, each of
which holds at most that much unread (a follower that reads slowly misses
the middle, counted, not the end). The log lives while the job runs: a
finished job's output is its outcome's, captured whole, so that memory
for logs is bounded by the running jobs, not the kept ones.
"""

from __future__ import annotations

import asyncio

# What the server keeps of one job's output, and what one follower may
# have unread: a screenful of recent lines many times over.
LOG_TAIL_CHARS = 64 * 1024


class _Text:
    """Text with a bounded tail: what is cut off the front is counted."""

    def __init__(self) -> None:
        self.text = ""
        self.skipped = 0  # characters before ``text`` that were let go

    def add(self, text: str, skipped: int) -> None:
        if skipped:  # left out before ``text``: what is held so far comes first
            self.text, self.skipped = "", self.skipped + len(self.text) + skipped
        self.text += text
        cut = len(self.text) - LOG_TAIL_CHARS
        if cut > 0:
            self.text, self.skipped = self.text[cut:], self.skipped + cut

    def take(self) -> tuple[str, int]:
        taken = self.text, self.skipped
        self.text, self.skipped = "", 0
        return taken


class Follower:
    """One ``StreamLogs --follow``: the pieces printed since it last read."""

    def __init__(self) -> None:
        self._unread = _Text()
        self._changed = asyncio.Event()
        self.finished = False

    def add(self, text: str, skipped: int) -> None:
        self._unread.add(text, skipped)
        self._changed.set()

    def finish(self) -> None:
        self.finished = True
        self._changed.set()

    async def next(self) -> tuple[str, int] | None:
        """The text printed since the last call (and what was left out
        before it); None once the job has finished and all is read."""
        while True:
            text, skipped = self._unread.take()
            if text or skipped:
                return text, skipped
            if self.finished:
                return None
            self._changed.clear()
            await self._changed.wait()


class JobLog:
    """The tail of a running job's output, and who follows it."""

    def __init__(self) -> None:
        self._tail = _Text()
        self._followers: set[Follower] = set()

    @property
    def text(self) -> str:
        return self._tail.text

    @property
    def skipped(self) -> int:
        return self._tail.skipped

    def add(self, text: str, skipped: int) -> None:
        self._tail.add(text, skipped)
        for follower in self._followers:
            follower.add(text, skipped)

    def follow(self) -> Follower:
        follower = Follower()
        self._followers.add(follower)
        return follower

    def unfollow(self, follower: Follower) -> None:
        self._followers.discard(follower)

    def finish(self) -> None:
        """The job finished: its followers read what is left, then stop."""
        for follower in self._followers:
            follower.finish()
        self._followers.clear()
