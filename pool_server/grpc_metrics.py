"""A grpc.aio server interceptor that counts RPCs as go-grpc-prometheus does.

py-grpc-prometheus wraps only the synchronous server, so this is ours:
``grpc_server_started_total``, ``grpc_server_handled_total`` (with the
status code) and the ``grpc_server_handling_seconds`` histogram, labelled
``grpc_type``, ``grpc_service`` and ``grpc_method``.

The interceptor wraps each handler's behaviour, of whichever of the four
kinds (as ``auth.py``'s refusal does): a coroutine is timed until it
returns, an async generator (a streaming reply: Calls, RunChunked,
WatchJob) until it is exhausted or closed. The code is the one the handler
set or aborted with (``context.code()``); otherwise OK on return, UNKNOWN
for an exception, and CANCELLED (DEADLINE_EXCEEDED once the deadline has
passed) when the RPC was cancelled under it. It goes before the
Authenticator, so refused calls are counted with their codes too.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from prometheus_client import CollectorRegistry, Counter, Histogram

# gRPC's calls run from a tenth of a millisecond (GetWorkers) to a whole
# client's life (a Calls stream).
HANDLING_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0, 3600.0,
)  # fmt: skip

_LABELS = ("grpc_type", "grpc_service", "grpc_method")

Behaviour = Callable[[Any, grpc.aio.ServicerContext], Any]


class GrpcServerMetrics(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Counts and times every RPC the server handles."""

    def __init__(self, registry: CollectorRegistry) -> None:
        self._started = Counter(
            "grpc_server_started", "RPCs started on the server.", _LABELS, registry=registry
        )
        self._handled = Counter(
            "grpc_server_handled",
            "RPCs completed on the server, by status code.",
            (*_LABELS, "grpc_code"),
            registry=registry,
        )
        self._seconds = Histogram(
            "grpc_server_handling_seconds",
            "Time from an RPC's start to its end on the server.",
            _LABELS,
            buckets=HANDLING_BUCKETS,
            registry=registry,
        )
        # method -> (the handler as registered, its wrapped twin); refusals are new each time.
        self._wrapped: dict[str, tuple[grpc.RpcMethodHandler, grpc.RpcMethodHandler]] = {}

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(details)
        if handler is None:
            return None
        method: str = details.method
        cached = self._wrapped.get(method)
        if cached is not None and cached[0] is handler:
            return cached[1]
        wrapped = self._wrap(handler, method)
        self._wrapped[method] = (handler, wrapped)
        return wrapped

    def _wrap(self, handler: grpc.RpcMethodHandler, method: str) -> grpc.RpcMethodHandler:
        kind, make, behaviour = {
            (False, False): ("unary", grpc.unary_unary_rpc_method_handler, handler.unary_unary),
            (True, False): ("client_stream", grpc.stream_unary_rpc_method_handler,
                            handler.stream_unary),
            (False, True): ("server_stream", grpc.unary_stream_rpc_method_handler,
                            handler.unary_stream),
            (True, True): ("bidi_stream", grpc.stream_stream_rpc_method_handler,
                           handler.stream_stream),
        }[(handler.request_streaming, handler.response_streaming)]  # fmt: skip
        service, _, name = method.lstrip("/").rpartition("/")
        rpc = _Rpc(self, (kind, service, name))
        if inspect.isasyncgenfunction(behaviour):
            wrapped: Behaviour = _timed_stream(behaviour, rpc)
        elif inspect.iscoroutinefunction(behaviour):
            wrapped = _timed_call(behaviour, rpc)
        else:  # a synchronous handler, run in an executor: not ours to time
            return handler
        return make(
            wrapped,
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


class _Rpc:
    """The metrics of one method."""

    def __init__(self, metrics: GrpcServerMetrics, labels: tuple[str, str, str]) -> None:
        self._labels = labels
        self._started = metrics._started.labels(*labels)
        self._handled = metrics._handled
        self._seconds = metrics._seconds.labels(*labels)

    def begin(self) -> float:
        self._started.inc()
        return time.perf_counter()

    def end(
        self, began: float, context: grpc.aio.ServicerContext, error: BaseException | None
    ) -> None:
        self._seconds.observe(time.perf_counter() - began)
        self._handled.labels(*self._labels, status_code(context, error).name).inc()


def status_code(context: grpc.aio.ServicerContext, error: BaseException | None) -> grpc.StatusCode:
    """The code an RPC ended with: set or aborted with, else what its end implies."""
    code = context.code()
    if isinstance(code, grpc.StatusCode):
        return code
    if error is None:
        return grpc.StatusCode.OK
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return grpc.StatusCode.DEADLINE_EXCEEDED
        return grpc.StatusCode.CANCELLED
    return grpc.StatusCode.UNKNOWN


def _timed_call(behaviour: Behaviour, rpc: _Rpc) -> Behaviour:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> Any:
        began, error = rpc.begin(), None
        try:
            return await behaviour(request, context)
        except BaseException as e:
            error = e
            raise
        finally:
            rpc.end(began, context, error)

    return timed


def _timed_stream(behaviour: Behaviour, rpc: _Rpc) -> Behaviour:
    async def timed(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        began, error = rpc.begin(), None
        try:
            async with contextlib.aclosing(behaviour(request, context)) as responses:
                async for response in responses:
                    yield response
        except BaseException as e:  # GeneratorExit too: closed before its end
            error = e
            raise
        finally:
            rpc.end(began, context, error)

    return timed
