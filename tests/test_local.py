"""The local backend (``distribute_client.backends.local``) through its interface.

Every call is a real payload made by the client's own codec, run by real
worker processes, and its outcome read back with the client's own decoder:
what a test sees is what ``compute_this(server="local")`` will see. Crashes
are real (``os._exit``, signals, a segfault), and so are deadlines.

The backends are shared by the tests of this module, each of which runs on
its own event loop: that the backend serves one loop after another is
exercised throughout, and once on purpose.
"""

from __future__ import annotations

import asyncio
import faulthandler
import os
import signal
import subprocess
import sys
import threading
import time
import traceback
import types
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from distribute_client import _codec
from distribute_client.backends.local import LocalBackend, local_backend
from distribute_client.errors import (
    CallTimeoutError,
    InvalidRequestError,
    JobCancelledError,
    JobNotFoundError,
    JobTimedOutError,
    SerializationError,
    ServerShuttingDownError,
    WorkerCrashedError,
)
from pool_proto import pool_pb2
from pool_wire.names import JobState, WorkerState

from .conftest import wait_until

# Waits on conditions are bounded by this; each normally takes milliseconds.
WAIT_S = 20.0

# Functions the workers run; this module travels by value, as a script would.


def square(x: int) -> int:
    return x * x


def shout(text: str) -> str:
    print(text)
    print("and on stderr", file=sys.stderr)
    return text.upper()


def fail(message: str) -> None:
    raise ValueError(message)


def exit_now(code: int) -> None:
    os._exit(code)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    faulthandler.disable()  # die of the signal itself, without a dump
    faulthandler._sigsegv()  # type: ignore[attr-defined]


def sleep(seconds: float) -> str:
    time.sleep(seconds)
    return "slept"


def crash_once(marker: str) -> str:
    """Dies on the first attempt, returns on the next."""
    if not os.path.exists(marker):
        Path(marker).touch()
        os._exit(3)
    return "second attempt"


class Flaky(Exception):
    pass


def flaky_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).touch()
        raise Flaky("first attempt")
    return "retried"


# Helpers: the messages the client would send, and its decoding of the answers.


def encode(
    function: Callable[..., Any],
    *args: Any,
    apart: bool = True,
    retry_on: tuple[str, ...] = (),
) -> _codec.Encoded:
    shipped = _codec.NOTHING_SHIPPED
    return _codec.encode_call(function, args, {}, (), retry_on, shipped, function_apart=apart)


def run_request(call: _codec.Encoded, retries: int = 0) -> pool_pb2.RunRequest:
    return pool_pb2.RunRequest(
        payload=call.payload, retries=retries, function_hash=call.function_hash
    )


async def run(
    backend: LocalBackend,
    function: Callable[..., Any],
    *args: Any,
    deadline: float | None = WAIT_S,
    retries: int = 0,
    retry_on: tuple[str, ...] = (),
) -> Any:
    call = encode(function, *args, retry_on=retry_on)
    request = run_request(call, retries)
    outcome, worker_id, pid = await backend.run(request, deadline, call.function)
    assert 1 <= worker_id <= backend.workers and pid > 0
    return _codec.decode_outcome(outcome, function.__qualname__, f"worker {worker_id} (pid {pid})")


async def submit(backend: LocalBackend, *payloads: bytes, **fields: Any) -> list[str]:
    reply = await backend.submit(pool_pb2.SubmitRequest(payloads=payloads, **fields))
    return list(reply.job_ids)


async def result(backend: LocalBackend, job_id: str) -> Any:
    reply = await backend.get_result(pool_pb2.JobRef(job_id=job_id), WAIT_S)
    assert JobState.from_proto(reply.status.state).finished, reply.status
    return _codec.decode_outcome(reply.outcome, "the job", f"job {job_id}")


async def state_of(backend: LocalBackend, job_id: str) -> JobState:
    return JobState.from_proto((await backend.get_job(pool_pb2.JobRef(job_id=job_id))).state)


async def until_running(backend: LocalBackend, job_id: str) -> None:
    async with asyncio.timeout(WAIT_S):
        async for status in backend.watch_job(pool_pb2.JobRef(job_id=job_id)):
            if status.state == pool_pb2.JOB_STATE_RUNNING:
                return
    pytest.fail(f"job {job_id} finished without being seen running")


@pytest.fixture(scope="module")
def backend() -> Iterator[LocalBackend]:
    started = LocalBackend(2)
    yield started
    started.close()


