"""When a worker's process is replaced on purpose, and why a slot's last one went.

Leaky user code (a growing cache, a C extension that never frees) is kept
from eating the machine as Celery's ``--max-tasks-per-child`` and
``--max-memory-per-child`` and loky's leak detection do it:

- after ``max_tasks`` calls (plus up to ``max_tasks_jitter``, so that workers
  started together do not all restart together), the worker is replaced;
- past ``max_rss`` (a soft limit, read after each call, once its result is
  on its way) the worker is replaced;
- past ``rss_limit`` (a hard limit, sampled every ``RSS_SAMPLE_S`` by the
  pool) the worker is killed at once and its call fails as a crash.

Recycling never interrupts a call and is not a crash. It cannot loop either
(celery#4125): a worker that starts above ``NO_LOOP_FRACTION`` of the soft
limit (its imports alone are that big) is kept, and recycled for memory only
once it has grown by the margin a normal worker has.
"""

from __future__ import annotations

import enum
import random
from dataclasses import dataclass

# How often the pool reads its workers' RSS against the hard limit.
RSS_SAMPLE_S = 0.25

# A worker starting above this fraction of the soft limit is not recycled
# for memory until it grows by the rest of it.
NO_LOOP_FRACTION = 0.8


class ExitReason(enum.StrEnum):
    """Why a slot's last worker process went (``WorkerInfo.last_exit_reason``,
    and the ``reason`` label of ``pool_worker_restarts_total``)."""

    CRASH = "crash"  # died running a call
    DIED_IDLE = "died-idle"
    RECYCLED_TASKS = "recycled-tasks"  # after --max-tasks-per-worker calls
    RECYCLED_MEMORY = "recycled-memory"  # past --worker-max-rss after a call
    MEMORY_LIMIT = "memory-limit"  # killed past --worker-rss-limit
    DEADLINE = "deadline"  # killed: its call's time limit passed
    CANCEL = "cancel"  # killed: its call was cancelled
    UNFIT = "unfit"  # the worker asked to be replaced after a call
    PROTOCOL = "protocol-error"  # broke the line protocol and was killed
    INTERNAL = "internal-error"  # a supervisor error; the log has it
    SCALED_DOWN = "scaled-down"  # idle below the pool's target: its slot went

    @property
    def recycled(self) -> bool:
        """A replacement on purpose, between calls: counted in ``recycles``,
        not ``restarts``."""
        return self in (ExitReason.RECYCLED_TASKS, ExitReason.RECYCLED_MEMORY)


@dataclass(frozen=True)
class RecyclePolicy:
    """When to replace a worker that still works; every limit None is off."""

    max_tasks: int | None = None
    max_tasks_jitter: int = 0
    max_rss: int | None = None  # bytes; soft, checked after each call
    rss_limit: int | None = None  # bytes; hard, sampled every RSS_SAMPLE_S

    def __post_init__(self) -> None:
        if self.max_tasks is not None and self.max_tasks < 1:
            raise ValueError(f"max tasks per worker must be at least 1, got {self.max_tasks}")
        if self.max_tasks_jitter < 0:
            raise ValueError(f"max tasks jitter must be 0 or more, got {self.max_tasks_jitter}")
        if self.max_tasks_jitter and self.max_tasks is None:
            raise ValueError("--max-tasks-jitter needs --max-tasks-per-worker")
        if self.max_rss is not None and self.rss_limit is not None:
            if self.rss_limit <= self.max_rss:
                raise ValueError(
                    "--worker-rss-limit (the hard limit) must be above --worker-max-rss "
                    "(the soft one), or a worker would be killed before it is recycled"
                )

    def task_budget(self) -> int | None:
        """How many calls a new worker may run before it is replaced."""
        if self.max_tasks is None:
            return None
        return self.max_tasks + random.randint(0, self.max_tasks_jitter)

    def memory_threshold(self, start_rss: int) -> int | None:
        """The RSS past which a worker that started at ``start_rss`` is
        recycled after a call: the soft limit, or for a worker that started
        near it, its start plus the margin below the limit a normal one has."""
        if self.max_rss is None:
            return None
        if start_rss < NO_LOOP_FRACTION * self.max_rss:
            return self.max_rss
        return start_rss + round((1 - NO_LOOP_FRACTION) * self.max_rss)
