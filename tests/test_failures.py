"""Failures outside the function's control: crashes, deadlines, cancellation,
a full queue. Each must fail only its own call and leave the pool whole."""

from __future__ import annotations

import asyncio
import faulthandler
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from distribute_client import (
    CallTimeoutError,
    SerializationError,
    WorkerCrashedError,
    compute_this,
)
from pool_wire.payload import CallOutcome, OutcomeStatus, dumps
from pool_wire.protocol import (
    PROTOCOL_VERSION,
    JobOutcome,
    JobRequest,
    Ready,
    ResultStatus,
    decode_line,
    encode,
)
from worker_proc.__main__ import EXIT_PROTOCOL_ERROR

from .conftest import ServerProcess, StartServer, all_idle, pid_alive, wait_until


def exit_hard() -> None:
    os._exit(3)


def kill_self() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def segfault() -> None:
    faulthandler.disable()  # die of the signal itself, without a dump
    faulthandler._sigsegv()  # type: ignore[attr-defined]


def return_lock() -> Any:
    return threading.Lock()


def raise_value_error() -> None:
    raise ValueError("plain failure")


def echo(x: Any) -> Any:
    return x


def nap(seconds: float, marker: str = "") -> float:
    time.sleep(seconds)
    if marker:
        Path(marker).write_text("ran")
    return seconds


def total_restarts(server: ServerProcess) -> int:
    return sum(w.restarts for w in server.client().workers())


CRASH_MATRIX = [
    pytest.param(exit_hard, (), WorkerCrashedError, "exited with code 3", id="os._exit"),
    pytest.param(kill_self, (), WorkerCrashedError, "killed by SIGKILL", id="SIGKILL"),
    pytest.param(segfault, (), WorkerCrashedError, "killed by SIGSEGV", id="segfault"),
    pytest.param(
        echo, (threading.Lock(),), SerializationError, "could not be pickled", id="bad-argument"
    ),
    pytest.param(return_lock, (), SerializationError, "could not be sent back", id="bad-result"),
    pytest.param(raise_value_error, (), ValueError, "plain failure", id="raises"),
]


@pytest.mark.parametrize(("function", "args", "error", "message"), CRASH_MATRIX)
def test_failure_matrix(
    server: ServerProcess, function: Any, args: tuple[Any, ...], error: type, message: str
) -> None:
    """Each failure gives its own error type and message; the pool keeps its size and serves."""
    crashes = error is WorkerCrashedError
    restarts = total_restarts(server)
    with pytest.raises(error, match=message) as info:
        compute_this(server.address)(function)(*args).compute()
    if isinstance(info.value, WorkerCrashedError):
        assert info.value.worker_id in (1, 2)
        assert "the worker was restarted" in str(info.value)
    wait_until(all_idle(server, 2), 30, "both workers idle again")
    assert total_restarts(server) == restarts + crashes
    assert [compute_this(server.address)(echo)(i).compute() for i in range(4)] == [0, 1, 2, 3]


def test_crash_details_are_structured(server: ServerProcess) -> None:
    """WorkerCrashedError carries the exit code, the signal name and the worker id."""
    with pytest.raises(WorkerCrashedError) as info:
        compute_this(server.address)(kill_self)().compute()
    assert info.value.exit_code == -signal.SIGKILL
    assert info.value.signal_name == "SIGKILL"
    assert "possibly by the out-of-memory killer" in str(info.value)
    with pytest.raises(WorkerCrashedError) as info:
        compute_this(server.address)(exit_hard)().compute()
    assert (info.value.exit_code, info.value.signal_name) == (3, None)


def test_idle_worker_killed_from_outside_is_replaced(server: ServerProcess) -> None:
    """A worker that dies while idle is restarted without failing any call."""
    wait_until(all_idle(server, 2), 30, "both workers idle")
    victim = server.pids()[0]
    os.kill(victim, signal.SIGKILL)
    wait_until(lambda: victim not in server.pids() and all_idle(server, 2)(), 30, "a new worker")
    assert [compute_this(server.address)(echo)(i).compute() for i in range(4)] == [0, 1, 2, 3]


