"""Large payloads beside the lines: each worker's shared-memory arena (issue 10).

At the edges of ``ARENA_THRESHOLD_BYTES`` through one real worker (where
the test can see which way a payload went), then end to end through real
servers with ``compute()``: values come back exactly, whatever their size,
and a worker killed while it reads its arena fails only its call.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import signal
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import cloudpickle
import pytest

from distribute_client import WorkerCrashedError, compute_this
from pool_server.process import WorkerProcess
from pool_wire.arena import Arena, Span
from pool_wire.limits import ARENA_THRESHOLD_BYTES
from pool_wire.payload import CallOutcome, CallRequest, OutcomeStatus, dumps, loads_outcome

from .conftest import ServerProcess, StartServer

MIB = 1 << 20


def echo(data: bytes) -> bytes:
    return data


def sized(n: int) -> bytes:
    return bytes(range(256)) * (n // 256) + bytes(n % 256)


def test_arena_grows_refuses_to_shrink_and_gives_memory_back() -> None:
    """The arena grows on demand, its file cannot be truncated (a call that
    tried would otherwise make the server's next read a SIGBUS), and a trim
    frees the pages past the bound while the size stays."""
    arena = Arena.create()
    try:
        span = arena.write(sized(3 * MIB), offset=4096)
        assert arena.read(span) == sized(3 * MIB)
        assert bytes(arena.view(Span(4096, 256))) == bytes(range(256))
        with pytest.raises(PermissionError):
            os.ftruncate(arena.fd, 0)
        with pytest.raises(ValueError, match="past the arena"):
            arena.read(Span(0, 1 << 30))
        arena.trim(MIB)
        assert arena.read(Span(2 * MIB, 4)) == bytes(4)
        assert arena.read(Span(4096, 4)) == bytes(range(4))
    finally:
        arena.close()


def echo_payload(data: bytes) -> bytes:
    return dumps(CallRequest(cloudpickle.dumps(echo), cloudpickle.dumps(((data,), {})), ()))


def payload_of_size(size: int, build: Callable[[bytes], bytes]) -> tuple[bytes, bytes]:
    """An argument whose payload, as ``build`` makes it, is exactly ``size``
    bytes (pickles of bytes grow by one byte per byte in this range)."""
    overhead = len(build(bytes(size // 2))) - size // 2
    data = sized(size - overhead)
    payload = build(data)
    assert len(payload) == size
    return data, payload


@pytest.fixture
async def worker() -> AsyncIterator[WorkerProcess]:
    process = await WorkerProcess.start(1)
    yield process
    await process.stop()


async def round_trip(process: WorkerProcess, payload: bytes) -> Any:
    reply = await process.send("r1", payload, lambda _: None)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    answer = await process.outcome(reply, never, 60)
    assert answer is not None
    outcome = loads_outcome(answer.outcome)
    assert isinstance(outcome, CallOutcome) and outcome.status is OutcomeStatus.RETURNED
    return cloudpickle.loads(outcome.value)


@pytest.mark.parametrize("extra", [0, 1])
async def test_payloads_at_the_threshold_take_the_line_and_above_it_the_arena(
    worker: WorkerProcess, extra: int
) -> None:
    """A payload of exactly ARENA_THRESHOLD_BYTES goes as base64 on its line
    (4/3 of it down the pipe); one byte more goes through the arena (a line
    of a few dozen bytes). The echoed value comes back exactly either way."""
    data, payload = payload_of_size(ARENA_THRESHOLD_BYTES + extra, echo_payload)
    assert await round_trip(worker, payload) == data
    if extra:
        assert worker.bytes_sent < 100
    else:
        assert worker.bytes_sent > ARENA_THRESHOLD_BYTES * 4 // 3


async def test_the_arena_is_reused_and_trimmed_after_a_large_call(worker: WorkerProcess) -> None:
    """Round trips of different sizes through one arena, larger and smaller
    than the last, each come back exactly, both ways through the arena."""
    for size in (5 * MIB, 2 * MIB, 9 * MIB, 0, 3 * MIB):
        data = os.urandom(size)
        assert await round_trip(worker, echo_payload(data)) == data
    assert worker.outcomes_from_arena == 4 and worker.bytes_sent < 1000


def call_payload_size(n: int) -> int:
    """The payload compute() sends for echo(n bytes), as the client builds it."""
    return len(compute_this()(echo)(bytes(n)).payload())


@pytest.mark.parametrize("extra", [None, 0, 1], ids=["0-bytes", "threshold", "threshold+1"])
def test_compute_round_trips_at_the_threshold(server: ServerProcess, extra: int | None) -> None:
    """Through a real server: an empty argument, and arguments whose payload
    is exactly the threshold and one byte over, come back exactly."""
    remote = compute_this(server.address, timeout=60)(echo)
    if extra is None:
        assert remote(b"").compute() == b""
        return
    overhead = call_payload_size(MIB) - MIB
    data = sized(ARENA_THRESHOLD_BYTES + extra - overhead)
    assert len(remote(data).payload()) == ARENA_THRESHOLD_BYTES + extra
    assert remote(data).compute() == data


def digest_and_grow(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data + b"!"


@pytest.mark.slow
def test_three_hundred_mib_through_the_arena(server: ServerProcess) -> None:
    """300 MiB each way: the worker sees the argument intact and the result
    comes back exactly (above ARENA_KEEP_BYTES, so the arena is trimmed after)."""
    data = os.urandom(300 * MIB)
    digest, grown = compute_this(server.address, timeout=300)(digest_and_grow)(data).compute()
    assert digest == hashlib.sha256(data).hexdigest()
    assert len(grown) == len(data) + 1 and grown[:-1] == data and grown[-1:] == b"!"


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class DiesWhenUnpickled:
    """An argument whose unpickling kills the worker, after the 8 MiB before
    it in the same arguments were read out of the arena."""

    def __reduce__(self) -> tuple[Callable[[], None], tuple[()]]:
        return _die, ()


def first(data: bytes, *_: object) -> bytes:
    return data[:16]


def arenas_of(pid: int) -> set[int]:
    """The arena memfds ``pid`` holds open (or has mapped), by inode."""
    inodes = set()
    for fd in Path(f"/proc/{pid}/fd").iterdir():
        try:
            if "pool-arena" in os.readlink(fd):
                inodes.add(fd.stat().st_ino)
        except FileNotFoundError:
            continue
    return inodes


def test_a_worker_killed_while_reading_its_arena(start_server: StartServer) -> None:
    """SIGKILL while the worker unpickles an argument from its arena: that
    call fails with WorkerCrashedError naming SIGKILL, the slot comes back
    with a fresh worker and arena (the server holds exactly one arena per
    worker, the dead one's closed), and the next large call works."""
    server = start_server("--workers", "1")
    (before,) = server.pids()
    old_arena = arenas_of(server.proc.pid)
    data = os.urandom(8 * MIB)
    remote = compute_this(server.address, timeout=60)(first)
    with pytest.raises(WorkerCrashedError, match="SIGKILL"):
        remote(data, DiesWhenUnpickled()).compute()
    assert remote(data).compute() == data[:16]
    (after,) = server.pids()
    assert after != before
    arena = arenas_of(server.proc.pid)
    assert len(arena) == 1 and arena == arenas_of(after) and arena != old_arena
    assert compute_this(server.address, timeout=60)(echo)(data).compute() == data
