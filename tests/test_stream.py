"""The Calls stream against real servers: many calls on one stream, a call
cancelled or out of time on it, a stream broken by a server restart, and
the stream's own messages sent raw."""

from __future__ import annotations

import asyncio
import math
import os
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator

import cloudpickle
import grpc
import pytest

from distribute_client import (
    CallTimeoutError,
    ServerUnavailableError,
    _transport,
    compute_this,
    progress,
)
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.payload import CallRequest, dumps, function_key

from .conftest import AUTH_METADATA, ServerProcess, StartServer, all_idle, wait_until


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def add(a: int, b: int) -> int:
    return a + b


def test_thousands_of_concurrent_calls_share_one_stream(server: ServerProcess) -> None:
    remote = compute_this(server.address)(add)

    async def burst() -> tuple[list[int], int]:
        results = await asyncio.gather(*(remote.async_run(i, 1) for i in range(3000)))
        streams = _transport._streams[asyncio.get_running_loop()]
        return results, len(streams)

    results, streams = asyncio.run(burst())
    assert results == [i + 1 for i in range(3000)]
    assert streams == 1


def test_a_call_cancelled_on_the_stream_stops_its_worker(server: ServerProcess) -> None:
    remote = compute_this(server.address)(nap)
    pids = server.pids()

    async def cancel_one() -> float:
        call = asyncio.ensure_future(remote.async_run(30))
        await asyncio.sleep(1.0)  # running by now
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return await remote.async_run(0)  # the same stream serves on

    assert asyncio.run(cancel_one()) == 0
    wait_until(all_idle(server, 2), 10, "the cancelled call's worker to be replaced")
    assert set(server.pids()) != set(pids)  # the busy one was stopped and replaced


def test_a_deadline_on_the_stream_is_the_servers_answer(server: ServerProcess) -> None:
    remote = compute_this(server.address, timeout=0.5)(nap)
    start = time.monotonic()
    with pytest.raises(CallTimeoutError, match="ran past its 0.45 s deadline") as info:
        remote(30).compute()
    assert time.monotonic() - start < 1.5
    assert "replaced" in str(info.value)
    wait_until(all_idle(server, 2), 10, "the timed-out call's worker to be replaced")


def test_a_broken_stream_fails_its_calls_and_the_next_call_reconnects(
    start_server: StartServer,
) -> None:
    first = start_server("--workers", "1")
    port = first.address.rsplit(":", 1)[1]
    remote = compute_this(first.address)(nap)

    async def across_a_restart() -> tuple[BaseException | None, float]:
        assert await remote.async_run(0) == 0  # the stream is open
        call = asyncio.ensure_future(remote.async_run(30))
        await asyncio.sleep(0.5)
        first.stop(signal.SIGKILL)
        try:
            await call
            failed = None
        except BaseException as e:
            failed = e
        second = start_server("--workers", "1", "--port", port)
        assert second.address == first.address
        return failed, await remote.async_run(0.1)

    failed, after = asyncio.run(across_a_restart())
    assert isinstance(failed, ServerUnavailableError), failed
    assert after == 0.1


def _start(
    call_id: int, request: pool_pb2.RunRequest, deadline: float = 0.0
) -> pool_pb2.CallMessage:
    return pool_pb2.CallMessage(call_id=call_id, start=request, deadline_s=deadline)


async def _exchange(
    address: str, messages: list[pool_pb2.CallMessage], answers: int
) -> list[pool_pb2.CallEvent]:
    """Send ``messages`` on a raw stream, one per CallMessages; the first
    ``answers`` events."""

    async def outgoing() -> AsyncIterator[pool_pb2.CallMessages]:
        for message in messages:
            yield pool_pb2.CallMessages(messages=[message])
        await asyncio.sleep(60)  # keep our side open until the answers are in

    async with grpc.aio.insecure_channel(address) as channel:
        call = pool_pb2_grpc.PoolStub(channel).Calls(outgoing(), metadata=AUTH_METADATA)
        events: list[pool_pb2.CallEvent] = []
        async for batch in call:
            events.extend(batch.events)
            if len(events) >= answers:
                call.cancel()
                break
        return events