def test_running_call_past_its_deadline_replaces_the_worker(server: ServerProcess) -> None:
    """A timeout stops the worker running the call; the pool answers the next call."""
    wait_until(all_idle(server, 2), 30, "both workers idle")
    pids = set(server.pids())
    restarts = total_restarts(server)
    started = time.monotonic()
    with pytest.raises(CallTimeoutError) as info:
        compute_this(server.address, timeout=1.0)(nap)(60).compute()
    assert time.monotonic() - started < 10
    assert isinstance(info.value, TimeoutError)
    wait_until(lambda: total_restarts(server) == restarts + 1, 30, "the worker to be replaced")
    wait_until(all_idle(server, 2), 30, "both workers idle")
    assert len(pids - set(server.pids())) == 1
    assert compute_this(server.address)(echo)(5).compute() == 5


async def test_cancelled_call_replaces_the_worker(server: ServerProcess) -> None:
    """Cancelling an awaiting task cancels the RPC, and the server kills the worker."""
    restarts = total_restarts(server)
    task = asyncio.ensure_future(compute_this(server.address)(nap).async_run(60))
    await asyncio.to_thread(
        wait_until, lambda: "busy" in [w.state for w in server.client().workers()], 30, "busy"
    )
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    await asyncio.to_thread(
        wait_until, lambda: total_restarts(server) == restarts + 1, 30, "replacement"
    )
    assert await compute_this(server.address)(echo).async_run(1) == 1


CLIENT_SCRIPT = """
import sys
from distribute_client import compute_this
import time
def nap():
    time.sleep(60)
compute_this(sys.argv[1])(nap)().compute()
"""


def test_client_killed_mid_call_frees_the_worker(server: ServerProcess) -> None:
    """When the calling process dies, its running call's worker is replaced."""
    restarts = total_restarts(server)
    client = subprocess.Popen([sys.executable, "-c", CLIENT_SCRIPT, server.address])
    try:
        wait_until(
            lambda: "busy" in [w.state for w in server.client().workers()], 30, "a busy worker"
        )
    finally:
        client.kill()
        client.wait()
    wait_until(lambda: total_restarts(server) == restarts + 1, 30, "the worker to be replaced")
    wait_until(all_idle(server, 2), 30, "both workers idle")


def test_stderr_flood_does_not_block_the_worker(server: ServerProcess) -> None:
    """1 MiB written straight to fd 2 (and fd 1) is drained into the server log."""

    def flood() -> str:
        chunk = b"e" * 1023 + b"\n"
        for _ in range(1024):
            os.write(2, chunk)
        os.write(1, b"o" * (1024 * 1024))  # one long line without a newline
        return "survived"

    assert compute_this(server.address, timeout=60)(flood)().compute() == "survived"


async def test_full_queue_applies_backpressure(start_server: StartServer, tmp_path: Path) -> None:
    """With the worker busy and the queue full, a call waits for room until its deadline."""
    server = start_server("--workers", "1", "--queue-size", "1")
    remote = compute_this(server.address)(nap)
    running = asyncio.ensure_future(remote.async_run(2.0))
    await asyncio.to_thread(
        wait_until, lambda: server.client().workers()[0].state == "busy", 30, "busy"
    )
    queued = asyncio.ensure_future(remote.async_run(0.0))
    await asyncio.to_thread(
        wait_until, lambda: server.client().status().queue_length == 1, 30, "a queued call"
    )
    with pytest.raises(CallTimeoutError, match="job queue was full"):
        await compute_this(server.address, timeout=0.3)(nap).async_run(0.0)
    waiting = asyncio.ensure_future(remote.async_run(0.1))  # no deadline: waits for room
    assert list(await asyncio.gather(running, queued, waiting)) == [2.0, 0.0, 0.1]


