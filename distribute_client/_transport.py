"""gRPC channels, one typed function per RPC, and the one place where gRPC
errors become PoolErrors (:func:`map_rpc_errors`).

Every RPC of the Pool service has its wrapper here (``run``, ``submit``,
``get_job``, ...), taking and returning its own messages, so the rest of the
client never names an RPC as a string and the type checker sees each request
and reply.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Iterator
from dataclasses import dataclass, field
from typing import Protocol, TypeVar

import grpc

from distribute_client import backends
from distribute_client._credentials import Credentials, token_interceptors
from distribute_client._stream import CallStream, OnProgress, OpenStream
from distribute_client.errors import (
    ERRORS_BY_KIND,
    AuthenticationError,
    CallTimeoutError,
    InvalidRequestError,
    PoolError,
    ProtocolError,
    ServerError,
    ServerUnavailableError,
    WorkerCrashedError,
)
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.limits import CHUNK_BYTES, GRPC_MESSAGE_OPTIONS, MAX_LIST_LIMIT, MAX_PAYLOAD_BYTES
from pool_wire.names import EXIT_CODE_KEY, KIND_KEY, WORKER_ID_KEY, ErrorKind, JobState

DEFAULT_SERVER = "127.0.0.1:50051"

# Submit answers once the jobs are journaled: quick, unless the server is unwell.
SUBMIT_TIMEOUT_S = 60.0
SERVER_ENV = "POOL_SERVER"


_CHANNEL_OPTIONS = GRPC_MESSAGE_OPTIONS

# For one of several servers: a cut link (no reset, no answer) is noticed
# within about a second, failing the calls on it so that they can go
# elsewhere, and a server that comes back is reconnected within two.
# pool-server allows pings this often (pool_server.app.GRPC_OPTIONS).
KEEPALIVE_OPTIONS: tuple[tuple[str, int], ...] = (
    ("grpc.keepalive_time_ms", 500),
    ("grpc.keepalive_timeout_ms", 500),
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.max_pings_without_data", 0),
    ("grpc.initial_reconnect_backoff_ms", 250),
    ("grpc.min_reconnect_backoff_ms", 250),
    ("grpc.max_reconnect_backoff_ms", 2000),
)

_MAX_PORT = 65535

RequestT = TypeVar("RequestT", contravariant=True)
ReplyT = TypeVar("ReplyT", covariant=True)


@dataclass(frozen=True)
class Address:
    """Where one pool-server listens (``host:port``, ``grpc://...`` or
    ``grpcs://...``), and the credentials this client shows it; or an
    address whose scheme names a backend (``backend``: ``local`` for
    ``local`` or ``local:N``, ``celery`` for ``celery://...``; see
    ``distribute_client.backends``), whose RPCs are answered without gRPC.

    ``keepalive``: the channel pings the server every half second, so that a
    cut link is noticed within a second (for one of several servers).
    ``tls_name``: the name to check the server's certificate against, when
    the target is one of the addresses of that name (``dns:///``).
    """

    target: str
    tls: bool
    credentials: Credentials = field(default_factory=Credentials)
    keepalive: bool = False
    tls_name: str = ""
    backend: str = ""

    @classmethod
    def parse(
        cls,
        server: str,
        credentials: Credentials | None = None,
        *,
        keepalive: bool = False,
        where: str = "",
    ) -> Address:
        """``server`` as an Address; ``ValueError`` naming the text, and
        ``where`` it came from, if it is not one. Without ``credentials``,
        those of the environment."""
        text = server.strip()
        where = where or f"server address {text!r}"
        scheme = backends.scheme_of(text)
        if scheme is not None:
            try:
                backends.check(text)
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
            return cls(text, tls=False, backend=scheme)
        tls = text.startswith("grpcs://")
        target = text.removeprefix("grpcs://").removeprefix("grpc://")
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit() or int(port) > _MAX_PORT:
            raise ValueError(f"{where} is not host:port, grpc://host:port or grpcs://host:port")
        return cls(target, tls, credentials or Credentials.resolve(), keepalive)

    def __str__(self) -> str:
        return f"grpcs://{self.target}" if self.tls else self.target


class _Unary(Protocol[RequestT, ReplyT]):
    """A unary RPC of the stub on a grpc.aio channel."""

    def __call__(self, request: RequestT, *, timeout: float | None = None) -> Awaitable[ReplyT]: ...


class _Streaming(Protocol[RequestT, ReplyT]):
    """A server-streaming RPC of the stub on a grpc.aio channel."""

    def __call__(self, request: RequestT) -> AsyncIterator[ReplyT]: ...


class _Chunked(Protocol):
    """A bidirectional-streaming RPC of the stub (RunChunked)."""

    def __call__(
        self, requests: AsyncIterator[pool_pb2.Chunk], *, timeout: float | None = None
    ) -> AsyncIterator[pool_pb2.Chunk]: ...


class _Stub(Protocol):
    """``pool_pb2_grpc.PoolStub`` with types: protoc generates it without hints."""

    Run: _Unary[pool_pb2.RunRequest, pool_pb2.RunReply]
    Calls: OpenStream
    RunChunked: _Chunked
    GetWorkers: _Unary[pool_pb2.GetWorkersRequest, pool_pb2.GetWorkersReply]
    SetWorkerLimits: _Unary[pool_pb2.WorkerLimits, pool_pb2.WorkerLimits]
    Submit: _Unary[pool_pb2.SubmitRequest, pool_pb2.SubmitReply]
    GetJob: _Unary[pool_pb2.JobRef, pool_pb2.JobStatus]
    WatchJob: _Streaming[pool_pb2.JobRef, pool_pb2.JobStatus]
    StreamLogs: _Streaming[pool_pb2.LogsRequest, pool_pb2.LogChunk]
    GetResult: _Unary[pool_pb2.JobRef, pool_pb2.JobResult]
    CancelJob: _Unary[pool_pb2.JobRef, pool_pb2.JobStatus]
    ListJobs: _Unary[pool_pb2.ListJobsRequest, pool_pb2.ListJobsReply]
    GetBatch: _Unary[pool_pb2.BatchRef, pool_pb2.BatchStatus]
    CancelBatch: _Unary[pool_pb2.BatchRef, pool_pb2.BatchStatus]
    PutObject: _Unary[pool_pb2.ObjectData, pool_pb2.ObjectRef]
    DeleteObject: _Unary[pool_pb2.ObjectRef, pool_pb2.ObjectRef]


@dataclass(frozen=True)
class _Connection:
    channel: grpc.aio.Channel
    stub: _Stub


# grpc.aio channels belong to the event loop that made them. A channel holds
# its loop, so entries are dropped by hand once their loop is closed (each
# asyncio.run() makes a new loop), and a loop's Calls streams close their
# channel as the loop shuts down (see CallStream).
_connections: dict[asyncio.AbstractEventLoop, dict[Address, _Connection]] = {}
_streams: dict[asyncio.AbstractEventLoop, dict[Address, CallStream]] = {}

# Calls whose payload is larger go as their own Run RPC rather than on the
# shared stream, so that one big message does not hold up the small ones
# behind it.
STREAM_PAYLOAD_BYTES = 4 * 1024 * 1024


def stub_for(address: Address) -> _Stub:
    """A stub on a channel shared by every call to ``address`` on this loop."""
    return _connection(address).stub


def connectivity(address: Address) -> grpc.ChannelConnectivity:
    """The state of this loop's channel to ``address``; an idle one starts connecting."""
    return _connection(address).channel.get_state(try_to_connect=True)


async def connected(address: Address, timeout_s: float) -> bool:
    """Whether the channel to ``address`` is (or within ``timeout_s`` becomes) ready."""
    channel = _connection(address).channel
    if channel.get_state(try_to_connect=True) is grpc.ChannelConnectivity.READY:
        return True
    try:
        async with asyncio.timeout(timeout_s):
            await channel.channel_ready()
    except TimeoutError:
        return False
    return True


def reported_load(address: Address, max_age_s: float) -> pool_pb2.Load | None:
    """The load ``address`` reported with its answers on this loop's stream,
    if they came within the last ``max_age_s``."""
    loop = asyncio.get_running_loop()
    stream = _streams.get(loop, {}).get(address)
    if stream is None or loop.time() - stream.load_at > max_age_s:
        return None
    return stream.load


def _connection(address: Address) -> _Connection:
    loop = asyncio.get_running_loop()
    connections = _connections.get(loop)
    if connections is None:
        for closed in [other for other in _connections if other.is_closed()]:
            del _connections[closed]
        connections = _connections[loop] = {}
    connection = connections.get(address)
    if connection is None:
        credentials = address.credentials
        interceptors = token_interceptors(credentials) if credentials.token else None
        options: list[tuple[str, str | int]] = [*_CHANNEL_OPTIONS]
        if address.keepalive:
            options += KEEPALIVE_OPTIONS
        if address.tls_name:
            options.append(("grpc.ssl_target_name_override", address.tls_name))
        if address.tls:
            channel = grpc.aio.secure_channel(
                address.target,
                credentials.channel_credentials(),
                options=options,
                interceptors=interceptors,
            )
        else:
            channel = grpc.aio.insecure_channel(
                address.target, options=options, interceptors=interceptors
            )
        stub = pool_pb2_grpc.PoolStub(channel)
        connection = connections[address] = _Connection(channel, stub)
    return connection


async def _close_at_shutdown(address: Address) -> None:
    """Close this loop's channel to ``address``: its loop is shutting down,
    and gRPC must finish with its calls before the loop is gone."""
    connections = _connections.get(asyncio.get_running_loop(), {})
    connection = connections.pop(address, None)
    if connection is not None:
        await connection.channel.close()


# One typed wrapper per RPC of the Pool service. The generated stub has no
# type hints, so _Stub describes it; callers see each RPC's request and reply.


def stream_for(address: Address) -> CallStream:
    """The Calls stream to ``address`` on this loop, opened (again) if needed."""
    loop = asyncio.get_running_loop()
    streams = _streams.get(loop)
    if streams is None:
        for closed in [other for other in _streams if other.is_closed()]:
            del _streams[closed]
        streams = _streams[loop] = {}
    stream = streams.get(address)
    if stream is None or stream.broken is not None:
        stream = streams[address] = CallStream(
            stub_for(address).Calls,
            lambda error: _translate(error, address, None),
            lambda failed: _failed(failed, address),
            lambda: _close_at_shutdown(address),
        )
    return stream


@dataclass(frozen=True)
class Reply:
    """A call's answer, however it travelled: on the stream, as a Run, or in pieces."""

    outcome: bytes | bytearray  # a pickled CallOutcome (or BatchOutcome)
    worker_id: int
    worker_pid: int
    job_id: str

    @classmethod
    def of(cls, reply: pool_pb2.RunReply, outcome: bytes | bytearray | None = None) -> Reply:
        return cls(
            reply.outcome if outcome is None else outcome,
            reply.worker_id,
            reply.worker_pid,
            reply.job_id,
        )


async def give_way(address: Address) -> None:
    """Before pickling a call: let the calls already queued to ``address`` leave."""
    if not address.backend:
        await stream_for(address).give_way()


async def run(
    address: Address,
    request: pool_pb2.RunRequest,
    deadline_s: float | None,
    function: bytes = b"",
    on_progress: OnProgress | None = None,
) -> Reply:
    """One call on the next idle worker, answered with its outcome: on the
    Calls stream, or in pieces over RunChunked if its payload is large.
    ``function`` is the pickled function of ``request.function_hash``, if it
    has one (sent only to a server that lacks it). ``on_progress`` hears the
    call's progress reports, where they travel (on the Calls stream)."""
    if address.backend:
        backend = backends.backend_for(address.target)
        outcome, worker_id, worker_pid = await backend.run(request, deadline_s, function)
        return Reply(outcome, worker_id, worker_pid, job_id="")
    if len(request.payload) <= STREAM_PAYLOAD_BYTES:
        stream = stream_for(address)
        return Reply.of(await stream.run(request, deadline_s, function, on_progress))
    request.function = function
    with map_rpc_errors(address, deadline_s):
        return await _run_chunked(stub_for(address), request, deadline_s)


async def _run_chunked(
    stub: _Stub, request: pool_pb2.RunRequest, deadline_s: float | None
) -> Reply:
    payload = memoryview(request.payload)
    request.payload = b""

    async def pieces() -> AsyncIterator[pool_pb2.Chunk]:
        yield pool_pb2.Chunk(request=request, total_bytes=len(payload))
        for start in range(0, len(payload), CHUNK_BYTES):
            yield pool_pb2.Chunk(data=bytes(payload[start : start + CHUNK_BYTES]))

    answer = stub.RunChunked(pieces(), timeout=deadline_s)
    head = await anext(aiter(answer), None)
    if head is None or head.WhichOneof("head") != "reply":
        raise ProtocolError("the server's RunChunked answer did not start with its reply")
    outcome = bytearray(head.total_bytes)
    filled = 0
    async for chunk in answer:
        data = chunk.data
        outcome[filled : filled + len(data)] = data
        filled += len(data)
    if filled != len(outcome):
        raise ProtocolError(f"the outcome came in {filled} of the {len(outcome)} bytes announced")
    return Reply.of(head.reply, outcome)


async def get_workers(
    address: Address, request: pool_pb2.GetWorkersRequest, deadline_s: float | None
) -> pool_pb2.GetWorkersReply:
    """GetWorkers: every worker slot plus the job queue."""
    if address.backend:
        return await backends.backend_for(address.target).get_workers(request)
    return await _unary(address, stub_for(address).GetWorkers, request, deadline_s)


async def set_worker_limits(
    address: Address, request: pool_pb2.WorkerLimits, deadline_s: float | None
) -> pool_pb2.WorkerLimits:
    """SetWorkerLimits: how few and how many workers the pool may have."""
    if address.backend:
        raise InvalidRequestError(
            f"{address} runs on {address.backend}, whose engine sizes its own workers: "
            "worker limits are a pool-server's"
        )
    return await _unary(address, stub_for(address).SetWorkerLimits, request, deadline_s)


async def put_object(
    address: Address, request: pool_pb2.ObjectData, deadline_s: float | None
) -> pool_pb2.ObjectRef:
    """PutObject: store an object for calls to use by reference."""
    _refuse_objects(address)
    return await _unary(address, stub_for(address).PutObject, request, deadline_s)


async def delete_object(
    address: Address, request: pool_pb2.ObjectRef, deadline_s: float | None
) -> pool_pb2.ObjectRef:
    """DeleteObject: forget a stored object; its size (0 if it was not stored)."""
    _refuse_objects(address)
    return await _unary(address, stub_for(address).DeleteObject, request, deadline_s)


def _refuse_objects(address: Address) -> None:
    if address.backend:
        raise InvalidRequestError(
            f"{address} runs on {address.backend}: stored objects (Client.put) are a "
            "pool-server's; pass the object itself"
        )


async def submit(
    address: Address, request: pool_pb2.SubmitRequest, deadline_s: float | None
) -> pool_pb2.SubmitReply:
    """Submit: one job per payload, journaled before the reply; all or none."""
    if address.backend:
        return await backends.backend_for(address.target).submit(request)
    return await _unary(address, stub_for(address).Submit, request, deadline_s)


async def get_job(
    address: Address, request: pool_pb2.JobRef, deadline_s: float | None
) -> pool_pb2.JobStatus:
    """GetJob: where a job stands."""
    if address.backend:
        return await backends.backend_for(address.target).get_job(request)
    return await _unary(address, stub_for(address).GetJob, request, deadline_s)


async def watch_job(
    address: Address, request: pool_pb2.JobRef
) -> AsyncIterator[pool_pb2.JobStatus]:
    """WatchJob: a job's status after every change, until it finishes."""
    if address.backend:
        async for status in backends.backend_for(address.target).watch_job(request):
            yield status
        return
    with map_rpc_errors(address, None):
        async for status in stub_for(address).WatchJob(request):
            yield status


async def stream_logs(
    address: Address, request: pool_pb2.LogsRequest
) -> AsyncIterator[pool_pb2.LogChunk]:
    """StreamLogs: a running job's output as it prints it. A backend keeps
    no live output: to it every job's is in its outcome (``finished``)."""
    if address.backend:
        yield pool_pb2.LogChunk(finished=True)
        return
    with map_rpc_errors(address, None):
        async for chunk in stub_for(address).StreamLogs(request):
            yield chunk


async def get_result(
    address: Address, request: pool_pb2.JobRef, deadline_s: float | None
) -> pool_pb2.JobResult:
    """GetResult: wait up to the deadline for a job to finish; its status and outcome."""
    if address.backend:
        return await backends.backend_for(address.target).get_result(request, deadline_s)
    return await _unary(address, stub_for(address).GetResult, request, deadline_s)


async def cancel_job(
    address: Address, request: pool_pb2.JobRef, deadline_s: float | None
) -> pool_pb2.JobStatus:
    """CancelJob: drop a queued job, or stop a running one's worker."""
    if address.backend:
        return await backends.backend_for(address.target).cancel_job(request)
    return await _unary(address, stub_for(address).CancelJob, request, deadline_s)


async def list_jobs(
    address: Address, request: pool_pb2.ListJobsRequest, deadline_s: float | None
) -> pool_pb2.ListJobsReply:
    """ListJobs: submitted jobs, newest first."""
    if address.backend:
        return await backends.backend_for(address.target).list_jobs(request)
    return await _unary(address, stub_for(address).ListJobs, request, deadline_s)


async def get_batch(
    address: Address, request: pool_pb2.BatchRef, deadline_s: float | None
) -> pool_pb2.BatchStatus:
    """GetBatch: a batch's calls per state."""
    if address.backend:
        return await backends.backend_for(address.target).get_batch(request)
    return await _unary(address, stub_for(address).GetBatch, request, deadline_s)


async def cancel_batch(
    address: Address, request: pool_pb2.BatchRef, deadline_s: float | None
) -> pool_pb2.BatchStatus:
    """CancelBatch: cancel a batch's unfinished jobs; the batch after. A
    backend has no such RPC: its jobs of the batch are cancelled one by one."""
    if not address.backend:
        return await _unary(address, stub_for(address).CancelBatch, request, deadline_s)
    backend = backends.backend_for(address.target)
    listing = pool_pb2.ListJobsRequest(batch_id=request.batch_id, limit=MAX_LIST_LIMIT)
    for status in (await backend.list_jobs(listing)).jobs:
        if not JobState.from_proto(status.state).finished:
            await backend.cancel_job(pool_pb2.JobRef(job_id=status.id))
    return await backend.get_batch(request)


async def _unary(
    address: Address,
    method: _Unary[RequestT, ReplyT],
    request: RequestT,
    deadline_s: float | None,
) -> ReplyT:
    with map_rpc_errors(address, deadline_s):
        return await method(request, timeout=deadline_s)


@contextlib.contextmanager
def map_rpc_errors(address: Address, timeout: float | None) -> Iterator[None]:
    """Turn a gRPC error inside the block into its PoolError (the cause kept)."""
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise _translate(e, address, timeout) from e


def _translate(error: grpc.aio.AioRpcError, address: Address, timeout: float | None) -> PoolError:
    """The PoolError for an error status."""
    metadata = {k: v for k, v in (error.trailing_metadata() or ()) if isinstance(v, str)}
    return _pool_error(error.code(), error.details() or "", metadata, address, timeout)


def _failed(failed: pool_pb2.CallFailed, address: Address) -> PoolError:
    """The PoolError for a stream call that failed: as for the Run it stands for."""
    code = _CODES.get(failed.code, grpc.StatusCode.UNKNOWN)
    return _pool_error(code, failed.message, dict(failed.metadata), address, None)


_CODES = {code.value[0]: code for code in grpc.StatusCode}


def _pool_error(
    code: grpc.StatusCode,
    details: str,
    metadata: dict[str, str],
    address: Address,
    timeout: float | None,
) -> PoolError:
    """By the server's error kind when it sent one this client knows, else by
    the status code alone."""
    try:
        kind = ErrorKind(metadata.get(KIND_KEY, ""))
    except ValueError:  # no kind (gRPC's own status), or one from a newer server
        return _from_code(code, details, address, timeout)
    cls = ERRORS_BY_KIND[kind]
    if cls is WorkerCrashedError:
        exit_code, worker_id = metadata.get(EXIT_CODE_KEY), metadata.get(WORKER_ID_KEY)
        return WorkerCrashedError(
            details,
            exit_code=int(exit_code) if exit_code is not None else None,
            worker_id=int(worker_id) if worker_id is not None else None,
        )
    if issubclass(cls, ServerUnavailableError | ServerError):
        return cls(f"{address}: {details}")
    if issubclass(cls, InvalidRequestError):
        return cls(f"{address} rejected the call: {details}")
    return cls(details)


def _from_code(
    code: grpc.StatusCode, details: str, address: Address, timeout: float | None
) -> PoolError:
    """A status the server's code did not explain: gRPC's own (no answer, the
    client's deadline, a message over the size limit)."""
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        within = f" within its {timeout:.3g} s timeout" if timeout is not None else ""
        return CallTimeoutError(f"the call did not finish{within}")
    if code == grpc.StatusCode.UNAVAILABLE:
        return ServerUnavailableError(
            f"no pool-server answered at {address} ({details}); is it running? "
            f"Start one with `pool-server`, or point {SERVER_ENV} at one"
        )
    if code == grpc.StatusCode.CANCELLED:
        return PoolError(
            f"{address} cancelled the call ({details}); it may be shutting down or overloaded"
        )
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        return AuthenticationError(f"{address}: {details}")
    if code == grpc.StatusCode.INVALID_ARGUMENT:  # from a proxy, say
        return InvalidRequestError(f"{address} rejected the call: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PoolError(
            f"{address}: {details}; payloads and results are limited to {MAX_PAYLOAD_BYTES} bytes"
        )
    return PoolError(f"{address} answered {code.name}: {details}")
