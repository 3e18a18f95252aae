"""Choosing a server for each call when a client has several (``_servers``).

Why not gRPC's own balancing: gRPC picks a backend per RPC, but this
client's calls are messages on one long-lived ``Calls`` stream per server
(issue 10), a job must be looked up on the server that holds it, and each
entry may carry its own token; so the client keeps one channel per server
and chooses among them itself. What gRPC does well is kept: each channel's
connectivity (with keepalive pings, see ``_transport.KEEPALIVE_OPTIONS``)
says which servers are up, and the servers publish their load in ORCA's
format, which gRPC's ``weighted_round_robin`` reads for clients in other
languages (``pool_server.load``).

Policies:

- ``least_loaded`` (the default): the server with the fewest calls per
  worker, counting this client's outstanding calls and the busy workers and
  queue the server last reported; ties go round robin.
- ``round_robin``: each server in turn.
- ``weighted``: static weights, spread smoothly (nginx's smooth weighted
  round robin), so 1:2 sends one call to the first server for every two to
  the second, interleaved.

A server that fails a call, or whose channel cannot connect within a
second, is left out until its channel is connected again (gRPC keeps
reconnecting it in the background, every two seconds at most).
"""

from __future__ import annotations

import asyncio
import collections
import math
import time
from collections.abc import Awaitable, Callable
from typing import TypeVar

import grpc

from distribute_client import _transport
from distribute_client._servers import DNS_TTL_S, LEAST_LOADED, ROUND_ROBIN, Servers, resolve
from distribute_client._stream import OnProgress
from distribute_client._transport import Address, Reply
from distribute_client.errors import (
    PoolError,
    ServerShuttingDownError,
    ServerUnavailableError,
)
from pool_proto import pool_pb2

T = TypeVar("T")

# A server whose channel is not connected within this long is skipped.
CONNECT_TIMEOUT_S = 1.0

# A server's reported load counts for this long after it came.
LOAD_MAX_AGE_S = 1.0


class Balancer:
    """The choosing state of one client's servers: shared by all its calls."""

    def __init__(self, servers: Servers) -> None:
        self.servers = servers
        self._resolved = servers.addresses
        self._resolved_at = -math.inf
        self._in_flight: collections.Counter[Address] = collections.Counter()
        self._down: set[Address] = set()
        self._turn = 0  # round robin's next position
        self._credit: dict[Address, float] = {}  # weighted
        self._workers: dict[Address, int] = {}  # each server's, once asked
        self._sizing: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<Balancer {self.servers} down={sorted(map(str, self._down))}>"

    async def addresses(self) -> tuple[Address, ...]:
        """Every server: as listed, or what the dns:/// name resolves to now."""
        name = self.servers.dns
        if name is None:
            return self._resolved
        stale = time.monotonic() - self._resolved_at > DNS_TTL_S
        if stale or all(address in self._down for address in self._resolved):
            try:
                self._resolved = await resolve(name)
            except OSError as e:
                if not self._resolved:
                    raise ServerUnavailableError(f"{self.servers} did not resolve: {e}") from e
            self._resolved_at = time.monotonic()
            self._down &= set(self._resolved)
        if not self._resolved:
            raise ServerUnavailableError(f"{self.servers} resolves to no address")
        return self._resolved

    async def pick(self, tried: set[Address]) -> Address:
        """A connected server not in ``tried``, by the policy, counted as having
        one more call until :meth:`done`; ServerUnavailableError if none is left."""
        while True:
            addresses = await self.addresses()
            candidates = [a for a in addresses if a not in tried and self._usable(a)]
            if not candidates:
                raise ServerUnavailableError(
                    f"none of the servers {self.servers} answered; "
                    f"down: {', '.join(sorted(map(str, self._down))) or 'none'}"
                )
            if self.servers.policy == LEAST_LOADED and any(
                a not in self._workers for a in candidates
            ):
                await self._size(candidates)
                continue
            address = self._choose(addresses, candidates)
            self._in_flight[address] += 1
            if await _transport.connected(address, CONNECT_TIMEOUT_S):
                self._down.discard(address)
                return address
            self.done(address)
            self.failed(address)
            tried.add(address)

    def done(self, address: Address) -> None:
        self._in_flight[address] -= 1

    def failed(self, address: Address) -> None:
        """``address`` failed a call: leave it out until it reconnects."""
        self._down.add(address)

    def _usable(self, address: Address) -> bool:
        state = _transport.connectivity(address)
        if address in self._down:
            return state is grpc.ChannelConnectivity.READY
        return state is not grpc.ChannelConnectivity.TRANSIENT_FAILURE

    def _choose(self, addresses: tuple[Address, ...], candidates: list[Address]) -> Address:
        policy = self.servers.policy
        if policy == ROUND_ROBIN:
            return self._round_robin(addresses, candidates)
        if policy == LEAST_LOADED:
            scores = {a: self._load(a) for a in candidates}
            least = min(scores.values())
            return self._round_robin(addresses, [a for a in candidates if scores[a] == least])
        weights = dict(zip(self.servers.addresses, self.servers.weights, strict=True))
        total = sum(weights[a] for a in candidates)
        for a in candidates:
            self._credit[a] = self._credit.get(a, 0.0) + weights[a]
        chosen = max(candidates, key=lambda a: self._credit[a])
        self._credit[chosen] -= total
        return chosen

    def _round_robin(self, addresses: tuple[Address, ...], candidates: list[Address]) -> Address:
        for step in range(len(addresses)):
            address = addresses[(self._turn + step) % len(addresses)]
            if address in candidates:
                self._turn = (self._turn + step + 1) % len(addresses)
                return address
        return candidates[0]

    def _load(self, address: Address) -> float:
        """Calls per worker: this client's outstanding ones, plus the busy
        workers and queued calls the server reported in the last second."""
        load = _transport.reported_load(address, LOAD_MAX_AGE_S)
        if load is None:
            return self._in_flight[address] / self._workers[address]
        self._workers[address] = max(load.workers, 1)
        busy = load.busy_workers + load.queue_length
        return (self._in_flight[address] + busy) / self._workers[address]

    async def _size(self, candidates: list[Address]) -> None:
        """Ask the servers not asked yet how many workers they have (once,
        however many calls are waiting to pick); one that does not answer is
        left out as failed."""
        if self._sizing is None or self._sizing.done():
            unsized = [a for a in candidates if a not in self._workers]
            self._sizing = asyncio.create_task(self._ask_sizes(unsized))
        await asyncio.shield(self._sizing)

    async def _ask_sizes(self, addresses: list[Address]) -> None:
        request = pool_pb2.GetWorkersRequest()
        answers = await asyncio.gather(
            *(_transport.get_workers(a, request, CONNECT_TIMEOUT_S) for a in addresses),
            return_exceptions=True,
        )
        for address, answer in zip(addresses, answers, strict=True):
            if isinstance(answer, pool_pb2.GetWorkersReply):
                self._workers[address] = max(len(answer.workers), 1)
            else:
                self.failed(address)