async def test_queued_call_past_its_deadline_never_runs(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A call whose deadline passes in the queue is dropped, not run later."""
    server = start_server("--workers", "1")
    running = asyncio.ensure_future(compute_this(server.address)(nap).async_run(1.5))
    await asyncio.to_thread(
        wait_until, lambda: server.client().workers()[0].state == "busy", 30, "busy"
    )
    marker = tmp_path / "ran"
    with pytest.raises(CallTimeoutError, match="waited in the queue"):
        await compute_this(server.address, timeout=0.3)(nap).async_run(0, str(marker))
    assert await running == 1.5
    assert await compute_this(server.address)(echo).async_run(1) == 1
    assert not marker.exists()
    assert server.client().status().queue_length == 0


def test_workers_that_cannot_start_back_off(tmp_path: Path) -> None:
    """A worker that dies at start-up is retried with growing delays, not in a tight loop."""
    fake = tmp_path / "worker_proc"
    fake.mkdir()
    (fake / "__init__.py").write_text("")
    (fake / "__main__.py").write_text("import sys\nsys.exit('broken worker install')\n")
    log_path = tmp_path / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [
                str(Path(sys.executable).parent / "pool-server"),
                *("--workers", "1", "--port", "0", "--state-dir", str(tmp_path / "state")),
            ],
            cwd=tmp_path,  # `python -m worker_proc` finds the broken one first
            stdout=subprocess.DEVNULL,
            stderr=log,
        )
    try:
        time.sleep(3.0)  # the backoff schedule itself is under test: 0.1 + 0.2 + 0.4 + ...
    finally:
        proc.send_signal(signal.SIGTERM)
        code = proc.wait(30)
    text = log_path.read_text()
    failures = text.count("worker 1 failed to start")
    assert 3 <= failures <= 6, text
    assert "broken worker install" in text
    assert "retrying in 0.8 s" in text
    assert code == 0
    assert not pid_alive(proc.pid)


def fork_then_exit() -> None:
    """The worker dies while a child it forked still holds its pipes."""
    if os.fork() == 0:
        time.sleep(60)
        os._exit(0)
    os._exit(3)


def die_of_realtime_signal() -> None:
    os.kill(os.getpid(), signal.SIGRTMIN + 5)


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str for you")


def raise_unprintable() -> None:
    raise Unprintable()


def test_death_is_seen_even_when_a_child_holds_the_pipe(server: ServerProcess) -> None:
    """A worker's exit is noticed by awaiting the process, not only its pipe."""
    started = time.monotonic()
    with pytest.raises(WorkerCrashedError, match="exited with code 3"):
        compute_this(server.address, timeout=30)(fork_then_exit)().compute()
    assert time.monotonic() - started < 10
    wait_until(all_idle(server, 2), 30, "both workers idle")


def test_unnamed_signal_is_reported_by_number(server: ServerProcess) -> None:
    """A real-time signal has no name; the error says its number."""
    with pytest.raises(WorkerCrashedError, match=f"killed by signal {signal.SIGRTMIN + 5}"):
        compute_this(server.address)(die_of_realtime_signal)().compute()


def test_exception_whose_str_fails_leaves_the_worker_alive(server: ServerProcess) -> None:
    """Even an exception that cannot be printed comes back without killing the worker."""
    wait_until(all_idle(server, 2), 30, "both workers idle")
    restarts = total_restarts(server)
    with pytest.raises(Unprintable):
        compute_this(server.address)(raise_unprintable)().compute()
    assert total_restarts(server) == restarts


def fork_a_pipe_holder(seconds: float) -> int:
    """Leave behind a child in its own session (no group kill reaches it) that
    holds the worker's pipes open."""
    pid = os.fork()
    if pid == 0:
        os.setsid()
        time.sleep(seconds)
        os._exit(0)
    return pid


@pytest.mark.slow
def test_worker_dying_while_a_large_job_is_sent_fails_only_that_call(
    start_server: StartServer,
) -> None:
    """The worker is killed while the server writes it a 256 MiB job, and a
    child it forked earlier keeps its stdin open, so the write would never
    finish: the server notices the exit, fails the call, replaces the worker."""
    server = start_server("--workers", "1")
    holder = compute_this(server.address)(fork_a_pipe_holder)(120).compute()
    try:
        victim = server.pids()[0]
        client = server.client()

        def kill_once_busy() -> None:
            wait_until(lambda: client.workers()[0].state == "busy", 60, "the big job sent")
            os.kill(victim, signal.SIGKILL)

        killer = threading.Thread(target=kill_once_busy)
        killer.start()
        with pytest.raises(WorkerCrashedError, match="SIGKILL"):
            compute_this(server.address, timeout=60)(echo)(os.urandom(256 << 20)).compute()
        killer.join()
        assert compute_this(server.address, timeout=60)(echo)(1).compute() == 1
    finally:
        os.kill(holder, signal.SIGKILL)


def worker_local(name: str) -> Any:
    """A local variable of the worker's main loop, found up the stack."""
    frame = sys._getframe(1)
    while name not in frame.f_locals or frame.f_code.co_filename == __file__:
        assert frame.f_back is not None, f"no {name} up the stack"
        frame = frame.f_back
    return frame.f_locals[name]


def answer_then_break_the_protocol(x: int) -> int:
    """Write this job's RESULT (x * 2), then garbage, to the worker's private
    protocol channel in one write, as a stray write to the wrong fd might;
    then wait for the server to kill the worker for it."""
    job_id, channel = worker_local("job_id"), worker_local("protocol_out")
    value = cloudpickle.dumps(x * 2)
    outcome = dumps(CallOutcome(OutcomeStatus.RETURNED, value, None, "", "", time.time(), 0.0))
    line = encode(JobOutcome(job_id, ResultStatus.OK, outcome))
    os.write(channel.fileno(), line + b"garbage\n")
    time.sleep(60)
    return -1


def test_result_before_a_broken_line_answers_the_call(server: ServerProcess) -> None:
    """A RESULT followed by a broken line in one read: the worker is replaced
    for breaking the protocol, but its RESULT arrived whole and answers the
    call, and the pool keeps its size."""
    wait_until(all_idle(server, 2), 30, "both workers idle")
    restarts = total_restarts(server)
    remote = compute_this(server.address, timeout=30)(answer_then_break_the_protocol)
    assert remote(21).compute() == 42
    wait_until(lambda: total_restarts(server) == restarts + 1, 30, "the worker to be replaced")
    wait_until(all_idle(server, 2), 30, "both workers idle again")
    assert "broke the protocol: unknown line kind b'garbage'" in server.log()
    assert [compute_this(server.address)(echo)(i).compute() for i in range(4)] == [0, 1, 2, 3]


def test_worker_answers_the_jobs_before_a_broken_line_then_exits(tmp_path: Path) -> None:
    """The worker runs the jobs that arrived whole before a broken line, answers
    them, then exits with its protocol-error code and says why on stderr."""
    worker = subprocess.Popen(
        [sys.executable, "-m", "worker_proc"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    call = b'{"function": "builtins:len", "args": ["four"]}'
    out, err = worker.communicate(encode(JobRequest("j1", call)) + b"NOPE\n", timeout=60)
    ready, result = out.splitlines(keepends=True)
    assert decode_line(ready) == Ready(worker.pid, PROTOCOL_VERSION)
    answer = decode_line(result)
    assert isinstance(answer, JobOutcome) and answer.job_id == "j1"
    assert json.loads(answer.outcome)["value"] == 4
    assert worker.returncode == EXIT_PROTOCOL_ERROR
    assert b"unknown line kind b'NOPE'" in err
