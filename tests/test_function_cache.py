"""Functions sent once to each worker (issue 10), against real worker processes.

Each test starts ``python -m worker_proc`` through ``WorkerProcess.start``,
as the supervisor does, and sends it payloads that name their function by
key (``CallRequest.function_hash``) with the function's bytes beside them.
The server's mirror of the worker's cache decides when the bytes travel;
``functions_sent`` and ``bytes_sent`` count what went down the pipe.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import operator
import os
import signal
from collections.abc import AsyncIterator
from typing import Any

import cloudpickle
import pytest

from pool_server.process import WorkerProcess
from pool_wire.function_cache import FUNCTION_CACHE_ENTRIES, FunctionCache
from pool_wire.payload import (
    CallOutcome,
    CallRequest,
    OutcomeStatus,
    dumps,
    function_key,
    loads_outcome,
)
from pool_wire.protocol import JobOutcome, ResultStatus

CALL_TIMEOUT_S = 30.0

_job_ids = itertools.count(1)


def adder(n: int) -> tuple[bytes, str]:
    """A function that adds ``n``, pickled, and its key: distinct bytes per ``n``."""
    pickled = cloudpickle.dumps(functools.partial(operator.add, n))
    return pickled, function_key(pickled)


def heavy_adder(n: int) -> tuple[bytes, str]:
    """As :func:`adder`, with 100 kB of closure: a function worth not resending."""
    ballast = bytes(100_000)

    def add(x: int) -> int:
        return x + n + 0 * len(ballast)

    pickled = cloudpickle.dumps(add)
    return pickled, function_key(pickled)


def by_key(key: str, *args: Any) -> bytes:
    return dumps(CallRequest(b"", cloudpickle.dumps((args, {})), (), function_hash=key))


async def run(
    process: WorkerProcess, payload: bytes, function: bytes | None = None, key: str = ""
) -> JobOutcome:
    job_id = f"r{next(_job_ids)}"
    reply = await process.send(job_id, payload, lambda _: None, function, key)
    never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    answer = await process.outcome(reply, never, CALL_TIMEOUT_S)
    assert answer is not None and answer.job_id == job_id
    return answer


def value(answer: JobOutcome) -> Any:
    outcome = loads_outcome(answer.outcome)
    assert isinstance(outcome, CallOutcome)
    assert outcome.status is OutcomeStatus.RETURNED, outcome.error
    return cloudpickle.loads(outcome.value)


@pytest.fixture
async def worker() -> AsyncIterator[WorkerProcess]:
    process = await WorkerProcess.start(1)
    yield process
    await process.stop()


def test_lru_evicts_the_least_recently_used_by_count_and_bytes() -> None:
    """The one algorithm both sides run: past either bound the least recently
    used entry goes, a get counts as a use, and the newest stays however large."""
    cache: FunctionCache[str] = FunctionCache(max_entries=3, max_bytes=100)
    for key in "abc":
        cache.put(key, key.upper(), 10)
    assert cache.get("a") == "A"
    cache.put("d", "D", 10)
    assert cache.keys() == ["c", "a", "d"] and cache.size == 30
    cache.put("e", "E", 75)
    assert cache.keys() == ["a", "d", "e"] and cache.size == 95
    cache.put("huge", "H", 500)
    assert cache.keys() == ["huge"] and cache.get("huge") == "H" and cache.size == 500
    assert cache.get("a") is None


async def test_a_function_is_sent_once_then_used_by_key(worker: WorkerProcess) -> None:
    """Twenty calls of one 100 kB function: its bytes go down the pipe with
    the first only; the other nineteen cost a few hundred bytes each."""
    pickled, key = heavy_adder(5)
    first = await run(worker, by_key(key, 1), pickled, key)
    assert value(first) == 6 and worker.functions_sent == 1
    sent = worker.bytes_sent
    for i in range(19):
        assert value(await run(worker, by_key(key, i), pickled, key)) == 5 + i
    assert worker.functions_sent == 1
    assert (worker.bytes_sent - sent) / 19 < len(pickled) / 100


async def test_payloads_with_their_function_inside_work_as_before(worker: WorkerProcess) -> None:
    """A payload that carries its function (no function_hash) sends no
    FUNCTION line and leaves the cache alone."""
    pickled, key = adder(7)
    payload = dumps(CallRequest(pickled, cloudpickle.dumps(((1,), {})), ()))
    assert value(await run(worker, payload)) == 8
    assert value(await run(worker, payload, pickled, "")) == 8
    assert worker.functions_sent == 0


async def test_a_restarted_worker_is_sent_the_function_again() -> None:
    """A worker killed with SIGKILL is replaced by one with an empty cache;
    its process's mirror starts empty too, so its first job brings the bytes."""
    pickled, key = adder(3)
    first = await WorkerProcess.start(1)
    assert value(await run(first, by_key(key, 1), pickled, key)) == 4
    os.kill(first.pid, signal.SIGKILL)
    assert await first.exit_code() == -signal.SIGKILL
    second = await WorkerProcess.start(1)
    try:
        assert value(await run(second, by_key(key, 2), pickled, key)) == 5
        assert second.functions_sent == 1
        assert value(await run(second, by_key(key, 3), pickled, key)) == 6
        assert second.functions_sent == 1
    finally:
        await second.stop()


