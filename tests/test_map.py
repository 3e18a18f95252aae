"""``f.map``: chunk sizes, plain (unjournaled) chunks by default, durable on request.

The plain path (issue 10, "Map is cheap") sends each chunk as a Run call:
these tests hold it to what the journaled path promised (order, errors at
their turn, cancel on an early stop, retries) and check that it journals
nothing, while ``durable=True`` still does.
"""

from __future__ import annotations

import asyncio
import os
import signal
import sys
import time
from pathlib import Path

import pytest

from distribute_client import Client, SerializationError, WorkerCrashedError, compute_this
from distribute_client._batch import (
    DEFAULT_CALLS_PER_JOB,
    MAX_CALLS_PER_JOB,
    MAX_CHUNK_BYTES,
    calls_per_job,
    encode_chunks,
)

from .conftest import ServerProcess, StartServer, all_idle, wait_until


def square(x: int) -> int:
    return x * x


def add(x: int, y: int) -> int:
    return x + y


def invert(x: int) -> float:
    return 1 / x


def where_am_i(x: int) -> tuple[int, int]:
    return x, os.getpid()


def wait_for_file(path: str) -> str:
    """Block until ``path`` exists (the test's go signal)."""
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def crash_once(counter: str, x: int) -> int:
    """SIGKILL its worker the first time it runs with x == 3 (counted in a file)."""
    if x == 3 and not os.path.exists(counter):
        Path(counter).touch()
        os.kill(os.getpid(), signal.SIGKILL)
    return x


def journaled(server: ServerProcess) -> set[str]:
    return {status.id for status in Client(server.address).jobs(limit=10_000)}


@pytest.mark.parametrize(
    ("total", "workers", "expected"),
    [
        (20_000, 2, MAX_CALLS_PER_JOB),  # Pool.map would say 2,500: capped
        (1_000, 2, 125),  # 1,000 / 8 exactly
        (1_001, 2, 126),  # a remainder rounds up, as in Pool.map
        (100, 4, 7),
        (3, 2, 1),
        (0, 2, 1),
        (None, 2, DEFAULT_CALLS_PER_JOB),  # an unsized iterable
    ],
)
def test_chunk_size_follows_pool_map(total: int | None, workers: int, expected: int) -> None:
    """The default chunk size is multiprocessing.Pool.map's, capped."""
    assert calls_per_job(total, workers) == expected


def test_a_chunk_of_big_arguments_is_split_below_the_byte_cap() -> None:
    """Calls whose arguments add up past MAX_CHUNK_BYTES travel in several
    payloads, in order, each under the cap; a lone big call still goes."""
    remote = compute_this("127.0.0.1:1")(len)
    size = MAX_CHUNK_BYTES // 5  # distinct blocks: pickle would write one shared object once
    chunks = encode_chunks(remote, [((bytes([i]) * size,), {}) for i in range(12)])
    assert sum(count for count, _ in chunks) == 12 and len(chunks) > 1
    assert all(len(chunk.payload) <= MAX_CHUNK_BYTES for _, chunk in chunks)
    (alone,) = encode_chunks(remote, [((b"x" * MAX_CHUNK_BYTES,), {})])
    assert alone[0] == 1


def test_results_in_order_over_many_chunks(server: ServerProcess) -> None:
    """A plain map gives every result in input order across many chunks, on
    both workers, with several iterables zipped as builtin map does."""
    remote = compute_this(server.address)(where_am_i)
    with remote.map(range(3000), chunk_size=7) as results:
        pairs = list(results)
        assert results.batch_id is None
    assert [x for x, _ in pairs] == list(range(3000))
    assert len({pid for _, pid in pairs}) == 2
    assert list(compute_this(server.address)(add).map(range(500), range(10, 600))) == [
        x + x + 10 for x in range(500)
    ]
    assert list(compute_this(server.address)(square).map(x for x in range(100))) == [
        x * x for x in range(100)
    ]


def test_an_error_comes_at_its_turn(server: ServerProcess) -> None:
    """A call's error is raised after the results before it, and the calls
    beside it in its chunk (and after it) keep their own results."""
    remote = compute_this(server.address)(invert)
    with remote.map([1, 2, 4, 5, 0, 8, 10, 20], chunk_size=3) as results:
        assert [next(results) for _ in range(4)] == [1.0, 0.5, 0.25, 0.2]
        with pytest.raises(ZeroDivisionError):
            next(results)
        assert list(results) == [0.125, 0.1, 0.05]


