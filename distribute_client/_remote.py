"""``compute_this``: a function that runs on a pool-server when asked to."""

from __future__ import annotations

import functools
import inspect
import types
from collections.abc import Callable, Iterable
from typing import Any, Generic, ParamSpec, TypeVar, overload

from distribute_client import _codec, _transport
from distribute_client._client import Client
from distribute_client._sync import run_sync

P = ParamSpec("P")
R = TypeVar("R")


class RemoteFunction(Generic[P, R]):
    """A function whose calls run on a pool-server's workers.

    Calling it checks the arguments against the signature at once and returns
    a :class:`Call`; nothing is sent until the call is run.
    """

    def __init__(
        self,
        function: Callable[P, R],
        server: str | None,
        depmodules: Iterable[types.ModuleType | str],
        timeout: float | None,
    ) -> None:
        functools.update_wrapper(self, function)
        self.function = function
        # An explicit address is checked now; the default is looked up per
        # call, so $POOL_SERVER may be set after the function is defined.
        self._address = _transport.Address.parse(server) if server else None
        self.depmodules = tuple(m if isinstance(m, str) else m.__name__ for m in depmodules)
        self.timeout = timeout
        self._signature = _signature_of(function)
        self._by_value = _codec.module_by_value(function)

    @property
    def address(self) -> _transport.Address:
        return self._address or _transport.Address.parse(None)

    def __repr__(self) -> str:
        return f"<RemoteFunction {self.function.__qualname__} on {self.address}>"

    def __call__(self, *args: P.args, **kwargs: P.kwargs) -> Call[R]:
        if self._signature is not None:
            try:
                self._signature.bind(*args, **kwargs)
            except TypeError as e:
                raise TypeError(f"{self.function.__qualname__}{self._signature}: {e}") from None
        return Call(self, args, kwargs)

    async def async_run(self, *args: P.args, **kwargs: P.kwargs) -> R:
        """Run one call from asyncio code: ``await f.async_run(x)``."""
        return await self(*args, **kwargs).async_run()

    def get_workers(self) -> int:
        """How many workers the server has (as in the original API)."""
        return len(Client(str(self.address)).workers())


def _signature_of(function: Callable[..., Any]) -> inspect.Signature | None:
    """The signature to check calls against; None for builtins that have none."""
    try:
        return inspect.signature(function)
    except ValueError:
        return None


class Call(Generic[R]):
    """One bound call of a :class:`RemoteFunction`, run by :meth:`compute`
    (blocking) or :meth:`async_run` (awaitable)."""

    def __init__(
        self, remote: RemoteFunction[Any, R], args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> None:
        self.remote = remote
        self.args = args
        self.kwargs = kwargs

    def __repr__(self) -> str:
        return (
            f"<Call {self.remote.function.__qualname__} args={self.args!r} kwargs={self.kwargs!r}>"
        )

    async def async_run(self) -> R:
        """Run the call on the server and return its value (or raise its error)."""
        remote = self.remote
        payload = _codec.encode_call(
            remote.function, self.args, self.kwargs, remote.depmodules, remote._by_value
        )
        address = remote.address
        reply = await _transport.run(address, payload, remote.timeout)
        where = f"worker {reply.worker_id} (pid {reply.worker_pid}) of {address}"
        value: R = _codec.decode_outcome(reply.outcome, remote.function.__qualname__, where)
        return value

    def compute(self) -> R:
        """Run the call and block until its value is back."""
        return run_sync(self.async_run())

    run = compute  # the original's name


@overload
def compute_this(server: Callable[P, R], /) -> RemoteFunction[P, R]: ...


@overload
def compute_this(
    server: str | None = None,
    *,
    depmodules: Iterable[types.ModuleType | str] = (),
    timeout: float | None = None,
) -> Callable[[Callable[P, R]], RemoteFunction[P, R]]: ...


def compute_this(
    server: str | Callable[P, R] | None = None,
    *,
    depmodules: Iterable[types.ModuleType | str] = (),
    timeout: float | None = None,
) -> RemoteFunction[P, R] | Callable[[Callable[P, R]], RemoteFunction[P, R]]:
    """Make a function run on a pool-server: ``@compute_this()`` or ``@compute_this``.

    ``server`` is ``host:port``, ``grpc://host:port`` or ``grpcs://host:port``
    (TLS); it defaults to ``$POOL_SERVER``, else ``127.0.0.1:50051``.
    ``depmodules`` are modules (objects or names) the worker imports first.
    ``timeout`` is each call's deadline in seconds, queueing included.

    >>> @compute_this()
    ... def square(x):
    ...     return x * x
    >>> square(3)                                   # doctest: +ELLIPSIS
    <Call square args=(3,) kwargs={}>
    """
    if callable(server):
        return RemoteFunction(server, None, depmodules, timeout)

    def decorate(function: Callable[P, R]) -> RemoteFunction[P, R]:
        return RemoteFunction(function, server, depmodules, timeout)

    return decorate
