"""Where calls run when not on a pool-server over gRPC: one module per
address scheme, each answering the Pool service's own messages.

A backend implements :class:`Backend`, the RPCs of ``proto/pool.proto``
(``Run``, ``GetWorkers``, ``Submit``, ``GetJob``, ``WatchJob``,
``GetResult``, ``CancelJob``, ``ListJobs``, ``GetBatch``) as methods that take
and return the same messages, raising ``distribute_client.errors`` classes
where a server's answer would be an error. ``_transport`` hands every RPC
for an address of that scheme to it, so everything above the transport
(``compute()``, ``map``, jobs, ``Client``, outcome decoding) is the same code
whatever runs the calls, and a call travels as the same payload a server
would get: the worker's runner turns it into an outcome on any engine.

Adding one is one file: ``distribute_client/backends/<scheme>.py`` with

- ``check(url: str) -> None``: raise ``ValueError`` saying what is wrong with
  an address of this scheme (called when a function or client is made);
- ``connect(url: str) -> Backend``: the backend for ``url`` (called on first
  use, and cached per url by this package).

``local`` and ``local:N`` are this process's own pool (``local.py``). Engine
libraries are imported by their module only, so importing
``distribute_client`` imports none of them.
"""

from __future__ import annotations

import importlib
import importlib.util
import threading
from collections.abc import AsyncIterator
from types import ModuleType
from typing import Protocol

from pool_proto import pool_pb2

# Schemes that are the pool-server itself (gRPC), not a backend module.
GRPC_SCHEMES = ("grpc", "grpcs")


class Backend(Protocol):
    """The Pool service's RPCs, answered without a pool-server."""

    async def run(
        self, request: pool_pb2.RunRequest, deadline_s: float | None, function: bytes
    ) -> tuple[bytes, int, int]:
        """One call: (the outcome bytes as a worker writes them, worker id, worker pid).
        ``request.payload`` names its function by ``request.function_hash``
        when that is set, with the pickled function in ``function``."""
        ...

    async def get_workers(
        self, request: pool_pb2.GetWorkersRequest
    ) -> pool_pb2.GetWorkersReply: ...

    async def submit(self, request: pool_pb2.SubmitRequest) -> pool_pb2.SubmitReply: ...

    async def get_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus: ...

    def watch_job(self, request: pool_pb2.JobRef) -> AsyncIterator[pool_pb2.JobStatus]: ...

    async def get_result(
        self, request: pool_pb2.JobRef, deadline_s: float | None
    ) -> pool_pb2.JobResult: ...

    async def cancel_job(self, request: pool_pb2.JobRef) -> pool_pb2.JobStatus: ...

    async def list_jobs(self, request: pool_pb2.ListJobsRequest) -> pool_pb2.ListJobsReply: ...

    async def get_batch(self, request: pool_pb2.BatchRef) -> pool_pb2.BatchStatus: ...


def scheme_of(url: str) -> str | None:
    """The backend scheme of an address (``celery`` for ``celery://...``,
    ``local`` for ``local`` and ``local:N``); None for a pool-server's."""
    if url == "local" or url.startswith("local:"):
        return "local"
    scheme, sep, _ = url.partition("://")
    if not sep or scheme in GRPC_SCHEMES:
        return None
    return scheme


def _module(scheme: str) -> ModuleType:
    name = f"{__name__}.{scheme}"
    if not scheme.isidentifier() or importlib.util.find_spec(name) is None:
        raise ValueError(f"no backend for {scheme}:// addresses (known: {', '.join(known())})")
    return importlib.import_module(name)


def known() -> list[str]:
    """The schemes with a backend module here."""
    from pkgutil import iter_modules

    return sorted(info.name for info in iter_modules(__path__) if not info.name.startswith("_"))


def check(url: str) -> None:
    """``ValueError`` if ``url`` is not an address its backend accepts."""
    scheme = scheme_of(url)
    assert scheme is not None
    _module(scheme).check(url)


_connected: dict[str, Backend] = {}
_lock = threading.Lock()


def backend_for(url: str) -> Backend:
    """The backend for ``url``, connected on first use and kept."""
    with _lock:
        backend = _connected.get(url)
        if backend is None:
            scheme = scheme_of(url)
            assert scheme is not None
            backend = _connected[url] = _module(scheme).connect(url)
        return backend