def test_a_function_sent_once_is_named_by_key_after(server: ServerProcess) -> None:
    function = cloudpickle.dumps(add)
    key = function_key(function)
    payload = dumps(CallRequest(b"", cloudpickle.dumps(((2, 3), {})), (), function_hash=key))
    unknown = dumps(CallRequest(b"", cloudpickle.dumps(((2, 3), {})), (), function_hash="0" * 32))
    events = asyncio.run(
        _exchange(
            server.address,
            [
                _start(1, pool_pb2.RunRequest(payload=unknown, function_hash="0" * 32)),
                _start(
                    2, pool_pb2.RunRequest(payload=payload, function_hash=key, function=function)
                ),
            ],
            2,
        )
    )
    by_id = {event.call_id: event for event in events}
    assert by_id[1].WhichOneof("body") == "function_needed"
    assert by_id[2].WhichOneof("body") == "reply"
    (later,) = asyncio.run(
        _exchange(
            server.address, [_start(7, pool_pb2.RunRequest(payload=payload, function_hash=key))], 1
        )
    )
    assert later.WhichOneof("body") == "reply", later
    # A Run naming a function the server lacks is told to send it.
    with grpc.insecure_channel(server.address) as channel:
        with pytest.raises(grpc.RpcError) as refused:
            pool_pb2_grpc.PoolStub(channel).Run(
                pool_pb2.RunRequest(payload=unknown, function_hash="0" * 32),
                metadata=AUTH_METADATA,
                timeout=10,
            )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "send its pickled bytes" in refused.value.details()


def test_a_function_that_is_not_its_key_is_refused(server: ServerProcess) -> None:
    function = cloudpickle.dumps(add)
    payload = dumps(CallRequest(b"", b"", (), function_hash="1" * 32))
    request = pool_pb2.RunRequest(payload=payload, function_hash="1" * 32, function=function)
    (event,) = asyncio.run(_exchange(server.address, [_start(1, request)], 1))
    assert event.WhichOneof("body") == "failed"
    assert event.failed.code == grpc.StatusCode.INVALID_ARGUMENT.value[0]
    assert "not the key" in event.failed.message


def test_odd_stream_messages_get_clear_answers(server: ServerProcess) -> None:
    call = dumps(CallRequest(cloudpickle.dumps(nap), cloudpickle.dumps(((1,), {})), ()))
    request = pool_pb2.RunRequest(payload=call)
    events = asyncio.run(
        _exchange(
            server.address,
            [
                _start(1, request),
                _start(1, request),  # the same id while it runs
                _start(2, request, deadline=math.nan),
                _start(3, pool_pb2.RunRequest(payload=b"")),
                pool_pb2.CallMessage(call_id=99, cancel=pool_pb2.CallCancel()),  # no such call
            ],
            4,
        )
    )
    failures = {e.call_id: e.failed.message for e in events if e.WhichOneof("body") == "failed"}
    assert "already running" in failures[1]
    assert "deadline_s must be a number" in failures[2]
    assert "empty payload" in failures[3]
    assert [e.call_id for e in events if e.WhichOneof("body") == "reply"] == [1]
    assert len(server.pids()) == 2


def test_a_stream_without_a_token_is_refused(server: ServerProcess) -> None:
    async def bare() -> grpc.StatusCode:
        async def nothing() -> AsyncIterator[pool_pb2.CallMessages]:
            await asyncio.sleep(10)
            yield pool_pb2.CallMessages()

        async with grpc.aio.insecure_channel(server.address) as channel:
            try:
                async for _ in pool_pb2_grpc.PoolStub(channel).Calls(nothing()):
                    pass
            except grpc.aio.AioRpcError as e:
                return e.code()
        return grpc.StatusCode.OK

    assert asyncio.run(bare()) == grpc.StatusCode.UNAUTHENTICATED


def echo(data: bytes) -> bytes:
    return data


