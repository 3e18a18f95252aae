"""``server="local"`` through the public API: the same calls, maps, jobs
and errors as with a server, on this process's own pool (``_local``)."""

from __future__ import annotations

import os
import threading
import traceback

import pytest

from distribute_client import (
    Client,
    SerializationError,
    WorkerCrashedError,
    compute_this,
)


def double(x: int) -> tuple[int, int]:
    print(f"doubling {x}")
    return 2 * x, os.getpid()


def fail(message: str) -> None:
    raise KeyError(message)


def crash() -> None:
    os._exit(7)


def test_compute_map_and_submit_run_locally(capsys: pytest.CaptureFixture[str]) -> None:
    remote = compute_this("local:2")(double)
    value, pid = remote(21).compute()
    assert value == 42 and pid != os.getpid()
    assert "doubling 21" in capsys.readouterr().out  # output replayed
    assert [v for v, _ in remote.map(range(10))] == [2 * i for i in range(10)]
    job = remote.submit(5)
    assert job.result(timeout=30)[0] == 10
    client = Client("local:2")
    assert client.job(job.id).status().state == "DONE"
    assert len(client.workers()) == remote.get_workers() == 2
    assert {w.server for w in client.workers()} == {"local:2"}


def test_pool_server_local_is_read_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POOL_SERVER", "local:1")
    assert compute_this(double)(4).compute()[0] == 8
    assert len(Client().workers()) == 1


def test_errors_come_back_as_from_a_server() -> None:
    with pytest.raises(KeyError, match="missing") as raised:
        compute_this("local:1")(fail)("missing").compute()
    text = "".join(traceback.format_exception(raised.value))
    assert "raise KeyError(message)" in text  # the remote frame, with its source line
    assert any("raised by fail on worker" in note for note in raised.value.__notes__)
    with pytest.raises(WorkerCrashedError):
        compute_this("local:1")(crash)().compute()
    assert compute_this("local:1")(double)(1).compute()[0] == 2  # the pool is whole again
    lock = threading.Lock()

    def holds_a_lock() -> bool:
        return lock.locked()

    with pytest.raises(SerializationError):
        compute_this("local:1")(holds_a_lock)().compute()  # a lock cannot travel


def test_bad_local_names_are_refused() -> None:
    with pytest.raises(ValueError, match="local:N with N from 1"):
        compute_this("local:0")(double)
    with pytest.raises(ValueError, match="names a backend"):
        Client(["local", "127.0.0.1:1"])
