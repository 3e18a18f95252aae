"""Several servers behind one client, each in its own network namespace
(tests/netns.py): a map spread over three, weights 1:2, a link cut mid-map
(silently, as a pulled cable: no reset), and a server's durable jobs coming
back with its link. Skipped, saying why, where namespaces cannot be made."""

from __future__ import annotations

import asyncio
import collections
import os
import time

import pytest

from distribute_client import CallTimeoutError, Client, ServerUnavailableError, compute_this
from distribute_client._balancer import balancer_for

from .netns import Network, netns

__all__ = ["netns"]  # the fixture, imported for the tests below


def where(seconds: float = 0.0) -> int:
    """The inode of the network namespace this ran in: which server ran it."""
    time.sleep(seconds)
    return os.stat("/proc/self/ns/net").st_ino


def test_a_map_of_600_calls_is_spread_over_three_namespaces(netns: Network) -> None:
    servers = [netns.start_server(i, "--workers", "2") for i in range(3)]
    remote = compute_this([s.address for s in servers])(where)
    ran = collections.Counter(remote.map([0.002] * 600))
    assert sum(ran.values()) == 600
    shares = [ran[netns[i].inode()] for i in range(3)]
    assert min(shares) >= 100, shares


def test_weights_one_to_two_across_namespaces(netns: Network) -> None:
    first, second = (netns.start_server(i, "--workers", "2") for i in range(2))
    weights = {first.address: 1, second.address: 2}
    remote = compute_this([first.address, second.address], weights=weights)(where)

    async def calls() -> list[int]:
        return await asyncio.gather(*(remote.async_run() for _ in range(300)))

    ran = collections.Counter(asyncio.run(calls()))
    ratio = ran[netns[1].inode()] / ran[netns[0].inode()]
    assert abs(ratio - 2.0) <= 0.2, ran


def test_a_link_cut_mid_map_loses_no_result_and_is_skipped_within_a_second(
    netns: Network,
) -> None:
    servers = [netns.start_server(i, "--workers", "2") for i in range(3)]
    remote = compute_this([s.address for s in servers], retries=3)(where)
    cut_address = next(a for a in remote.servers.addresses if a.target == servers[1].address)
    balancer = balancer_for(remote.servers)

    async def noticed_after(cut_at: float) -> float:
        # The balancer's state is a plain set: polled, as nothing announces it.
        while cut_address not in balancer._down and time.monotonic() - cut_at < 5:  # noqa: ASYNC110
            await asyncio.sleep(0.02)
        return time.monotonic() - cut_at

    async def map_with_a_cut() -> tuple[list[int], float, float]:
        results: list[int] = []
        longest_gap = 0.0
        watcher = None
        last = time.monotonic()
        async with asyncio.timeout(120):
            async for inode in remote.async_map([0.01] * 600, chunk_size=4):
                now = time.monotonic()
                if watcher is not None:
                    longest_gap = max(longest_gap, now - last)
                last = now
                results.append(inode)
                if len(results) == 150:
                    netns.cut(1)
                    last = time.monotonic()
                    watcher = asyncio.create_task(noticed_after(last))
        assert watcher is not None
        return results, await watcher, longest_gap

    results, noticed, longest_gap = asyncio.run(map_with_a_cut())
    print(f"cut noticed after {noticed:.2f} s; longest wait for a result {longest_gap:.2f} s")
    assert len(results) == 600  # every result arrived
    assert netns[1].inode() in results[:150]
    assert noticed <= 1.2, noticed  # keepalive: 0.5 s pings, 0.5 s to answer
    assert longest_gap < 3.0, longest_gap
    tail = collections.Counter(results[300:])
    assert netns[1].inode() not in tail, tail
    assert set(tail) == {netns[0].inode(), netns[2].inode()}


def test_a_servers_durable_jobs_come_back_with_its_link(netns: Network) -> None:
    first, second = (netns.start_server(i, "--workers", "1") for i in range(2))
    addresses = [first.address, second.address]
    remote = compute_this(addresses, policy="round_robin")(where)
    jobs = [remote.submit(0.3) for _ in range(6)]
    on_first = [job for job in jobs if job.id.startswith(first.address + "/")]
    on_second = [job for job in jobs if job.id.startswith(second.address + "/")]
    assert len(on_first) == len(on_second) == 3

    netns.cut(0)
    client = Client(addresses)
    assert [client.job(job.id).result(timeout=30) for job in on_second] == [netns[1].inode()] * 3
    with pytest.raises((ServerUnavailableError, CallTimeoutError)):
        client.job(on_first[0].id).result(timeout=2)
    status = client.status()
    assert status.unreachable == (first.address,)

    netns.restore(0)
    deadline = time.monotonic() + 20
    while True:  # the channel reconnects within its backoff (2 s at most)
        try:
            values = [client.job(job.id).result(timeout=10) for job in on_first]
            break
        except (ServerUnavailableError, CallTimeoutError):
            if time.monotonic() > deadline:
                raise
            time.sleep(0.2)
    assert values == [netns[0].inode()] * 3  # they ran while the link was down
    assert {s.server for s in client.jobs()} == set(addresses)
