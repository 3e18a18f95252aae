"""Objects stored once on the server (Client.put) and passed by Ref: as an
argument or a global, unpickled once per worker, gone once deleted, and
refused where they cannot stand (durable jobs); against a real server."""

from __future__ import annotations

import itertools
import os
import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from distribute_client import (
    Client,
    InvalidRequestError,
    Ref,
    SerializationError,
    compute_this,
)

from .conftest import ServerProcess, StartServer
from .test_hostile_input import env_without_pool_token, write_token_file

TABLE = bytes(range(256)) * (128 << 10)  # 32 MiB


def lookup(i: int, table: Any) -> tuple[int, int, int]:
    """A byte of the table, and which copy of it this is, in which worker
    (``table`` is a Ref here, and the bytes on the worker)."""
    return table[i], id(table), os.getpid()


def crash() -> None:
    os._exit(3)


@pytest.fixture
def stored(server: ServerProcess) -> Iterator[tuple[Client, Ref]]:
    client = server.client()
    ref = client.put(TABLE)
    yield client, ref
    client.delete(ref)


def test_a_ref_argument_is_the_object_on_the_worker_unpickled_once(
    server: ServerProcess, stored: tuple[Client, Ref]
) -> None:
    _, ref = stored
    assert ref.size > len(TABLE) and ref.key.startswith("ref-")
    remote = compute_this(server.address)(lookup)
    results = list(remote.map(range(0, 4000, 7), itertools.repeat(ref), chunk_size=16))
    assert [value for value, _, _ in results] == [TABLE[i] for i in range(0, 4000, 7)]
    copies: dict[int, set[int]] = {}
    for _, copy, pid in results:
        copies.setdefault(pid, set()).add(copy)
    assert all(len(ids) == 1 for ids in copies.values())  # one copy per worker, for all calls
    assert remote(5, ref).compute()[0] == TABLE[5]  # a single call too


def test_a_ref_global_travels_with_the_function(
    server: ServerProcess, stored: tuple[Client, Ref]
) -> None:
    _, ref = stored

    @compute_this(server.address)
    def first_bytes(n: int) -> bytes:
        table: bytes = ref  # type: ignore[assignment]  # the Ref is the table on the worker
        return table[:n]

    assert first_bytes(4).compute() == TABLE[:4]
    assert list(first_bytes.map([1, 2])) == [TABLE[:1], TABLE[:2]]


def test_a_new_worker_gets_the_object_again(
    server: ServerProcess, stored: tuple[Client, Ref]
) -> None:
    _, ref = stored
    remote = compute_this(server.address)(lookup)
    assert remote(1, ref).compute()[0] == TABLE[1]
    with pytest.raises(Exception, match="exited with code 3"):
        compute_this(server.address)(crash)().compute()
    assert [v for v, _, _ in remote.map([2, 3, 4, 5], itertools.repeat(ref), chunk_size=1)] == [
        TABLE[i] for i in (2, 3, 4, 5)
    ]


def test_a_deleted_object_is_gone(server: ServerProcess) -> None:
    client = server.client()
    ref = client.put(b"short-lived")
    client.delete(ref)
    with pytest.raises(InvalidRequestError, match=f"refers to object {ref.key}, which this server"):
        compute_this(server.address)(lookup)(0, ref).compute()


def test_a_durable_job_cannot_refer_to_one(
    server: ServerProcess, stored: tuple[Client, Ref]
) -> None:
    _, ref = stored
    remote = compute_this(server.address)(lookup)
    with pytest.raises(SerializationError, match="refers to stored objects"):
        remote(0, ref).submit()
    with pytest.raises(SerializationError, match="refers to stored objects"):
        list(remote.map([0, 1], itertools.repeat(ref), durable=True))


def test_a_ref_resolves_only_on_a_worker(stored: tuple[Client, Ref]) -> None:
    _, ref = stored
    with pytest.raises(LookupError, match="only in calls run by that server's workers"):
        pickle.loads(pickle.dumps(ref))


def test_the_store_is_bounded(start_server: StartServer) -> None:
    server = start_server("--workers", "1", "--max-object-bytes", "1M")
    client = server.client()
    small = client.put(b"x" * 1000)
    with pytest.raises(InvalidRequestError, match="no room for .* --max-object-bytes 1048576"):
        client.put(b"y" * (2 << 20))
    client.delete(small)
    assert compute_this(server.address)(len)(b"still serving").compute() == 13


def test_each_caller_has_objects_of_its_own(start_server: StartServer, tmp_path: Path) -> None:
    """Stored objects are scoped as jobs are: bob can neither use nor delete
    (nor find out about) what alice stored."""
    token_file = tmp_path / "tokens"
    tokens = write_token_file(token_file)
    server = start_server(
        "--workers",
        "1",
        "--token-file",
        str(token_file),
        env=env_without_pool_token(),
        token=tokens["root"],
    )
    alice = Client(server.address, token=tokens["alice"])
    bob = Client(server.address, token=tokens["bob"])
    ref = alice.put(b"alice's data")
    as_bob = compute_this(server.address, token=tokens["bob"])(len)
    with pytest.raises(InvalidRequestError, match="which this server does not hold"):
        as_bob(ref).compute()  # type: ignore[arg-type]
    bob.delete(ref)  # a no-op for bob
    as_alice = compute_this(server.address, token=tokens["alice"])(len)
    assert as_alice(ref).compute() == len(b"alice's data")  # type: ignore[arg-type]
    alice.delete(ref)
