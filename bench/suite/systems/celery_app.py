"""The Celery app both sides load: the worker with ``-A`` and the adapter by import.

Pickle serialization, because the workloads pass bytes (JSON cannot) and every
other system pickles too. The worker reads the broker URL from the
environment variable the adapter sets when it starts the worker.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

from celery import Celery

from bench.suite.workloads import identity, sleep, spin

URL_ENV = "BENCH_CELERY_REDIS_URL"

app = Celery("bench")
app.conf.update(
    task_serializer="pickle",
    result_serializer="pickle",
    accept_content=["pickle"],
    result_accept_content=["pickle"],
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
)

# The Celery task for each workload function, by the function.
TASKS: dict[Callable[..., Any], Any] = {
    fn: app.task(name=f"bench.{fn.__name__}")(fn) for fn in (identity, sleep, spin)
}


def configure(url: str) -> None:
    app.conf.update(broker_url=url, result_backend=url)


if os.environ.get(URL_ENV):
    configure(os.environ[URL_ENV])
