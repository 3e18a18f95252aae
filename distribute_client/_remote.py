"""``compute_this``: a function that runs on a pool-server when asked to."""

from __future__ import annotations

import functools
import inspect
import os
import types
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Generic, ParamSpec, TypeVar, overload

from distribute_client import _balancer, _batch, _codec, _submit, _transport
from distribute_client._client import Client
from distribute_client._jobs import Job
from distribute_client._servers import Servers, ServerSpec, TokenSpec
from distribute_client._sync import run_sync
from distribute_client._tracebacks import user_frames
from pool_proto import pool_pb2

P = ParamSpec("P")
R = TypeVar("R")


class RemoteFunction(Generic[P, R]):
    """A function whose calls run on a pool-server's workers.

    Calling it checks the arguments against the signature at once and returns
    a :class:`Call`; nothing is sent until the call is run or submitted.
    """

    def __init__(
        self,
        function: Callable[P, R],
        server: ServerSpec,
        depmodules: Iterable[types.ModuleType | str],
        timeout: float | None,
        retries: int = 0,
        retry_on: Iterable[type[BaseException]] = (),
        durable: bool = False,
        connect: Mapping[str, Any] | None = None,
        ship: Iterable[types.ModuleType] = (),
    ) -> None:
        functools.update_wrapper(self, function)
        if retries < 0:
            raise ValueError(f"retries must be 0 or more, got {retries}")
        self.function = function
        # An explicit address is checked now; the default is looked up per
        # call, so $POOL_SERVER (or $POOL_TOKEN) may be set after the function
        # is defined. ``connect``: Servers.parse's token, TLS and policy options.
        self._connect = dict(connect or {})
        self._servers = Servers.parse(server, **self._connect) if server else None
        self.depmodules = tuple(m if isinstance(m, str) else m.__name__ for m in depmodules)
        self.timeout = timeout
        self.retries = retries
        self.retry_on = tuple(f"{cls.__module__}.{cls.__qualname__}" for cls in retry_on)
        self.durable = durable
        self._signature = _signature_of(function)
        self.shipped = _codec.Shipped(tuple(ship))

    @property
    def servers(self) -> Servers:
        return self._servers or Servers.parse(None, **self._connect)

    def __repr__(self) -> str:
        return f"<RemoteFunction {self.function.__qualname__} on {self.servers}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        if self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self.function.__qualname__}{self._signature}: {e}") from None
        return Call(self, args, kwargs)

    async def async_run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call from asyncio code: ``await f.async_run(x)``."""
        with user_frames:
            return await self(*args, **kwargs).async_run()

    def submit(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        """Submit one call as a durable job: ``job = f.submit(x)``."""
        return self(*args, **kwargs).submit()

    async def async_submit(self, *args: P.args, **kwargs: P.kwargs) -> Job[R]:
        return await self(*args, **kwargs).async_submit()

    def map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int = _batch.DEFAULT_MAX_IN_FLIGHT,
        chunk_size: int | None = None,
        progress: bool = False,
        batch_id: str | None = None,
        durable: bool | None = None,
    ) -> _batch.Map[R]:
        """Run ``f(*items)`` for the items of ``iterables`` (as builtin ``map``),
        yielding the results in input order; each call's error is raised at
        its place.

        Calls travel ``chunk_size`` to a chunk (default: as
        ``multiprocessing.Pool.map``, about 4 chunks per worker, at most 256
        calls each; 1 with ``retry_on``, so a retry re-runs only the call
        that raised); at most ``max_in_flight`` calls are outstanding at a
        time; ``progress`` shows a progress bar on a terminal. Use it in a
        ``with`` block (or call ``close()``) to cancel what is left when you
        stop early.

        By default each chunk is a plain call, as ``compute()`` is: nothing
        is journaled, since you stay to collect the results (a chunk's
        deadline is ``timeout`` per call, doubled for the wait behind the
        map's own earlier chunks). ``durable=True`` (the default for
        ``compute_this(durable=True)`` functions, or when ``batch_id`` is
        given) submits each chunk as a journaled job instead: the jobs run
        even if this process goes away, and the returned iterator's
        ``batch_id`` lets any process follow them with
        ``Client.batch(batch_id)``; ``batch_id`` is None for a plain map.
        """
        return _batch.Map(
            self.async_map(
                *iterables,
                max_in_flight=max_in_flight,
                chunk_size=chunk_size,
                progress=progress,
                batch_id=batch_id,
                durable=durable,
            )
        )

    def async_map(
        self,
        *iterables: Iterable[Any],
        max_in_flight: int = _batch.DEFAULT_MAX_IN_FLIGHT,
        chunk_size: int | None = None,
        progress: bool = False,
        batch_id: str | None = None,
        durable: bool | None = None,
    ) -> _batch.AsyncMap[R]:
        """``map`` for asyncio code: ``async for value in f.async_map(xs)``."""
        if durable is None:
            durable = self.durable or batch_id is not None
        return _batch.AsyncMap(
            self, iterables, max_in_flight, chunk_size, progress, batch_id, durable
        )

    def get_workers(self) -> int:
        """How many workers the servers have (as in the original API)."""
        return len(Client(self.servers).workers())


def _signature_of(function: Callable[..., Any]) -> inspect.Signature | None:
    """The signature to check calls against; None for builtins that have none."""
    try:
        return inspect.signature(function)
    except ValueError:
        return None


class Call(Generic[R]):
    """One bound call of a :class:`RemoteFunction`: run it with :meth:`compute`
    (blocking) or :meth:`async_run`, or make it a job with :meth:`submit`."""

    def __init__(
        self, remote: RemoteFunction[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.remote = remote
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        name = self.remote.function.__qualname__
        return f"<Call {name} args={self.args!r} kwargs={self.kwargs!r}>"

    def payload(self) -> bytes:
        """The call pickled for the worker, function included."""
        return self._encode(function_apart=False).payload

    def _encode(self, function_apart: bool) -> _codec.Encoded:
        remote = self.remote
        return _codec.encode_call(
            remote.function,
            self.args,
            self.kwargs,
            remote.depmodules,
            remote.retry_on,
            remote.shipped,
            function_apart=function_apart,
        )

    async def async_run(self) -> R:
        """Run the call on the server and return its value (or raise its error)."""
        with user_frames:
            return await self._run()

    async def _run(self) -> R:
        remote = self.remote
        if remote.durable:
            job = await self.async_submit()
            return await job.async_result()
        servers = remote.servers
        if servers.single is not None:
            await _transport.give_way(servers.single)
        call = self._encode(function_apart=True)
        request = pool_pb2.RunRequest(
            payload=call.payload,
            retries=remote.retries,
            function_hash=call.function_hash,
            refs=call.refs,
        )
        reply, address = await _balancer.run(
            servers, request, remote.timeout, call.function, remote.retries
        )
        where = f"worker {reply.worker_id} (pid {reply.worker_pid}) of {address}"
        value: R = _codec.decode_outcome(reply.outcome, remote.function.__qualname__, where)
        return value

    def compute(self) -> R:
        """Run the call and block until its value is back."""
        with user_frames:
            return run_sync(self.async_run())

    run = compute  # the original's name

    async def async_submit(self) -> Job[R]:
        (job,) = await _submit.submit(self.remote, [self.payload()], [1], batch_id="")
        return job

    def submit(self) -> Job[R]:
        """Submit the call as a durable job and return its handle at once.

        The job is journaled by the server before this returns; it runs
        whether or not this process stays around to collect the result.
        """
        return run_sync(self.async_submit())


@overload
def compute_this(server: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def compute_this(
    server: ServerSpec = None,
    *,
    depmodules: Iterable[types.ModuleType | str] = (),
    ship: Iterable[types.ModuleType] = (),
    timeout: float | None = None,
    retries: int = 0,
    retry_on: Iterable[type[BaseException]] = (),
    durable: bool = False,
    token: TokenSpec = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    policy: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]: ...


def compute_this(
    server: ServerSpec | Callable[P, R] = None,
    *,
    depmodules: Iterable[types.ModuleType | str] = (),
    ship: Iterable[types.ModuleType] = (),
    timeout: float | None = None,
    retries: int = 0,
    retry_on: Iterable[type[BaseException]] = (),
    durable: bool = False,
    token: TokenSpec = None,
    tls_ca: str | os.PathLike[str] | None = None,
    tls_cert: str | os.PathLike[str] | None = None,
    tls_key: str | os.PathLike[str] | None = None,
    policy: str | None = None,
    weights: Mapping[str, float] | None = None,
) -> RemoteFunction[P, R] | Callable[[Callable[P, R]], RemoteFunction[P, R]]:
    """Make a function run on a pool-server: ``@compute_this()`` or ``@compute_this``.

    ``server`` is ``host:port``, ``grpc://host:port`` or ``grpcs://host:port``
    (TLS); several servers as a comma list or a list of those, or
    ``dns:///name:port`` for every address ``name`` resolves to; ``local``
    (``local:N``) runs calls in this process's own pool of N workers, with no
    server. It defaults to ``$POOL_SERVER``, else ``127.0.0.1:50051``.
    With several servers, ``policy`` spreads the calls: ``least_loaded``
    (default), ``round_robin``, or ``weighted`` with
    ``weights={"h1:50051": 1, "h2:50051": 2}``.
    ``depmodules`` are modules (objects or names) the worker imports first;
    they must be installed on the server. Local code travels with the call
    instead: the function's module and every module loaded from outside
    site-packages and the standard library are pickled by value, and so are
    the modules in ``ship`` (for code installed here but not there).
    ``timeout`` is each call's deadline in seconds, queueing included; for
    submitted jobs it limits each attempt's running time. ``retries`` more
    attempts are made when the worker dies (crash, OOM kill), when the
    function raises one of ``retry_on``, or (with several servers) on another
    server when the one running the call goes away: a retried call may have
    run twice. ``durable=True`` runs ``compute()`` as a submitted (journaled)
    job. ``token`` and the ``tls_*`` files are as for :class:`Client`; by
    default they come from the environment.

    >>> @compute_this()
    ... def square(x):
    ...     return x * x
    >>> square(3)                                   # doctest: +ELLIPSIS
    <Call square args=(3,) kwargs={}>
    """
    connect: dict[str, Any] = {
        "token": token,
        "tls_ca": tls_ca,
        "tls_cert": tls_cert,
        "tls_key": tls_key,
        "policy": policy,
        "weights": weights,
    }
    options: dict[str, Any] = {
        "depmodules": depmodules,
        "ship": ship,
        "timeout": timeout,
        "retries": retries,
        "retry_on": retry_on,
        "durable": durable,
        "connect": connect,
    }
    if callable(server):
        return RemoteFunction(server, None, **options)

    def decorate(function: Callable[P, R]) -> RemoteFunction[P, R]:
        return RemoteFunction(function, server, **options)

    return decorate