@pytest.fixture(scope="module")
def single() -> Iterator[LocalBackend]:
    """One worker, for tests of what waits behind a busy worker."""
    started = LocalBackend(1)
    yield started
    started.close()


# Calls.


async def test_a_value_comes_back(backend: LocalBackend) -> None:
    """A call's return value comes back, with its function beside the
    payload (as plain calls send it) or inside it."""
    assert await run(backend, square, 7) == 49
    whole = encode(square, 8, apart=False)
    outcome, _, _ = await backend.run(run_request(whole), WAIT_S, b"")
    assert _codec.decode_outcome(outcome, "square", "local") == 64


async def test_printed_output_is_replayed(
    backend: LocalBackend, capsys: pytest.CaptureFixture[str]
) -> None:
    """What the function prints is replayed on the caller's stdout and stderr."""
    assert await run(backend, shout, "hello") == "HELLO"
    printed = capsys.readouterr()
    assert printed.out == "hello\n"
    assert printed.err == "and on stderr\n"


async def test_an_exception_comes_back_with_its_remote_traceback(backend: LocalBackend) -> None:
    """The function's exception is raised as itself, its traceback showing the
    function's own line, with a note naming where it ran."""
    with pytest.raises(ValueError, match="boom") as raised:
        await run(backend, fail, "boom")
    text = "".join(traceback.format_exception(raised.value))
    assert "raise ValueError(message)" in text and __file__ in text
    assert any("(raised by fail on worker" in note for note in raised.value.__notes__)


async def test_a_function_that_cannot_travel_fails_as_for_a_server(
    backend: LocalBackend, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A function that will not pickle fails in the codec, before anything is
    sent; one whose pickle the worker cannot load (its module exists only
    here) fails there, as on a server: the payload bytes are the same."""
    lock = threading.Lock()

    def locked() -> bool:
        return lock.locked()

    with pytest.raises(SerializationError, match="could not be pickled"):
        encode(locked)
    ghost = types.ModuleType("test_local_ghost_module")
    exec("def hello():\n    return 'hi'\n", ghost.__dict__)
    monkeypatch.setitem(sys.modules, ghost.__name__, ghost)
    with pytest.raises(SerializationError, match="could not unpickle.*depmodules"):
        await run(backend, ghost.hello)


CRASHES: list[tuple[Callable[..., Any], tuple[Any, ...], int, str]] = [
    (exit_now, (3,), 3, "exited with code 3"),
    (kill_self, (), -signal.SIGKILL, "killed by SIGKILL"),
    (segfault, (), -signal.SIGSEGV, "killed by SIGSEGV"),
]


@pytest.mark.parametrize(("function", "args", "exit_code", "message"), CRASHES)
async def test_a_worker_that_dies_gives_worker_crashed_and_the_next_call_works(
    backend: LocalBackend,
    function: Callable[..., Any],
    args: tuple[Any, ...],
    exit_code: int,
    message: str,
) -> None:
    """A worker's death fails its call with WorkerCrashedError (exit code or
    signal, worker id); the worker is replaced and the next calls run."""
    with pytest.raises(WorkerCrashedError, match=message) as raised:
        await run(backend, function, *args)
    assert raised.value.exit_code == exit_code
    assert raised.value.worker_id in (1, 2)
    assert await asyncio.gather(*(run(backend, square, i) for i in range(4))) == [0, 1, 4, 9]
    workers = (await backend.get_workers(pool_pb2.GetWorkersRequest())).workers
    assert sum(w.restarts for w in workers) >= 1


async def test_retries_survive_a_crash(backend: LocalBackend, tmp_path: Path) -> None:
    """With retries=1 a call whose worker dies once runs again and returns."""
    marker = str(tmp_path / "crashed")
    assert await run(backend, crash_once, marker, retries=1) == "second attempt"
    with pytest.raises(WorkerCrashedError):  # with no retries the same crash is final
        await run(backend, crash_once, str(tmp_path / "again"))


async def test_retry_on_runs_a_listed_exception_again(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """An exception listed in retry_on is another attempt, not the outcome."""
    name = f"{Flaky.__module__}.{Flaky.__qualname__}"
    marker = str(tmp_path / "raised")
    assert await run(backend, flaky_once, marker, retries=1, retry_on=(name,)) == "retried"


async def test_a_deadline_stops_the_call(single: LocalBackend) -> None:
    """Past its deadline a running call gets CallTimeoutError at once and its
    worker is replaced; one that waited in the queue all along says so."""
    started = time.monotonic()
    blocked = asyncio.ensure_future(run(single, sleep, 30.0, deadline=1.0))
    await asyncio.sleep(0.2)  # let the first call take the only worker
    with pytest.raises(CallTimeoutError, match="waited in the queue"):
        await run(single, square, 2, deadline=0.2)
    with pytest.raises(CallTimeoutError, match="ran past its 1 s deadline on worker 1"):
        await blocked
    assert time.monotonic() - started < 5.0
    assert await run(single, square, 3) == 9
    (worker,) = (await single.get_workers(pool_pb2.GetWorkersRequest())).workers
    assert worker.restarts >= 1


async def test_a_map_chunk_runs_in_one_payload(backend: LocalBackend) -> None:
    """A batch payload (a map chunk) answers each of its calls, in order:
    values, and an exception at its own place."""
    calls: list[tuple[tuple[Any, ...], dict[str, Any]]] = [((i,), {}) for i in range(10)]
    chunk = _codec.encode_batch(square, calls, (), (), _codec.NOTHING_SHIPPED, function_apart=True)
    outcome, _, _ = await backend.run(run_request(chunk), WAIT_S, chunk.function)
    outcomes = _codec.decode_batch(outcome, "square", "local", len(calls))
    assert [_codec.value_of(o, "square", "local") for o in outcomes] == [i * i for i in range(10)]

    mixed = _codec.encode_batch(fail, [(("a",), {}), (("b",), {})], (), (), _codec.NOTHING_SHIPPED)
    outcome, _, _ = await backend.run(run_request(mixed), WAIT_S, b"")
    first, second = _codec.decode_batch(outcome, "fail", "local", 2)
    with pytest.raises(ValueError, match="b"):
        _codec.value_of(second, "fail", "local")


async def test_a_function_named_by_key_is_sent_once(backend: LocalBackend) -> None:
    """A request naming its function by key may leave the bytes out once the
    backend has them, as with a server; a key it never had, or bytes that
    are not the key's, are refused."""
    call = encode(square, 5)
    await backend.run(run_request(call), WAIT_S, call.function)
    outcome, _, _ = await backend.run(run_request(encode(square, 6)), WAIT_S, b"")
    assert _codec.decode_outcome(outcome, "square", "local") == 36
    unknown = run_request(call)
    unknown.function_hash = "0" * 32
    with pytest.raises(InvalidRequestError, match="does not hold the function"):
        await backend.run(unknown, WAIT_S, b"")
    with pytest.raises(InvalidRequestError, match="not the key"):
        await backend.run(unknown, WAIT_S, call.function)


