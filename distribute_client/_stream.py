"""The client's end of a ``Calls`` stream: every call to one server, from one
event loop, as messages on one gRPC stream.

A call is a start message and an answer, matched by a call id; a caller
that gives up (its deadline, a cancelled task) sends a cancel message, and
the server drops or stops the call. The stream opens with the first call and
stays open. If it breaks (the server restarts, say) every call on it fails
with the translated error, and the next call opens a new stream.

Functions are sent once per stream: a call names its function by key, and
carries the pickled bytes only the first time; if the server has let them
go since, it answers FunctionNeeded and the call is started again with them.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Protocol

import grpc

from distribute_client.errors import (
    CallTimeoutError,
    PoolError,
    ProtocolError,
    ServerShuttingDownError,
)
from pool_proto import pool_pb2

# Function keys remembered as sent, per stream; one forgotten is sent again.
MAX_KEYS_REMEMBERED = 4096


class _StreamingCall(Protocol):
    def __aiter__(self) -> AsyncIterator[pool_pb2.CallEvents]: ...

    def cancel(self) -> bool: ...

    async def code(self) -> grpc.StatusCode: ...


OpenStream = Callable[[AsyncIterator[pool_pb2.CallMessages]], _StreamingCall]

# How long a loop that is shutting down waits after closing its channel.
CLOSE_SETTLE_S = 0.01

# Messages queued together are sent as one, up to about this size.
MAX_BATCH_BYTES = 4 * 1024 * 1024
# Told of each progress report of a running call: its fraction (None for
# a message alone) and message.
OnProgress = Callable[[float | None, str], None]
TranslateError = Callable[[grpc.aio.AioRpcError], PoolError]
FailedError = Callable[[pool_pb2.CallFailed], PoolError]


class CallStream:
    def __init__(
        self,
        open_stream: OpenStream,
        translate: TranslateError,
        failed: FailedError,
        close_channel: Callable[[], Awaitable[None]],
    ) -> None:
        self._translate = translate
        self._failed = failed
        self._close_channel = close_channel
        self._outbox: asyncio.Queue[pool_pb2.CallMessage | None] = asyncio.Queue()  # None: end
        self._pending: dict[int, asyncio.Future[pool_pb2.CallEvent]] = {}
        self._on_progress: dict[int, OnProgress] = {}
        self._sent: collections.OrderedDict[str, None] = collections.OrderedDict()
        self._ids = itertools.count(1)
        self.broken: PoolError | None = None
        self.load: pool_pb2.Load | None = None  # the server's, as of its last answers
        self.load_at = 0.0  # when it came (the loop's time)
        self._reader = asyncio.create_task(self._read(open_stream), name="pool-call-stream")

    def __repr__(self) -> str:
        state = f"broken: {self.broken}" if self.broken else f"{len(self._pending)} calls"
        return f"<CallStream {state}>"

    async def give_way(self) -> None:
        """Let calls already queued leave before the caller pickles another.

        In a burst (``gather`` of many calls, a map) every call's task would
        pickle and queue its call before the sender ran once; stepping aside
        while the sender is due puts it first, so the first call of a burst
        leaves at once and the rest follow in batches.
        """
        if not self._outbox.empty():
            await asyncio.sleep(0)

    async def run(
        self,
        request: pool_pb2.RunRequest,
        deadline_s: float | None,
        function: bytes = b"",
        on_progress: OnProgress | None = None,
    ) -> pool_pb2.RunReply:
        """Run one call; its reply, or the PoolError a Run would have raised.

        ``function`` is the pickled function of ``request.function_hash``,
        sent only if this stream has not sent it already. ``on_progress`` is
        told of the call's progress reports while it runs.
        """
        loop = asyncio.get_running_loop()
        deadline = None if deadline_s is None else loop.time() + deadline_s
        key = request.function_hash
        with_function = bool(key) and key not in self._sent
        while True:
            if with_function:
                request.function = function
                self._remember(key)
            event = await self._answer(request, deadline, deadline_s, on_progress)
            request.function = b""
            body = event.WhichOneof("body")
            if body == "reply":
                return event.reply
            if body == "failed":
                raise self._failed(event.failed)
            if body != "function_needed" or with_function:
                raise ProtocolError(f"the server answered a call with {body!r}")
            with_function = True  # it let the function go: send it again

    async def _answer(
        self,
        request: pool_pb2.RunRequest,
        deadline: float | None,
        timeout_s: float | None,
        on_progress: OnProgress | None,
    ) -> pool_pb2.CallEvent:
        if self.broken is not None:
            raise self.broken
        loop = asyncio.get_running_loop()
        remaining = None if deadline is None else deadline - loop.time()
        if remaining is not None and remaining <= 0:
            raise CallTimeoutError("the call's timeout passed before it could be sent")
        call_id = next(self._ids)
        answer: asyncio.Future[pool_pb2.CallEvent] = loop.create_future()
        self._pending[call_id] = answer
        if on_progress is not None:
            self._on_progress[call_id] = on_progress
        message = pool_pb2.CallMessage(
            call_id=call_id,
            start=request,
            deadline_s=remaining or 0.0,
            progress=on_progress is not None,
        )
        self._outbox.put_nowait(message)
        try:
            async with asyncio.timeout_at(deadline):
                return await answer
        except TimeoutError:
            self._cancel(call_id)
            within = f"within its {timeout_s:.3g} s timeout"
            raise CallTimeoutError(f"the call did not finish {within}") from None
        except asyncio.CancelledError:
            self._cancel(call_id)
            raise
        finally:
            self._on_progress.pop(call_id, None)

    def _cancel(self, call_id: int) -> None:
        if self._pending.pop(call_id, None) is not None and self.broken is None:
            cancel = pool_pb2.CallMessage(call_id=call_id, cancel=pool_pb2.CallCancel())
            self._outbox.put_nowait(cancel)

    def _remember(self, key: str) -> None:
        self._sent[key] = None
        self._sent.move_to_end(key)
        if len(self._sent) > MAX_KEYS_REMEMBERED:
            self._sent.popitem(last=False)

    async def _messages(self) -> AsyncIterator[pool_pb2.CallMessages]:
        """Everything queued by the time the last message left, as one; ends
        once the stream is broken, so that gRPC's task reading it ends too."""
        while (message := await self._outbox.get()) is not None:
            batch = pool_pb2.CallMessages(messages=[message])
            size = message.ByteSize()
            while size < MAX_BATCH_BYTES and not self._outbox.empty():
                message = self._outbox.get_nowait()
                if message is None:
                    yield batch
                    return
                batch.messages.append(message)
                size += message.ByteSize()
            yield batch

    async def _read(self, open_stream: OpenStream) -> None:
        """Hand out the answers until the stream ends. The call lives in this
        frame alone, so that once the stream is over nothing keeps it, or its
        channel, alive (a channel left over from a closed event loop would
        bind gRPC to that loop)."""
        call = open_stream(self._messages())
        try:
            async for batch in call:
                if batch.HasField("load"):
                    self.load = batch.load
                    self.load_at = asyncio.get_running_loop().time()
                for event in batch.events:
                    if event.HasField("progress"):
                        self._progressed(event.call_id, event.progress)
                        continue
                    answer = self._pending.pop(event.call_id, None)
                    if answer is not None and not answer.done():
                        answer.set_result(event)
            error: PoolError = ServerShuttingDownError("the server closed the call stream")
        except grpc.aio.AioRpcError as e:
            error = self._translate(e)
        except asyncio.CancelledError:  # the loop is shutting down (asyncio.run ends)
            self._fail_all(PoolError("the client's event loop closed the call stream"))
            with contextlib.suppress(BaseException):
                # The loop runs until this task ends: let gRPC finish with the
                # channel's calls now, or their last events reach a closed loop.
                await self._close_channel()
                # gRPC's core posts the closed channel's last events a moment
                # after close() returns; without this pause, about one loop
                # in eight left one to land on it closed.
                await asyncio.sleep(CLOSE_SETTLE_S)
            raise
        self._fail_all(error)

    def _progressed(self, call_id: int, report: pool_pb2.CallProgress) -> None:
        on_progress = self._on_progress.get(call_id)
        if on_progress is not None:
            fraction = report.fraction if report.HasField("fraction") else None
            on_progress(fraction, report.message)

    def _fail_all(self, error: PoolError) -> None:
        self.broken = error
        self._outbox.put_nowait(None)
        pending, self._pending = self._pending, {}
        for answer in pending.values():
            if not answer.done():
                answer.set_exception(error)
