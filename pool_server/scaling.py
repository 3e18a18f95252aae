"""Sizing the pool to the work, as Celery's ``--autoscale`` and Dask's ``adapt()`` do.

The target is ``clamp(busy + queued, min, max)``. Below it, slots are added
at once, at most ``MAX_STARTING`` starting at a time (a burst of calls must
not fork a hundred interpreters at once on a small machine). Above it, idle
slots are dismissed once the pool has stayed above its target for the
scale-down delay: a pause between two bursts costs no restarts. A busy slot
is never stopped; when the maximum is lowered below the busy count, the
extra slots go as their calls end. A fixed pool (``--workers N``) is the
same loop with ``min == max``, so its limits can be changed while it runs.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

from pool_wire.names import WorkerState

if TYPE_CHECKING:
    from pool_server.supervisor import Worker, WorkerPool

log = logging.getLogger("pool_server.scaling")

# The most workers a pool may have; a limit past it is refused.
MAX_WORKERS = 1024

# At most this many slots starting at once when scaling up.
MAX_STARTING = 2

# How often the pool's size is checked between the events that wake it.
CHECK_S = 0.25

DEFAULT_SCALE_DOWN_DELAY_S = 30.0


@dataclass(frozen=True)
class WorkerLimits:
    """How few and how many workers the pool may have."""

    min: int
    max: int

    def __post_init__(self) -> None:
        if not 1 <= self.min <= self.max <= MAX_WORKERS:
            raise ValueError(
                f"worker limits must be 1 <= min <= max <= {MAX_WORKERS}, "
                f"got min {self.min}, max {self.max}"
            )

    def __str__(self) -> str:
        return str(self.min) if self.fixed else f"{self.min}..{self.max}"

    @property
    def fixed(self) -> bool:
        return self.min == self.max

    def target(self, busy: int, queued: int) -> int:
        """How many workers the pool should have for this much work."""
        return max(self.min, min(busy + queued, self.max))


class Autoscaler:
    """Moves one pool's size towards its target; runs as one task of the pool."""

    def __init__(self, pool: WorkerPool, limits: WorkerLimits, scale_down_delay: float) -> None:
        self.limits = limits
        self._pool = pool
        self._scale_down_delay = scale_down_delay
        self._above_since: float | None = None  # since when the pool is above its target
        self._wake = asyncio.Event()

    def __repr__(self) -> str:
        return f"<Autoscaler limits={self.limits} delay={self._scale_down_delay:g}s>"

    def set_limits(self, limits: WorkerLimits) -> None:
        """New limits, applied at once (lowering the maximum does not wait
        out the scale-down delay)."""
        log.info("worker limits %s -> %s", self.limits, limits)
        self.limits = limits
        self.wake()

    def wake(self) -> None:
        """Check the size now: work arrived, or a slot changed state."""
        self._wake.set()

    async def run(self) -> None:
        while True:
            self.adjust()
            self._wake.clear()
            try:
                async with asyncio.timeout(CHECK_S):
                    await self._wake.wait()
            except TimeoutError:
                pass

    def adjust(self) -> None:
        """One step towards the target: start slots, or dismiss idle ones."""
        if self._pool.draining:
            return
        slots = self._pool.serving_slots()
        busy = sum(w.state is WorkerState.BUSY for w in slots)
        target = self.limits.target(busy, len(self._pool.queue))
        if len(slots) < target:
            self._above_since = None
            starting = sum(w.state in (WorkerState.STARTING, WorkerState.DEAD) for w in slots)
            for _ in range(min(target - len(slots), MAX_STARTING - starting)):
                self._pool.add_slot()
            return
        if len(slots) == target:
            self._above_since = None
            return
        now = time.monotonic()
        if self._above_since is None:
            self._above_since = now
        over_max = len(slots) - self.limits.max
        if over_max > 0:  # lowered limits: at once, busy slots as their calls end
            for worker in sorted(slots, key=_dismiss_order)[:over_max]:
                self._pool.dismiss(worker)
        elif now - self._above_since >= self._scale_down_delay:
            idle = [w for w in slots if w.state is WorkerState.IDLE]
            for worker in sorted(idle, key=_dismiss_order)[: len(slots) - target]:
                self._pool.dismiss(worker)


def _dismiss_order(worker: Worker) -> tuple[bool, int]:
    """Idle slots first, then the newest (highest id)."""
    return (worker.state is not WorkerState.IDLE, -worker.id)