async def test_requests_are_checked_as_the_server_checks_them(backend: LocalBackend) -> None:
    """Malformed requests are refused with InvalidRequestError, as a server does."""
    with pytest.raises(InvalidRequestError, match="empty payload"):
        await backend.run(pool_pb2.RunRequest(), WAIT_S, b"")
    with pytest.raises(InvalidRequestError, match="retries is at most"):
        await backend.run(run_request(encode(square, 1), retries=101), WAIT_S, b"")
    with pytest.raises(InvalidRequestError, match="time_limit_s"):
        await submit(backend, encode(square, 1, apart=False).payload, time_limit_s=float("nan"))


# Jobs.


async def test_submit_then_get_result(backend: LocalBackend) -> None:
    """A submitted job runs, is looked up and watched by its id, and its
    result is read back once it is done."""
    (job_id,) = await submit(backend, encode(square, 9, apart=False).payload, name="square")
    assert await result(backend, job_id) == 81
    status = await backend.get_job(pool_pb2.JobRef(job_id=job_id))
    assert status.state == pool_pb2.JOB_STATE_DONE and status.name == "square"
    assert (status.attempts, status.max_attempts) == (1, 1) and status.worker_id in (1, 2)
    assert status.finished_at >= status.started_at >= status.created_at > 0
    watched = [s async for s in backend.watch_job(pool_pb2.JobRef(job_id=job_id))]
    assert [s.state for s in watched] == [pool_pb2.JOB_STATE_DONE]


async def test_a_json_job_runs_a_function_by_name(backend: LocalBackend) -> None:
    """A JSON call (as ``Client.submit_json`` and ``pool-client submit`` send
    it) runs the function the worker imports, and answers in JSON."""
    (job_id,) = await submit(backend, _codec.encode_json_call("math:hypot", [3, 4], {}))
    assert await result(backend, job_id) == 5.0


