"""gRPC channels and the one place where gRPC errors become PoolErrors."""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any

import grpc

from distribute_client.errors import (
    CallTimeoutError,
    JobCancelledError,
    JobNotFoundError,
    PoolError,
    ProtocolError,
    QueueFullError,
    ServerUnavailableError,
    WorkerCrashedError,
)
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.limits import GRPC_MESSAGE_OPTIONS, MAX_PAYLOAD_BYTES

DEFAULT_SERVER = "127.0.0.1:50051"

# Submit answers once the jobs are journaled: quick, unless the server is unwell.
SUBMIT_TIMEOUT_S = 60.0
SERVER_ENV = "POOL_SERVER"

_CHANNEL_OPTIONS = GRPC_MESSAGE_OPTIONS

# Metadata keys set by pool_server/errors.py.
_KIND_KEY = "pool-error"
_WORKER_ID_KEY = "pool-worker-id"
_EXIT_CODE_KEY = "pool-exit-code"


@dataclass(frozen=True)
class Address:
    """Where a pool-server listens: ``host:port``, ``grpc://...`` or ``grpcs://...``."""

    target: str
    tls: bool

    @classmethod
    def parse(cls, server: str | None) -> Address:
        text = server or os.environ.get(SERVER_ENV) or DEFAULT_SERVER
        tls = text.startswith("grpcs://")
        target = text.removeprefix("grpcs://").removeprefix("grpc://")
        host, sep, port = target.rpartition(":")
        if not sep or not host or not port.isdigit():
            raise ValueError(
                f"server address {text!r} is not host:port, grpc://host:port or grpcs://host:port"
            )
        return cls(target, tls)

    def __str__(self) -> str:
        return f"grpcs://{self.target}" if self.tls else self.target


# grpc.aio channels belong to the event loop that made them. A channel holds
# its loop, so entries are dropped by hand once their loop is closed (each
# asyncio.run() makes a new loop).
_channels: dict[asyncio.AbstractEventLoop, dict[Address, pool_pb2_grpc.PoolStub]] = {}


def stub_for(address: Address) -> pool_pb2_grpc.PoolStub:
    """A stub on a channel shared by every call to ``address`` on this loop."""
    loop = asyncio.get_running_loop()
    stubs = _channels.get(loop)
    if stubs is None:
        for closed in [other for other in _channels if other.is_closed()]:
            del _channels[closed]
        stubs = _channels[loop] = {}
    stub = stubs.get(address)
    if stub is None:
        if address.tls:
            channel = grpc.aio.secure_channel(
                address.target, grpc.ssl_channel_credentials(), options=_CHANNEL_OPTIONS
            )
        else:
            channel = grpc.aio.insecure_channel(address.target, options=_CHANNEL_OPTIONS)
        stub = stubs[address] = pool_pb2_grpc.PoolStub(channel)
    return stub


async def call(address: Address, method: str, request: Any, deadline_s: float | None) -> Any:
    """One unary RPC ``method`` of the Pool service, with errors mapped to PoolErrors."""
    with map_rpc_errors(address, deadline_s):
        return await getattr(stub_for(address), method)(request, timeout=deadline_s)


async def watch(address: Address, job_id: str) -> AsyncIterator[pool_pb2.JobStatus]:
    """The WatchJob stream: a job's status after every change, until it finishes."""
    with map_rpc_errors(address, None):
        async for status in stub_for(address).WatchJob(pool_pb2.JobRef(job_id=job_id)):
            yield status


@contextlib.contextmanager
def map_rpc_errors(address: Address, timeout: float | None) -> Iterator[None]:
    try:
        yield
    except grpc.aio.AioRpcError as e:
        raise _translate(e, address, timeout) from e


_ERRORS_BY_KIND: dict[str, type[PoolError]] = {
    "cancelled": JobCancelledError,
    "not-found": JobNotFoundError,
    "queue-full": QueueFullError,
}


def _translate(error: grpc.aio.AioRpcError, address: Address, timeout: float | None) -> PoolError:
    code, details = error.code(), error.details() or ""
    metadata = {k: v for k, v in (error.trailing_metadata() or ()) if isinstance(v, str)}
    kind = metadata.get(_KIND_KEY)
    if kind == "worker-crashed":
        exit_code = metadata.get(_EXIT_CODE_KEY)
        worker_id = metadata.get(_WORKER_ID_KEY)
        return WorkerCrashedError(
            details,
            exit_code=int(exit_code) if exit_code is not None else None,
            worker_id=int(worker_id) if worker_id is not None else None,
        )
    if kind in _ERRORS_BY_KIND:
        return _ERRORS_BY_KIND[kind](details)
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return CallTimeoutError(
            details if kind else f"the call did not finish within its {timeout:.3g} s timeout"
        )
    if code == grpc.StatusCode.UNAVAILABLE:
        if kind:
            return ServerUnavailableError(f"{address}: {details}")
        return ServerUnavailableError(
            f"no pool-server answered at {address} ({details}); is it running? "
            f"Start one with `pool-server`, or point {SERVER_ENV} at one"
        )
    if code == grpc.StatusCode.CANCELLED:
        return PoolError(
            f"{address} cancelled the call ({details}); it may be shutting down or overloaded"
        )
    if code == grpc.StatusCode.INVALID_ARGUMENT:
        return ProtocolError(f"{address} rejected the call: {details}")
    if code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        return PoolError(
            f"{address}: {details}; payloads and results are limited to {MAX_PAYLOAD_BYTES} bytes"
        )
    return PoolError(f"{address} answered {code.name}: {details}")
