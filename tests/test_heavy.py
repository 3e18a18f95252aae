"""Big payloads and many concurrent calls through the real server."""

from __future__ import annotations

import asyncio
import hashlib
import os

import pytest

from distribute_client import SerializationError, compute_this
from pool_wire.limits import MAX_PAYLOAD_BYTES

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


def too_big() -> bytes:
    return bytes(MAX_PAYLOAD_BYTES + 1)


@pytest.mark.slow
def test_payloads_over_the_limit_are_refused_clearly(server: ServerProcess) -> None:
    """Over MAX_PAYLOAD_BYTES either way: a SerializationError, and the worker lives on."""
    pids = server.pids()
    with pytest.raises(SerializationError, match="over the .*-byte limit"):
        compute_this(server.address)(len)(bytes(MAX_PAYLOAD_BYTES + 1)).compute()
    with pytest.raises(SerializationError, match="could not be sent back: it pickles to"):
        compute_this(server.address)(too_big)().compute()
    assert server.pids() == pids