async def test_a_worker_that_misses_is_sent_the_function_and_the_job_again(
    worker: WorkerProcess, caplog: pytest.LogCaptureFixture
) -> None:
    """If the mirror is wrong (here made wrong on purpose: it claims a
    function the worker never got), the worker answers ``missing``, and the
    call still succeeds: the function and the job are sent again."""
    pickled, key = adder(10)
    worker._functions.put(key, True, len(pickled))  # the mirror's bug, staged
    answer = await run(worker, by_key(key, 1), pickled, key)
    assert answer.status is ResultStatus.OK and value(answer) == 11
    assert worker.functions_sent == 1
    assert f"lacked function or object {key}" in caplog.text
    assert value(await run(worker, by_key(key, 2), pickled, key)) == 12
    assert worker.functions_sent == 1


async def test_a_miss_without_the_bytes_fails_the_call_saying_why(worker: WorkerProcess) -> None:
    """With no bytes to send, a miss is a BAD_REQUEST that names the key,
    not a hang or a dead worker; the next call works."""
    _, key = adder(1)
    answer = await run(worker, by_key(key, 1))
    assert answer.status is ResultStatus.ERROR
    outcome = loads_outcome(answer.outcome)
    assert isinstance(outcome, CallOutcome) and outcome.status is OutcomeStatus.BAD_REQUEST
    assert outcome.error is not None and key in outcome.error.message
    assert "does not have" in outcome.error.message
    pickled, key = adder(2)
    assert value(await run(worker, by_key(key, 1), pickled, key)) == 3


async def test_functions_evicted_past_the_bound_are_sent_again(worker: WorkerProcess) -> None:
    """One function more than the cache holds: the least recently used one
    is evicted on both sides alike, and calling it again brings its bytes
    again (no miss, no failure), while the most recent ones stay cached."""
    functions = [adder(n) for n in range(FUNCTION_CACHE_ENTRIES + 1)]
    for n, (pickled, key) in enumerate(functions):
        assert value(await run(worker, by_key(key, 1), pickled, key)) == n + 1
    assert worker.functions_sent == FUNCTION_CACHE_ENTRIES + 1
    for n, (pickled, key) in list(enumerate(functions))[-5:]:  # still cached
        assert value(await run(worker, by_key(key, 2), pickled, key)) == n + 2
    assert worker.functions_sent == FUNCTION_CACHE_ENTRIES + 1
    pickled, key = functions[0]  # evicted by the last one
    assert value(await run(worker, by_key(key, 3), pickled, key)) == 3
    assert worker.functions_sent == FUNCTION_CACHE_ENTRIES + 2
    pickled, key = functions[1]  # evicted by the resend of the first
    assert value(await run(worker, by_key(key, 4), pickled, key)) == 5
    assert worker.functions_sent == FUNCTION_CACHE_ENTRIES + 3
