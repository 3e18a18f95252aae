"""One ``Calls`` stream: the client's calls, started and cancelled by its
messages, each answered as soon as it finishes.

Reading and answering are apart: a reader task takes messages off the
stream, one task per call runs it, and the handler yields their answers in
the order they come. The reader waits for room in the job queue before it
takes the next message, so a full queue slows the client's stream down
(HTTP/2 flow control does the rest) instead of failing its calls. When the
client closes its side, or the server stops, the stream ends once every
call it has is answered; when it
goes away (or the server stops the RPC) every call still running is
cancelled, which stops its job, as for a Run whose caller left.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Coroutine
from typing import Any

from pool_proto import pool_pb2
from pool_server.errors import CallError, InvalidCall

log = logging.getLogger("pool_server.call_stream")

# Answers ready together go in one message up to about this size (a larger
# single answer goes alone).
MAX_BATCH_BYTES = 4 * 1024 * 1024

# A call's handler gets its message and a way to send events before its
# answer (progress); it returns the answer.
Aside = Callable[[pool_pb2.CallEvent], None]
Handler = Callable[[pool_pb2.CallMessage, Aside], Coroutine[Any, Any, pool_pb2.CallEvent]]


class CallStream:
    def __init__(
        self,
        handle: Handler,
        wait_for_room: Callable[[], Awaitable[None]],
        load: Callable[[], pool_pb2.Load],
    ) -> None:
        self._handle = handle
        self._wait_for_room = wait_for_room
        self._load = load
        self._calls: dict[int, asyncio.Task[pool_pb2.CallEvent]] = {}
        self._answers: asyncio.Queue[pool_pb2.CallEvent | None] = asyncio.Queue()
        self._reading = True
        self._reader: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<CallStream {len(self._calls)} calls, reading={self._reading}>"

    async def serve(
        self, messages: AsyncIterator[pool_pb2.CallMessages]
    ) -> AsyncIterator[pool_pb2.CallEvents]:
        """The answers, until the client has closed its side and all are sent:
        each message carries every answer ready by then (up to a few MiB)."""
        reader = self._reader = asyncio.create_task(self._read(messages))
        try:
            ended = False
            while not ended and (event := await self._answers.get()) is not None:
                batch = pool_pb2.CallEvents(events=[event], load=self._load())
                size = event.ByteSize()
                while size < MAX_BATCH_BYTES and not self._answers.empty():
                    more = self._answers.get_nowait()
                    if more is None:
                        ended = True
                        break
                    batch.events.append(more)
                    size += more.ByteSize()
                yield batch
        finally:
            reader.cancel()
            for task in list(self._calls.values()):
                task.cancel()

    def stop_reading(self) -> None:
        """Take no more calls (the server is stopping); the stream ends, with
        status OK, once the calls it has are answered."""
        if self._reader is not None:
            self._reader.cancel()

    async def _read(self, messages: AsyncIterator[pool_pb2.CallMessages]) -> None:
        try:
            async for batch in messages:
                for message in batch.messages:
                    body = message.WhichOneof("body")
                    if body == "start":
                        self._start(message)
                        await self._wait_for_room()
                    elif body == "cancel":
                        task = self._calls.get(message.call_id)
                        if task is not None:
                            task.cancel()
        finally:
            self._reading = False
            if not self._calls:
                self._answers.put_nowait(None)

    def _start(self, message: pool_pb2.CallMessage) -> None:
        call_id = message.call_id
        if call_id in self._calls:
            error = InvalidCall(f"call id {call_id} is already running on this stream")
            self._answers.put_nowait(failure(call_id, error))
            return
        task = asyncio.create_task(self._handle(message, self._aside))
        self._calls[call_id] = task
        task.add_done_callback(lambda done: self._finished(call_id, done))

    def _aside(self, event: pool_pb2.CallEvent) -> None:
        """An event about a running call that is not its answer."""
        if event.call_id in self._calls:
            self._answers.put_nowait(event)

    def _finished(self, call_id: int, task: asyncio.Task[pool_pb2.CallEvent]) -> None:
        del self._calls[call_id]
        if not task.cancelled():
            error = task.exception()
            if error is None:
                self._answers.put_nowait(task.result())
            else:
                log.error("call %d of a stream failed", call_id, exc_info=error)
                internal = CallError(f"internal error: {error!r}")
                self._answers.put_nowait(failure(call_id, internal))
        if not self._reading and not self._calls:
            self._answers.put_nowait(None)


def failure(call_id: int, error: CallError) -> pool_pb2.CallEvent:
    """The answer to a call that could not run: what a failed Run would end with."""
    failed = pool_pb2.CallFailed(
        code=error.code.value[0], message=str(error), metadata=dict(error.metadata())
    )
    return pool_pb2.CallEvent(call_id=call_id, failed=failed)