@pytest.mark.parametrize("extra", [-1024, 0, 1024])
def test_payloads_either_side_of_the_stream_limit(server: ServerProcess, extra: int) -> None:
    """Up to 4 MiB on the stream, beyond in pieces over RunChunked: both exact."""
    remote = compute_this(server.address)(echo)
    size = len(remote(b"").payload())  # the payload's own overhead
    data = bytes(range(256)) * ((_transport.STREAM_PAYLOAD_BYTES - size + extra) // 256 + 1)
    assert remote(data).compute() == data


async def _chunked(address: str, chunks: list[pool_pb2.Chunk]) -> grpc.StatusCode:
    async def pieces() -> AsyncIterator[pool_pb2.Chunk]:
        for chunk in chunks:
            yield chunk

    async with grpc.aio.insecure_channel(address) as channel:
        try:
            async for _ in pool_pb2_grpc.PoolStub(channel).RunChunked(
                pieces(), metadata=AUTH_METADATA, timeout=30
            ):
                pass
        except grpc.aio.AioRpcError as e:
            return e.code()
    return grpc.StatusCode.OK


@pytest.mark.parametrize(
    "chunks",
    [
        [],  # nothing at all
        [pool_pb2.Chunk(data=b"abc")],  # no head
        [pool_pb2.Chunk(request=pool_pb2.RunRequest(), total_bytes=2), pool_pb2.Chunk(data=b"abc")],
        [pool_pb2.Chunk(request=pool_pb2.RunRequest(), total_bytes=5), pool_pb2.Chunk(data=b"abc")],
        [pool_pb2.Chunk(request=pool_pb2.RunRequest(), total_bytes=2**40)],
    ],
    ids=["empty", "no-head", "too-many-bytes", "too-few-bytes", "over-the-limit"],
)
def test_malformed_chunked_calls_are_refused(
    server: ServerProcess, chunks: list[pool_pb2.Chunk]
) -> None:
    assert asyncio.run(_chunked(server.address, chunks)) == grpc.StatusCode.INVALID_ARGUMENT
    assert len(server.pids()) == 2


def test_a_function_is_sent_once_and_survives_a_worker_restart(server: ServerProcess) -> None:
    """compute() names its function by key after the first call on a stream;
    a replaced worker (empty cache) gets it from the server, not the client."""
    table = bytes(range(256)) * 4096  # a 1 MiB closure: worth sending once

    def lookup(i: int) -> int:
        return table[i]

    remote = compute_this(server.address)(lookup)

    async def calls(indexes: range) -> tuple[list[int], int]:
        results = [await remote.async_run(i) for i in indexes]
        return results, len(_transport.stream_for(remote.servers.addresses[0])._sent)

    async def across_worker_restarts() -> tuple[list[int], list[int], int]:
        before, _ = await calls(range(10))
        old = server.pids()
        for pid in old:
            os.kill(pid, signal.SIGKILL)

        def replaced() -> bool:
            return not set(server.pids()) & set(old) and all_idle(server, 2)()

        await asyncio.to_thread(wait_until, replaced, 30, "fresh workers")
        after, sent = await calls(range(10, 20))
        return before, after, sent

    before, after, sent = asyncio.run(across_worker_restarts())
    assert before == list(range(10)) and after == list(range(10, 20))
    assert sent == 1  # one function key sent on the stream, once


PICKLED_AT: list[float] = []


class Stamped:
    """An argument that notes when the client pickled it (and arrives as an int)."""

    def __init__(self, value: int) -> None:
        self.value = value

    def __reduce__(self) -> tuple[type[int], tuple[int]]:
        PICKLED_AT.append(time.time())
        return (int, (self.value,))


def ran_at(value: int) -> float:
    return time.time()


def test_the_first_call_of_a_burst_runs_before_the_last_is_pickled(server: ServerProcess) -> None:
    remote = compute_this(server.address)(ran_at)
    PICKLED_AT.clear()

    async def burst() -> list[float]:
        await remote.async_run(0)  # the stream is open
        PICKLED_AT.clear()
        return await asyncio.gather(*(remote.async_run(Stamped(i)) for i in range(3000)))  # type: ignore[arg-type]

    ran = asyncio.run(burst())
    assert len(PICKLED_AT) == 3000
    assert min(ran) < max(PICKLED_AT)


LOOPS_SCRIPT = """
import asyncio, sys
from distribute_client import compute_this

@compute_this(sys.argv[1])
def add(a, b):
    return a + b

assert add(1, 2).compute() == 3  # the blocking API's own loop, alive throughout
for i in range(3):  # each asyncio.run() a new loop, closed at its end
    assert asyncio.run(add.async_run(i, 1)) == i + 1
print("done")
"""


def test_loops_that_close_leave_no_callbacks_behind(server: ServerProcess) -> None:
    """A loop's stream closes its channel as the loop shuts down, so gRPC
    never hands an event to a closed loop ("Event loop is closed")."""
    out = subprocess.run(
        [sys.executable, "-c", LOOPS_SCRIPT, server.address],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (out.returncode, out.stdout) == (0, "done\n"), out.stderr
    assert out.stderr == ""


def reports(steps: int) -> int:
    for step in range(steps):
        progress((step + 1) / steps, f"step {step}")
        time.sleep(0.06)  # past the worker's 50 ms throttle
    return steps


def test_progress_events_go_only_to_a_stream_that_asks(server: ServerProcess) -> None:
    """A client from before CallProgress would take one for the answer: a
    call's reports travel only when its start says progress."""
    payload = dumps(CallRequest(cloudpickle.dumps(reports), cloudpickle.dumps(((3,), {})), ()))
    request = pool_pb2.RunRequest(payload=payload)
    quiet = asyncio.run(_exchange(server.address, [_start(1, request)], 1))
    assert [event.WhichOneof("body") for event in quiet] == ["reply"]
    asking = pool_pb2.CallMessage(call_id=2, start=request, progress=True)
    told = asyncio.run(_exchange(server.address, [asking], 4))
    assert [event.WhichOneof("body") for event in told] == ["progress"] * 3 + ["reply"]
    assert told[2].progress.message == "step 2"
