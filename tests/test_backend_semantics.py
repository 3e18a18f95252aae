"""One table of semantics, every backend: a pool-server, ``local``, a Celery
cluster on Redis and a Dask cluster, each a real one.

Each test takes ``where``, the address of one backend, and holds it to what
``compute_this`` promises: values, exceptions with their remote traceback,
printed output replayed, signature errors before sending, timeouts that stop
the work, cancel, submit with status and progress, map order with per-item
errors, unpicklable arguments and results. A backend that cannot do one of
them says so in the README, and here with an ``xfail`` naming why.
"""

from __future__ import annotations

import asyncio
import os
import threading
import time
import traceback
from pathlib import Path

import pytest

from distribute_client import (
    CallTimeoutError,
    JobCancelledError,
    SerializationError,
    compute_this,
    progress,
)

from .conftest import ServerProcess, wait_until
from .engine_celery import celery_cluster, celery_server  # noqa: F401 - fixtures
from .engine_dask import dask_cluster, dask_server  # noqa: F401 - fixtures

BACKENDS = ["pool-server", "local", "celery", "dask"]

# What a backend's engine cannot do; the README says the same.
CANNOT = {
    ("local", "progress"): "the local backend does not carry progress() reports yet",
    ("dask", "stop"): "Dask cannot stop a running task: it runs on, its result dropped",
}


@pytest.fixture(params=BACKENDS, scope="module")
def where(request: pytest.FixtureRequest) -> str:
    """The address of one backend."""
    name: str = request.param
    if name == "pool-server":
        server: ServerProcess = request.getfixturevalue("server")
        return server.address
    if name == "local":
        return "local:2"
    address: str = request.getfixturevalue(f"{name}_server")
    return address


def backend_of(where: str) -> str:
    """The backend's name in :data:`CANNOT`, from its address."""
    scheme = where.partition(":")[0]
    return {"tcp": "dask"}.get(scheme, scheme)


def cannot(where: str, what: str) -> None:
    """xfail the test where this backend's engine cannot do ``what``."""
    backend = backend_of(where)
    reason = CANNOT.get((backend, what))
    if reason is not None:
        pytest.xfail(reason)


class Unlucky(Exception):
    def __init__(self, number: int) -> None:
        super().__init__(f"{number} is unlucky")
        self.number = number


def add(a: int, b: int = 0) -> int:
    return a + b


def talk(text: str) -> str:
    print(f"out: {text}")
    print(f"err: {text}", file=__import__("sys").stderr)
    return text.upper()


def raise_deep(number: int) -> None:
    def inner() -> None:
        raise Unlucky(number)

    inner()


def sleep_then_mark(seconds: float, marker: str) -> str:
    time.sleep(seconds)
    Path(marker).write_text("ran to the end")
    return "finished"


def report_then_wait(release: str) -> str:
    progress(0.5, "half way")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def reject_seven(x: int) -> int:
    if x == 7:
        raise ValueError("seven is rejected")
    return x * x


def give_a_lock() -> threading.Lock:
    return threading.Lock()


def take_anything(value: object) -> str:
    return type(value).__name__


def test_a_value_comes_back(where: str) -> None:
    remote = compute_this(where)(add)
    assert remote(2, b=3).compute() == 5

    async def both() -> list[int]:
        return list(await asyncio.gather(remote.async_run(1, 1), remote.async_run(4)))

    assert asyncio.run(both()) == [2, 4]


def test_an_exception_comes_back_with_its_remote_traceback(where: str) -> None:
    with pytest.raises(Unlucky) as raised:
        compute_this(where)(raise_deep)(13).compute()
    assert raised.value.number == 13
    text = "".join(traceback.format_exception(raised.value))
    assert "in inner" in text and "raise Unlucky(number)" in text
    assert any("raised by raise_deep" in note for note in raised.value.__notes__)


def test_printed_output_is_replayed(where: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert compute_this(where)(talk)("hello").compute() == "HELLO"
    captured = capsys.readouterr()
    assert "out: hello" in captured.out
    assert "err: hello" in captured.err


def test_a_call_that_does_not_fit_the_signature_is_not_sent(where: str) -> None:
    remote = compute_this(where)(add)
    with pytest.raises(TypeError, match="add"):
        remote(1, 2, 3)  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword"):
        remote(1, c=2)  # type: ignore[call-arg]


def test_a_timeout_stops_the_work(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    remote = compute_this(where, timeout=1.0)(sleep_then_mark)
    with pytest.raises(CallTimeoutError):
        remote(4.0, str(marker)).compute()
    time.sleep(4.5)
    cannot(where, "stop")
    assert not marker.exists(), "the call ran on after its timeout"


def test_a_cancelled_job_stops(where: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    job = compute_this(where)(sleep_then_mark).submit(3.0, str(marker))
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to start")
    job.cancel()
    wait_until(lambda: job.status().state == "CANCELLED", 30, "the job to be cancelled")
    with pytest.raises(JobCancelledError):
        job.result(timeout=30)
    time.sleep(3.5)
    cannot(where, "stop")
    assert not marker.exists(), "the job ran on after its cancel"


def test_a_submitted_job_reports_status_and_progress(where: str, tmp_path: Path) -> None:
    release = tmp_path / "release"
    job = compute_this(where)(report_then_wait).submit(str(release))
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to start")
    cannot(where, "progress")
    wait_until(lambda: job.status().progress == 0.5, 30, "the job's progress report")
    status = job.status()
    assert (status.state, status.message) == ("RUNNING", "half way")
    release.write_text("go")
    assert job.result(timeout=30) == "released"
    assert job.status().state == "DONE"


def test_a_map_keeps_order_and_raises_each_error_at_its_place(where: str) -> None:
    results = []
    with pytest.raises(ValueError, match="seven is rejected"):  # noqa: PT012 - the map raises at item 7
        for value in compute_this(where)(reject_seven).map(range(20)):
            results.append(value)
    assert results == [x * x for x in range(7)]
    assert list(compute_this(where)(add).map(range(50), range(50))) == [2 * x for x in range(50)]


def test_unpicklable_arguments_and_results_fail_saying_so(where: str) -> None:
    with pytest.raises(SerializationError, match=r"argument 0 \(lock\) of take_anything"):
        compute_this(where)(take_anything)(threading.Lock()).compute()
    with pytest.raises(SerializationError):
        compute_this(where)(give_a_lock)().compute()
    assert compute_this(where)(take_anything)(b"fine").compute() == "bytes"
