"""Big payloads and many concurrent calls through the real server."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from distribute_client import compute_this

from .conftest import ServerProcess

MB = 1_000_000


def digest_and_grow(data: bytes) -> tuple[str, bytes]:
    return hashlib.sha256(data).hexdigest(), data + data[:MB]


def square_with_pid(x: int) -> tuple[int, int]:
    return x * x, os.getpid()


@pytest.mark.slow
def test_hundred_megabytes_both_ways(server: ServerProcess) -> None:
    """A 100 MB argument reaches the worker intact and a 101 MB result comes back."""
    data = os.urandom(100 * MB)
    remote = compute_this(server.address, timeout=120)(digest_and_grow)
    digest, grown = remote(data).compute()
    assert digest == hashlib.sha256(data).hexdigest()
    assert len(grown) == 101 * MB and grown[: 100 * MB] == data


@pytest.mark.slow
async def test_two_thousand_concurrent_calls(server: ServerProcess) -> None:
    """2,000 calls in flight at once all complete, spread over both workers."""
    remote = compute_this(server.address)(square_with_pid)
    results = await asyncio.gather(*(remote.async_run(i) for i in range(2000)))
    assert [value for value, _ in results] == [i * i for i in range(2000)]
    assert len({pid for _, pid in results}) == 2