def test_a_crash_fails_its_chunk_at_its_turn_and_retries_rerun_it(
    server: ServerProcess, tmp_path: Path
) -> None:
    """Without retries a worker crash raises WorkerCrashedError when its chunk's
    turn comes; with retries the chunk runs again and the map completes."""
    plain = compute_this(server.address)(crash_once)
    with plain.map([str(tmp_path / "a")] * 8, range(8), chunk_size=2) as results:
        assert [next(results) for _ in range(2)] == [0, 1]
        with pytest.raises(WorkerCrashedError, match="SIGKILL"):
            next(results)
    retried = compute_this(server.address, retries=1)(crash_once)
    assert list(retried.map([str(tmp_path / "b")] * 8, range(8), chunk_size=2)) == list(range(8))


def test_an_early_stop_cancels_the_outstanding_chunks(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Leaving a plain map's with-block cancels the chunks still out: queued
    ones are dropped, running ones have their workers stopped, so the pool is
    idle soon after and nothing of the map runs on."""
    server = start_server("--workers", "2")
    ready, never = tmp_path / "ready", str(tmp_path / "never")
    ready.touch()
    remote = compute_this(server.address)(wait_for_file)
    with remote.map([str(ready)] + [never] * 20, chunk_size=1) as results:
        assert next(results) == "released"
        wait_until(lambda: all(w.state == "busy" for w in server.client().workers()), 30, "busy")
    wait_until(all_idle(server, 2), 10, "the workers to be idle again")
    assert server.client().status().queue_length == 0


async def test_cancelling_an_async_map_stops_its_chunks(
    start_server: StartServer, tmp_path: Path
) -> None:
    """An async_map abandoned under a timeout stops its running chunks too."""
    server = start_server("--workers", "2")
    remote = compute_this(server.address)(wait_for_file)
    results = remote.async_map([str(tmp_path / "never")] * 6, chunk_size=1)
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(1.0):
            await anext(results)
    await results.aclose()
    await asyncio.to_thread(wait_until, all_idle(server, 2), 10, "the workers to be idle")
    assert (await server.client().async_status()).queue_length == 0


def test_a_plain_map_journals_nothing_and_a_durable_one_does(server: ServerProcess) -> None:
    """The default map leaves no jobs behind; durable=True (or a batch_id, or
    compute_this(durable=True)) submits journaled jobs that ListJobs shows."""
    before = journaled(server)
    assert list(compute_this(server.address)(square).map(range(200))) == [x * x for x in range(200)]
    assert journaled(server) == before

    client = Client(server.address)
    with compute_this(server.address)(square).map(range(40), chunk_size=10, durable=True) as r:
        assert list(r) == [x * x for x in range(40)]
    assert r.batch_id is not None and len(client.jobs(batch_id=r.batch_id)) == 4
    assert client.batch(r.batch_id).states == {"DONE": 40}

    with compute_this(server.address, durable=True)(square).map(range(5), chunk_size=5) as r:
        assert list(r) == [x * x for x in range(5)]
    assert r.batch_id is not None and len(client.jobs(batch_id=r.batch_id)) == 1

    with compute_this(server.address)(square).map(range(3), batch_id="named-map") as r:
        assert list(r) == [0, 1, 4]
    assert client.batch("named-map").total == 3


def test_batch_id_needs_a_durable_map(server: ServerProcess) -> None:
    """A batch id names journaled jobs, so asking for one on a plain map is refused."""
    remote = compute_this(server.address)(square)
    with pytest.raises(ValueError, match="durable=True"):
        remote.map(range(3), batch_id="b", durable=False)


def chatty(x: int) -> int:
    if x % 3 == 0:
        print(f"out {x}")
    if x % 5 == 0:
        print(f"err {x}", file=sys.stderr)
    return x


def test_each_calls_output_is_replayed_at_its_turn(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output captured once for a whole chunk still reaches the caller per
    call, in order, as the value is yielded."""
    remote = compute_this(server.address)(chatty)
    with remote.map(range(30), chunk_size=10) as results:
        values = list(results)
    assert values == list(range(30))
    captured = capsys.readouterr()
    assert captured.out == "".join(f"out {x}\n" for x in range(0, 30, 3))
    assert captured.err == "".join(f"err {x}\n" for x in range(0, 30, 5))


def unpicklable_at(bad: int, x: int) -> object:
    if x == bad:
        return (i for i in range(3))  # a generator will not pickle
    return x


def test_a_value_that_will_not_pickle_fails_only_its_call(server: ServerProcess) -> None:
    remote = compute_this(server.address)(unpicklable_at)
    with remote.map([4] * 8, range(8), chunk_size=8) as results:
        got = []
        for _ in range(8):
            try:
                got.append(next(results))
            except SerializationError as e:
                got.append(type(e).__name__)
    assert got == [0, 1, 2, 3, "SerializationError", 5, 6, 7]