async def test_a_submitted_job_is_retried_after_a_crash(
    backend: LocalBackend, tmp_path: Path
) -> None:
    """A job with retries runs again after its worker dies, as on a server."""
    payload = encode(crash_once, str(tmp_path / "crashed"), apart=False).payload
    (job_id,) = await submit(backend, payload, retries=1)
    assert await result(backend, job_id) == "second attempt"
    status = await backend.get_job(pool_pb2.JobRef(job_id=job_id))
    assert (status.attempts, status.max_attempts) == (2, 2)


async def test_jobs_are_listed_and_counted_by_batch(backend: LocalBackend) -> None:
    """ListJobs lists submitted jobs newest first, by state and batch; GetBatch
    counts a batch's calls (a job carries several) per state."""
    chunks: list[list[tuple[tuple[Any, ...], dict[str, Any]]]] = [
        [((i,), {}) for i in range(n)] for n in (2, 3, 1)
    ]
    payloads = [
        _codec.encode_batch(square, c, (), (), _codec.NOTHING_SHIPPED).payload for c in chunks
    ]
    job_ids = await submit(backend, *payloads, batch_id="squares", item_counts=[2, 3, 1])
    for job_id, chunk in zip(job_ids, chunks, strict=True):
        reply = await backend.get_result(pool_pb2.JobRef(job_id=job_id), WAIT_S)
        outcomes = _codec.decode_batch(reply.outcome, "square", "local", len(chunk))
        assert [_codec.value_of(o, "square", "local") for o in outcomes] == [
            i * i for i in range(len(chunk))
        ]
    listed = await backend.list_jobs(pool_pb2.ListJobsRequest(batch_id="squares"))
    assert [job.id for job in listed.jobs] == job_ids[::-1]
    done = pool_pb2.ListJobsRequest(state=pool_pb2.JOB_STATE_DONE, batch_id="squares", limit=2)
    assert len((await backend.list_jobs(done)).jobs) == 2
    batch = await backend.get_batch(pool_pb2.BatchRef(batch_id="squares"))
    assert (batch.total, dict(batch.states), batch.percent_done) == (6, {"DONE": 6}, 100.0)
    with pytest.raises(JobNotFoundError, match="no batch"):
        await backend.get_batch(pool_pb2.BatchRef(batch_id="no-such-batch"))


async def test_cancel_drops_a_queued_job_and_stops_a_running_one(single: LocalBackend) -> None:
    """Cancelling a queued job drops it; cancelling a running one stops its
    worker, which is replaced; result() of either raises JobCancelledError."""
    running, queued = await submit(
        single, encode(sleep, 30.0, apart=False).payload, encode(square, 4, apart=False).payload
    )
    await until_running(single, running)
    status = await single.cancel_job(pool_pb2.JobRef(job_id=queued))
    assert status.state == pool_pb2.JOB_STATE_CANCELLED and status.attempts == 0
    with pytest.raises(JobCancelledError, match="cancelled"):
        await single.get_result(pool_pb2.JobRef(job_id=queued), WAIT_S)
    assert await state_of(single, running) is JobState.RUNNING
    await single.cancel_job(pool_pb2.JobRef(job_id=running))
    with pytest.raises(JobCancelledError):
        await single.get_result(pool_pb2.JobRef(job_id=running), WAIT_S)
    assert await run(single, square, 5) == 25


async def test_a_job_past_its_time_limit_times_out(backend: LocalBackend) -> None:
    """A job running past time_limit_s is TIMED_OUT and its worker replaced;
    result() raises JobTimedOutError. A result() whose own deadline passes
    first answers the job as it stands."""
    (job_id,) = await submit(backend, encode(sleep, 30.0, apart=False).payload, time_limit_s=1.0)
    early = await backend.get_result(pool_pb2.JobRef(job_id=job_id), 0.1)
    assert not JobState.from_proto(early.status.state).finished
    with pytest.raises(JobTimedOutError, match="time limit"):
        await backend.get_result(pool_pb2.JobRef(job_id=job_id), WAIT_S)
    assert await state_of(backend, job_id) is JobState.TIMED_OUT


async def test_an_unknown_job_is_not_found(backend: LocalBackend) -> None:
    """Every lookup of an id never submitted here raises JobNotFoundError."""
    ref = pool_pb2.JobRef(job_id="j0123456789abcdef")
    with pytest.raises(JobNotFoundError):
        await backend.get_job(ref)
    with pytest.raises(JobNotFoundError):
        await backend.get_result(ref, WAIT_S)
    with pytest.raises(JobNotFoundError):
        await backend.cancel_job(ref)
    with pytest.raises(JobNotFoundError):
        await anext(aiter(backend.watch_job(ref)))


