"""Large data in maps: a function's big global pickled once per map,
journaled once however many chunks name it, Submits split by size, and the
journal's space given back as the work finishes; against a real server."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from pathlib import Path

import pytest

from distribute_client import Client, JobInterruptedError, _batch, compute_this
from pool_server.jobs import Job
from pool_server.journal import Journal, new_row

from .conftest import ServerProcess, StartServer, wait_until
from .metrics_port import metrics_url, scrape

BIG = b"\x01" * (32 << 20)  # the 32 MB array, as bytes


class CountsPickles:
    """A global that counts how often this process pickles it."""

    times = 0

    def __reduce__(self) -> tuple[type[CountsPickles], tuple[()]]:
        CountsPickles.times += 1
        return CountsPickles, ()


COUNTED = CountsPickles()


def uses_counted(x: int) -> int:
    assert isinstance(COUNTED, CountsPickles)
    return x + 1


def uses_big(x: int) -> int:
    time.sleep(0.02)
    return BIG[x] + x


def slow_big(x: int) -> int:
    time.sleep(0.3)
    return BIG[x] + x


def length(data: bytes) -> int:
    return len(data)


def journal(server_state: Path) -> sqlite3.Connection:
    return sqlite3.connect(f"file:{server_state / 'journal.sqlite3'}?mode=ro", uri=True)


def journal_bytes(state: Path) -> int:
    files = [state / "journal.sqlite3", state / "journal.sqlite3-wal", *state.glob("payloads/*")]
    return sum(p.stat().st_size for p in files if p.exists())


@pytest.mark.parametrize("durable", [False, True])
def test_a_map_pickles_its_function_once(server: ServerProcess, durable: bool) -> None:
    remote = compute_this(server.address)(uses_counted)
    CountsPickles.times = 0
    with remote.map(range(40), chunk_size=5, durable=durable) as results:
        assert list(results) == list(range(1, 41))
    assert CountsPickles.times == 1  # 8 chunks, one pickle of the function (and its global)


def test_a_durable_map_journals_its_function_once_and_gives_the_space_back(
    start_server: StartServer, tmp_path: Path
) -> None:
    """40 chunks naming a function with a 32 MB global: one copy of it in the
    journal while they wait (it was one per chunk, 1.28 GB in one Submit,
    which failed), none once they are done, and the journal's files small again."""
    server = start_server("--workers", "1")
    state = tmp_path / "server0.state"
    remote = compute_this(server.address)(uses_big)
    with remote.map(range(40), chunk_size=1, durable=True) as results:
        first = next(results)
        with journal(state) as db:
            assert db.execute("SELECT COUNT(*) FROM functions").fetchone() == (1,)
            (size,) = db.execute("SELECT SUM(LENGTH(payload)) FROM jobs").fetchone()
        assert size < 40 * 4096  # the chunks' payloads, without the function
        assert not list(state.glob("payloads/*"))
        assert [first, *results] == [BIG[x] + x for x in range(40)]
    wait_until(lambda: journal_bytes(state) < 2 << 20, 10, "the journal to give its space back")
    with journal(state) as db:
        assert db.execute("SELECT COUNT(*) FROM functions").fetchone() == (0,)


def test_a_durable_maps_function_survives_a_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    """The chunks waiting in the queue at a restart run after it, with their
    function from the journal."""
    state = tmp_path / "state"
    first = start_server("--workers", "1", "--state-dir", str(state), "--grace", "0")
    remote = compute_this(first.address)(slow_big)
    results = remote.map(range(6), chunk_size=1, durable=True)
    assert next(results) == BIG[0]
    assert results.batch_id is not None
    first.stop()  # chunk 1 is running (and is interrupted), 2 to 5 are queued
    results.close()  # its server is gone: nothing to cancel
    second = start_server("--workers", "1", "--state-dir", str(state))
    values = Client(second.address).batch(results.batch_id).results(timeout=60)
    assert values[2:] == [BIG[x] + x for x in range(2, 6)]
    assert values[1] == BIG[1] + 1 or isinstance(values[1], JobInterruptedError)


def test_submits_are_split_by_size(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Six chunks of 600 KiB under a 1 MiB bound go in six Submits (at the
    real 64 MiB bound, 40 chunks of 32 MB went in one, over gRPC's limit)."""
    server = start_server("--workers", "2", "--metrics-port", "0")
    monkeypatch.setattr(_batch, "MAX_SUBMIT_BYTES", 1 << 20)
    url = metrics_url(server)

    def submits() -> float:
        return sum(
            v
            for (name, labels), v in scrape(url).items()
            if name == "grpc_server_handled_total" and ("grpc_method", "Submit") in labels
        )

    before = submits()
    remote = compute_this(server.address)(length)
    with remote.map([b"x" * (600 << 10)] * 6, chunk_size=1, durable=True) as results:
        assert list(results) == [600 << 10] * 6
    assert submits() - before == 6


def test_recovered_jobs_share_their_functions_bytes(tmp_path: Path) -> None:
    """Read back after a restart, the chunks naming one function hold one
    copy of it between them, as they did before."""
    tmp_path.chmod(0o700)
    function = b"\x02" * (1 << 20)

    async def write() -> None:  # a Job makes a future: on a loop
        journal = Journal(tmp_path)
        jobs = [
            Job(b"p", id=f"j{i}", durable=True, function=function, function_hash="k")
            for i in range(5)
        ]
        journal.commit([new_row(job) for job in jobs], [])
        journal.close()

    asyncio.run(write())
    journal = Journal(tmp_path)
    records = journal.unfinished()
    journal.close()
    assert len(records) == 5
    assert all(record["function"] == function for record in records)
    assert len({id(record["function"]) for record in records}) == 1
