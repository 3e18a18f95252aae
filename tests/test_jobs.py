"""Submitted jobs: status, progress, cancel, retries, time limits, batches."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distribute_client import (
    CallTimeoutError,
    Client,
    JobCancelledError,
    JobNotFoundError,
    QueueFullError,
    WorkerCrashedError,
    compute_this,
    progress,
)

from .conftest import ServerProcess, StartServer, all_idle, wait_until


class Flaky(Exception):
    pass


def square(x: int) -> int:
    return x * x


def wait_for_file(path: str, report: bool = False) -> str:
    """Block until ``path`` exists (the test's go signal), reporting progress."""
    if report:
        progress(0.5, "waiting for the go signal")
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def crash_until(counter: str, crashes: int, how: str) -> int:
    """Die ``crashes`` times (counted in a file), then return the attempt number."""
    attempt = len(Path(counter).read_text()) + 1 if os.path.exists(counter) else 1
    with open(counter, "a") as f:
        f.write("x")
    if attempt <= crashes:
        if how == "exit":
            os._exit(7)
        os.kill(os.getpid(), signal.SIGKILL)
    return attempt


def raise_until(counter: str, failures: int) -> int:
    attempt = len(Path(counter).read_text()) + 1 if os.path.exists(counter) else 1
    with open(counter, "a") as f:
        f.write("x")
    if attempt <= failures:
        raise Flaky(f"attempt {attempt}")
    return attempt


def total_restarts(server: ServerProcess) -> int:
    return sum(w.restarts for w in server.client().workers())


def test_submit_status_result(server: ServerProcess) -> None:
    """submit() returns at once; status() tells state, attempts, worker and times."""
    job = compute_this(server.address)(square).submit(7)
    assert job.id.startswith("j")
    assert job.result(timeout=30) == 49
    status = job.status()
    assert (status.state, status.attempts, status.max_attempts) == ("DONE", 1, 1)
    assert status.worker_id in (1, 2) and status.name == "square"
    assert 0 < status.created_at <= status.started_at <= status.finished_at


def test_reattach_from_another_client(server: ServerProcess) -> None:
    """Client(address).job(id) finds a job submitted elsewhere."""
    job_id = compute_this(server.address)(square)(5).submit().id
    assert Client(server.address).job(job_id).result(timeout=30) == 25


def test_unknown_job_is_not_found(server: ServerProcess) -> None:
    """An unknown id raises JobNotFoundError (a LookupError)."""
    with pytest.raises(JobNotFoundError, match="no job 'jnope'") as info:
        Client(server.address).job("jnope").status()
    assert isinstance(info.value, LookupError)


def test_progress_seen_from_a_second_process(server: ServerProcess, tmp_path: Path) -> None:
    """progress() inside the function shows in status() from another process."""
    go = tmp_path / "go"
    job = compute_this(server.address)(wait_for_file)(str(go), report=True).submit()

    def seen_by_cli() -> dict[str, Any]:
        out = subprocess.run(
            [sys.executable, "-m", "distribute_client.cli", "--server", server.address]
            + ["--json", "status", job.id],
            capture_output=True,
            text=True,
            check=True,
        )
        return dict(json.loads(out.stdout))

    wait_until(lambda: seen_by_cli()["progress"] == 0.5, 30, "progress 0.5 from the CLI")
    assert seen_by_cli()["message"] == "waiting for the go signal"
    go.touch()
    assert job.result(timeout=30) == "released"


def test_progress_is_a_no_op_outside_a_worker() -> None:
    """progress() in ordinary code does nothing, but still checks its argument."""
    progress(0.3, "local")
    with pytest.raises(ValueError, match="between 0 and 1"):
        progress(1.5)


def test_cancel_a_queued_job(start_server: StartServer, tmp_path: Path) -> None:
    """A cancelled queued job never runs; result() raises JobCancelledError."""
    server = start_server("--workers", "1")
    go = tmp_path / "go"
    blocker = compute_this(server.address)(wait_for_file)(str(go)).submit()
    wait_until(lambda: blocker.status().state == "RUNNING", 30, "the blocker to run")
    marker = tmp_path / "ran"
    queued = compute_this(server.address)(Path.touch)(marker).submit()
    assert queued.status().state == "QUEUED"
    assert queued.cancel().state == "CANCELLED"
    go.touch()
    assert blocker.result(timeout=30) == "released"
    with pytest.raises(JobCancelledError, match="cancelled"):
        queued.result(timeout=30)
    assert not marker.exists()


def test_cancel_a_running_job_replaces_its_worker(server: ServerProcess, tmp_path: Path) -> None:
    """Cancelling a running job stops its worker, which is replaced."""
    wait_until(all_idle(server, 2), 30, "idle workers")
    restarts = total_restarts(server)
    job = compute_this(server.address)(wait_for_file)(str(tmp_path / "never")).submit()
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to run")
    assert job.cancel().state == "CANCELLED"
    wait_until(lambda: total_restarts(server) == restarts + 1, 30, "the worker's replacement")
    with pytest.raises(JobCancelledError):
        job.result(timeout=30)


@pytest.mark.parametrize("how", ["exit", "sigkill"])
def test_retries_after_worker_crashes(server: ServerProcess, tmp_path: Path, how: str) -> None:
    """retries=N re-queues a job whose worker died; attempts are counted."""
    counter = str(tmp_path / "attempts")
    job = compute_this(server.address, retries=2)(crash_until)(counter, 2, how).submit()
    assert job.result(timeout=60) == 3
    status = job.status()
    assert (status.state, status.attempts, status.max_attempts) == ("DONE", 3, 3)


def test_retries_run_out(server: ServerProcess, tmp_path: Path) -> None:
    """When every attempt crashes, the job FAILS with the last crash."""
    counter = str(tmp_path / "attempts")
    job = compute_this(server.address, retries=1)(crash_until)(counter, 5, "exit").submit()
    with pytest.raises(WorkerCrashedError, match="exited with code 7"):
        job.result(timeout=60)
    assert (job.status().state, job.status().attempts) == ("FAILED", 2)


def test_compute_retries_too(server: ServerProcess, tmp_path: Path) -> None:
    """A plain compute() call with retries survives a crash as well."""
    counter = str(tmp_path / "attempts")
    assert (
        compute_this(server.address, retries=1)(crash_until)(counter, 1, "sigkill").compute() == 2
    )


def test_exceptions_are_retried_only_when_asked(server: ServerProcess, tmp_path: Path) -> None:
    """A raising function is not retried, unless its exception is in retry_on."""
    plain = compute_this(server.address, retries=3)(raise_until)
    job = plain(str(tmp_path / "a"), 1).submit()
    with pytest.raises(Flaky, match="attempt 1"):
        job.result(timeout=30)
    assert (job.status().state, job.status().attempts) == ("FAILED", 1)
    asked = compute_this(server.address, retries=3, retry_on=(Flaky,))(raise_until)
    job = asked(str(tmp_path / "b"), 2).submit()
    assert job.result(timeout=30) == 3
    assert job.status().attempts == 3


def test_time_limit_stops_the_job(server: ServerProcess, tmp_path: Path) -> None:
    """A job past its time limit is TIMED_OUT and its worker replaced."""
    wait_until(all_idle(server, 2), 30, "idle workers")
    restarts = total_restarts(server)
    job = compute_this(server.address, timeout=0.5)(wait_for_file)(str(tmp_path / "x")).submit()
    with pytest.raises(CallTimeoutError, match="time limit"):
        job.result(timeout=30)
    assert job.status().state == "TIMED_OUT"
    wait_until(lambda: total_restarts(server) == restarts + 1, 30, "the worker's replacement")


def test_result_wait_can_time_out(server: ServerProcess, tmp_path: Path) -> None:
    """result(timeout=...) gives up waiting without touching the job."""
    go = tmp_path / "go"
    job = compute_this(server.address)(wait_for_file)(str(go)).submit()
    with pytest.raises(CallTimeoutError, match="still (QUEUED|RUNNING)"):
        job.result(timeout=0.5)
    go.touch()
    assert job.result(timeout=30) == "released"


def test_map_yields_in_order_with_bounded_in_flight(server: ServerProcess) -> None:
    """A durable map returns results in input order and never has more than
    max_in_flight out."""
    remote = compute_this(server.address)(square)
    client = Client(server.address)
    results = []
    with remote.map(range(40), max_in_flight=5, durable=True) as batch:
        for value in batch:
            unfinished = [
                s for s in client.jobs(batch_id=batch.batch_id) if s.state in ("QUEUED", "RUNNING")
            ]
            assert len(unfinished) <= 5
            results.append(value)
    assert results == [x * x for x in range(40)]
    assert batch.batch_id is not None
    status = client.batch(batch.batch_id)
    assert (status.total, status.states, status.percent_done) == (40, {"DONE": 40}, 100.0)


def test_map_raises_an_items_error_in_its_place(server: ServerProcess, tmp_path: Path) -> None:
    """An item's exception is raised when its turn comes, after earlier results."""

    def invert(x: int) -> float:
        return 1 / x

    results = compute_this(server.address)(invert).map([1, 2, 0, 4])
    assert next(results) == 1.0 and next(results) == 0.5
    with pytest.raises(ZeroDivisionError):
        next(results)


def test_map_closed_early_cancels_what_is_left(server: ServerProcess, tmp_path: Path) -> None:
    """Leaving a durable map's with-block cancels its outstanding jobs."""
    ready, never = tmp_path / "ready", str(tmp_path / "never")
    ready.touch()
    remote = compute_this(server.address)(wait_for_file)
    calls = [str(ready)] + [never] * 5  # a chosen chunk size: all six are sent at once
    with remote.map(calls, max_in_flight=6, chunk_size=1, durable=True) as batch:
        assert next(batch) == "released"
    states = [s.state for s in Client(server.address).jobs(batch_id=batch.batch_id)]
    assert sorted(states) == ["CANCELLED"] * 5 + ["DONE"]


def test_submit_refused_when_the_queue_is_full(start_server: StartServer, tmp_path: Path) -> None:
    """Submit never waits: past --queue-size it fails at once with QueueFullError."""
    server = start_server("--workers", "1", "--queue-size", "2")
    go = tmp_path / "go"
    remote = compute_this(server.address)(wait_for_file)
    running = remote(str(go)).submit()
    wait_until(lambda: running.status().state == "RUNNING", 30, "the first job to run")
    queued = [remote(str(go)).submit() for _ in range(2)]
    with pytest.raises(QueueFullError, match="--queue-size"):
        remote(str(go)).submit()
    go.touch()
    assert [job.result(timeout=30) for job in (running, *queued)] == ["released"] * 3


def test_jobs_listing_filters_by_state(server: ServerProcess, tmp_path: Path) -> None:
    """Client.jobs(state=...) lists matching jobs, newest first."""
    go = tmp_path / "go"
    job = compute_this(server.address)(wait_for_file)(str(go)).submit()
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to run")
    running = Client(server.address).jobs(state="RUNNING")
    assert job.id in [s.id for s in running]
    go.touch()
    job.result(timeout=30)
    assert job.id not in [s.id for s in Client(server.address).jobs(state="RUNNING")]


def test_finished_results_expire(start_server: StartServer) -> None:
    """Past --result-ttl a finished job is forgotten."""
    server = start_server("--workers", "1", "--result-ttl", "1")
    job = compute_this(server.address)(square)(3).submit()
    assert job.result(timeout=30) == 9

    def forgotten() -> bool:
        try:
            job.status()
        except JobNotFoundError:
            return True
        return False

    wait_until(forgotten, 30, "the job to expire")


def test_map_chunks_keep_per_call_errors_and_counts(server: ServerProcess) -> None:
    """With several calls per job, each call still gets its own result or error,
    and the batch counts calls, not jobs."""

    def invert(x: int) -> float:
        return 1 / x

    remote = compute_this(server.address)(invert)
    with remote.map([1, 2, 0, 4, 5, 8], chunk_size=3) as results:
        assert [next(results), next(results)] == [1.0, 0.5]
        with pytest.raises(ZeroDivisionError):
            next(results)
    with remote.map(range(1, 41), chunk_size=10, durable=True) as results:
        assert list(results) == [1 / x for x in range(1, 41)]
    assert results.batch_id is not None
    status = Client(server.address).batch(results.batch_id)
    assert (status.total, status.states) == (40, {"DONE": 40})
    jobs = Client(server.address).jobs(batch_id=results.batch_id)
    assert len(jobs) == 4


def test_a_full_chunk_of_big_results(server: ServerProcess) -> None:
    """256 calls in one job, each returning 100 KB: every result comes back whole."""

    def block(i: int) -> bytes:
        return i.to_bytes(2, "big") * 50_000

    remote = compute_this(server.address)(block)
    with remote.map(range(256), chunk_size=256) as results:
        assert list(results) == [block(i) for i in range(256)]


def test_a_retried_job_reports_its_own_end_not_an_earlier_attempt(
    server: ServerProcess, tmp_path: Path
) -> None:
    """After a retry_on retry, cancelling the job gives JobCancelledError, not attempt 1's error."""

    def flaky_then_block(counter: str, go: str) -> str:
        raise_until(counter, 1)
        return wait_for_file(go)

    remote = compute_this(server.address, retries=2, retry_on=(Flaky,))(flaky_then_block)
    job = remote.submit(str(tmp_path / "n"), str(tmp_path / "never"))
    wait_until(lambda: job.status().attempts == 2, 30, "the second attempt")
    job.cancel()
    with pytest.raises(JobCancelledError):
        job.result(timeout=30)


async def test_stopping_a_map_cancels_the_running_chunk_too(
    server: ServerProcess, tmp_path: Path
) -> None:
    """A durable map cancelled while it waits for its first chunk cancels that chunk as well."""
    never = str(tmp_path / "never")
    remote = compute_this(server.address)(wait_for_file)
    results = remote.async_map([never] * 3, chunk_size=1, durable=True)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await anext(results)
    await results.aclose()
    states = {s.state for s in await Client(server.address).async_jobs(batch_id=results.batch_id)}
    assert states == {"CANCELLED"}


def count_call(log: str, x: int) -> int:
    with open(log, "a") as f:
        f.write(f"{x}\n")
    if x == 3 and Path(log).read_text().split().count("3") == 1:
        raise Flaky("first try of 3")
    return x


def test_map_with_retry_on_reruns_only_the_failed_call(
    server: ServerProcess, tmp_path: Path
) -> None:
    """retry_on in a map re-runs the call that raised, not the calls beside it."""
    log = str(tmp_path / "calls")
    remote = compute_this(server.address, retries=1, retry_on=(Flaky,))(count_call)
    assert list(remote.map([log] * 8, range(8), chunk_size=8)) == list(range(8))
    counts = Path(log).read_text().split()
    assert sorted(counts) == sorted([str(x) for x in range(8)] + ["3"])


def test_map_timeout_is_per_call(server: ServerProcess) -> None:
    """A chunk of calls gets the per-call timeout once per call it carries."""

    def nap(seconds: float) -> float:
        time.sleep(seconds)
        return seconds

    remote = compute_this(server.address, timeout=1.0)(nap)
    assert list(remote.map([0.2] * 10, chunk_size=10)) == [0.2] * 10


def test_map_waits_for_room_in_a_small_queue(start_server: StartServer) -> None:
    """A map larger than the server's queue waits for room instead of failing."""
    server = start_server("--workers", "2", "--queue-size", "4")
    assert list(compute_this(server.address)(square).map(range(100), chunk_size=1)) == [
        x * x for x in range(100)
    ]