_balancers: dict[Servers, Balancer] = {}


def balancer_for(servers: Servers) -> Balancer:
    balancer = _balancers.get(servers)
    if balancer is None:
        balancer = _balancers[servers] = Balancer(servers)
    return balancer


async def run(
    servers: Servers,
    request: pool_pb2.RunRequest,
    deadline_s: float | None,
    function: bytes,
    retries: int,
    on_progress: OnProgress | None = None,
) -> tuple[Reply, Address]:
    """One call on one of ``servers``, and the server that answered it.

    A server that cannot be reached is skipped; a call that was sent to a
    server that then went away (``ServerUnavailableError``) is sent to
    another while ``retries`` allow (at least once: it may have run), and
    one a stopping server did not take is sent to another in any case.
    """
    single = servers.single
    if single is not None:
        reply = await _transport.run(single, request, deadline_s, function, on_progress)
        return reply, single
    balancer = balancer_for(servers)
    loop = asyncio.get_running_loop()
    deadline = None if deadline_s is None else loop.time() + deadline_s
    tried: set[Address] = set()
    while True:
        address = await balancer.pick(tried)
        remaining = None if deadline is None else max(deadline - loop.time(), 0.0)
        try:
            reply = await _transport.run(address, request, remaining, function, on_progress)
            return reply, address
        except ServerShuttingDownError:
            balancer.failed(address)
            tried.add(address)
        except ServerUnavailableError:
            balancer.failed(address)
            tried.add(address)
            if retries == 0:
                raise
            retries -= 1
        finally:
            balancer.done(address)


async def on_one(servers: Servers, call: Callable[[Address], Awaitable[T]]) -> tuple[T, Address]:
    """``call`` on one server, chosen as a call's would be, but never
    repeated elsewhere once sent (a Submit must not make its jobs twice)."""
    single = servers.single
    if single is not None:
        return await call(single), single
    balancer = balancer_for(servers)
    address = await balancer.pick(set())
    try:
        return await call(address), address
    except ServerUnavailableError:
        balancer.failed(address)
        raise
    finally:
        balancer.done(address)


async def on_each(
    servers: Servers, call: Callable[[Address], Awaitable[T]]
) -> list[tuple[Address, T | PoolError]]:
    """``call`` on every server at once: each one's answer, or its PoolError."""
    addresses = await balancer_for(servers).addresses()
    answers = await asyncio.gather(*(call(a) for a in addresses), return_exceptions=True)
    results: list[tuple[Address, T | PoolError]] = []
    for address, answer in zip(addresses, answers, strict=True):
        if isinstance(answer, BaseException) and not isinstance(answer, PoolError):
            raise answer
        results.append((address, answer))
    return results
