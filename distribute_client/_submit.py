"""Submitting jobs: one Submit RPC for one or many payloads, all accepted or none.

Every way of making jobs ends here: ``f.submit(x)`` (one pickled call),
``f.map(xs)`` (chunks of calls, see ``_batch``) and ``Client.submit_json``
(a JSON call, as ``pool-client submit`` sends). This module sits below all
three and imports none of them.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from distribute_client import _balancer, _transport
from distribute_client._codec import PickledFunction
from distribute_client._jobs import Job
from distribute_client._servers import Servers
from pool_proto import pool_pb2


class Submittable(Protocol):
    """What submitting reads of a ``RemoteFunction`` (a protocol, so that this
    module need not import ``_remote``, which imports it)."""

    @property
    def servers(self) -> Servers: ...

    @property
    def function(self) -> Callable[..., Any]: ...

    @property
    def retries(self) -> int: ...

    @property
    def timeout(self) -> float | None: ...


async def submit(
    remote: Submittable,
    payloads: list[bytes],
    item_counts: list[int],
    batch_id: str,
    item_offsets: Sequence[int] = (),
    function: PickledFunction | None = None,
) -> list[Job[Any]]:
    """Submit one job per payload of ``remote``'s function in one RPC; all are
    accepted or none. With ``function``, the payloads name it by key and it
    travels once, beside them.

    A job's time limit is ``remote.timeout`` per call it carries.
    """
    return await submit_payloads(
        remote.servers,
        payloads,
        name=remote.function.__qualname__,
        retries=remote.retries,
        time_limit_s=(remote.timeout or 0.0) * max(item_counts),
        batch_id=batch_id,
        item_counts=item_counts,
        item_offsets=item_offsets,
        function=function,
    )


async def submit_payloads(
    servers: Servers,
    payloads: list[bytes],
    *,
    name: str,
    retries: int = 0,
    time_limit_s: float = 0.0,
    batch_id: str = "",
    item_counts: Sequence[int] = (),
    item_offsets: Sequence[int] = (),
    function: PickledFunction | None = None,
) -> list[Job[Any]]:
    """One job per payload (pickled or JSON), in one Submit RPC to one of
    ``servers`` (chosen as a call's server would be).

    ``time_limit_s`` limits each attempt's running time (0 for none);
    ``item_counts`` is the number of calls each payload carries (empty: one
    each), ``item_offsets`` where each one's first call stands in its batch.
    """
    request = pool_pb2.SubmitRequest(
        payloads=payloads,
        retries=retries,
        time_limit_s=time_limit_s,
        batch_id=batch_id,
        name=name,
        function_hash=function.key if function is not None else "",
        function=function.pickled if function is not None else b"",
        item_counts=item_counts,
        item_offsets=item_offsets,
    )
    reply, address = await _balancer.on_one(
        servers, lambda address: _transport.submit(address, request, _transport.SUBMIT_TIMEOUT_S)
    )
    named = servers.single is None  # the id must say which server holds the job
    return [Job(address, job_id, name, server_in_id=named) for job_id in reply.job_ids]