# The pool and its life.


async def test_get_workers_describes_each_slot(backend: LocalBackend) -> None:
    """GetWorkers answers one live process per slot and the queue's size."""
    reply = await backend.get_workers(pool_pb2.GetWorkersRequest())
    assert [w.id for w in reply.workers] == [1, 2]
    assert reply.queue_capacity > 0
    async with asyncio.timeout(WAIT_S):
        while not all(w.pid and w.state == pool_pb2.WORKER_STATE_IDLE for w in reply.workers):
            await asyncio.sleep(0.01)  # a worker replaced by an earlier test is starting
            reply = await backend.get_workers(pool_pb2.GetWorkersRequest())
    for worker in reply.workers:
        os.kill(worker.pid, 0)  # alive
        assert WorkerState.from_proto(worker.state) is WorkerState.IDLE


def test_jobs_outlive_the_event_loop_that_submitted_them(backend: LocalBackend) -> None:
    """A job submitted from one asyncio.run() is answered in another, while a
    third loop runs calls: nothing of the backend belongs to one loop."""
    (job_id,) = asyncio.run(submit(backend, encode(sleep, 0.3, apart=False).payload))
    assert asyncio.run(run(backend, square, 3)) == 9
    assert asyncio.run(result(backend, job_id)) == "slept"


def test_local_backend_is_one_per_worker_count() -> None:
    """local_backend() makes a backend once per worker count, and it works."""
    first = local_backend(1)
    assert local_backend(1) is first and first.workers == 1
    assert asyncio.run(run(first, square, 12)) == 144


def test_close_fails_what_is_left(tmp_path: Path) -> None:
    """After close() a call is refused, and the calls it cut short have failed."""
    closing = LocalBackend(1)

    async def cut_short() -> None:
        blocked = asyncio.ensure_future(run(closing, sleep, 30.0))
        await asyncio.sleep(0.2)
        await asyncio.to_thread(closing.close)
        with pytest.raises(ServerShuttingDownError, match="stopped before the call finished"):
            await blocked
        with pytest.raises(ServerShuttingDownError, match="shut down"):
            await run(closing, square, 1)

    asyncio.run(cut_short())


# A client that submits a job that sleeps, prints its workers' pids once one
# runs it, and then exits (with the job still running) or is killed.
CLIENT_SCRIPT = """
import asyncio, os, signal, sys, time
from distribute_client import _codec
from distribute_client.backends.local import local_backend
from pool_proto import pool_pb2

def sleep():
    time.sleep(60)

async def main():
    backend = local_backend(2)
    call = _codec.encode_call(sleep, (), {}, (), (), _codec.NOTHING_SHIPPED)
    await backend.submit(pool_pb2.SubmitRequest(payloads=[call.payload]))
    while True:
        workers = (await backend.get_workers(pool_pb2.GetWorkersRequest())).workers
        busy = any(w.state == pool_pb2.WORKER_STATE_BUSY for w in workers)
        if busy and all(w.pid for w in workers):
            print(*(w.pid for w in workers), flush=True)
            return
        await asyncio.sleep(0.01)

if __name__ == "__main__":
    asyncio.run(main())
    if sys.argv[1] == "kill":
        os.kill(os.getpid(), signal.SIGKILL)
"""


def alive(pid: int) -> bool:
    """True if ``pid`` is a live process (a zombie is dead; so is one that
    exits while its stat is read)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


@pytest.mark.parametrize("how", ["exit", "kill"])
def test_workers_never_outlive_their_client(tmp_path: Path, how: str) -> None:
    """A client that exits with a job still running exits at once (it does not
    wait for the job), and its workers go with it; so do those of a client
    that is killed (SIGKILL: no cleanup of its own runs)."""
    script = tmp_path / "client.py"
    script.write_text(CLIENT_SCRIPT)
    started = time.monotonic()
    pids: list[int] = []
    with subprocess.Popen(
        [sys.executable, str(script), how], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL
    ) as client:
        try:
            assert client.stdout is not None
            pids = [int(pid) for pid in client.stdout.readline().split()]
            assert len(pids) == 2, "the client printed no worker pids"
            client.wait(timeout=WAIT_S)
            wait_until(lambda: not any(map(alive, pids)), WAIT_S, "the workers to exit")
            assert time.monotonic() - started < WAIT_S
        finally:
            client.kill()
            for pid in pids:  # if the test failed: leave no worker behind
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
