"""Calls that succeed or fail inside the function: values, output, errors."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

import distribute_challenge
from distribute_client import (
    Client,
    RemoteError,
    SerializationError,
    ServerUnavailableError,
    compute_this,
)

from .conftest import ServerProcess

OFFSET = 10  # a module global the remote functions read


def add(a: int, b: int = 2, *, scale: int = 1) -> int:
    return (a + b) * scale + OFFSET - OFFSET


def shout(text: str) -> str:
    print(f"out: {text}")
    print(f"err: {text}", file=sys.stderr)
    return text.upper()


class CustomError(Exception):
    def __init__(self, code: int) -> None:
        super().__init__(code)
        self.code = code


def fail_deep(n: int) -> None:
    if n == 0:
        raise CustomError(42)
    fail_deep(n - 1)


def test_returns_value_with_args_kwargs_and_defaults(server: ServerProcess) -> None:
    """Positional, keyword and default arguments bind as in a local call."""
    remote = compute_this(server.address)(add)
    assert remote(1).compute() == 3
    assert remote(1, 5, scale=3).run() == 18
    assert remote(a=4, b=0).compute() == 4


def test_closure_and_lambda_travel_by_value(server: ServerProcess) -> None:
    """Functions defined in the test module, closures included, run remotely."""
    factor = 7

    def times(x: int) -> int:
        return x * factor

    assert compute_this(server.address)(times)(6).compute() == 42
    assert compute_this(server.address)(lambda s: s[::-1])("abc").compute() == "cba"


def test_bad_arguments_raise_type_error_before_sending() -> None:
    """Binding happens at call time, so no server is needed to see a TypeError."""
    remote = compute_this("127.0.0.1:1")(add)
    with pytest.raises(TypeError, match="missing a required argument: 'a'"):
        remote()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'nope'"):
        remote(1, nope=2)  # type: ignore[call-arg]


def test_remote_exception_keeps_type_attributes_and_traceback(server: ServerProcess) -> None:
    """The original exception type comes back, with the function's frames in its traceback."""
    with pytest.raises(CustomError) as info:
        compute_this(server.address)(fail_deep)(3).compute()
    assert info.value.code == 42
    text = "".join(traceback.format_exception(info.value))
    assert text.count("in fail_deep") == 4
    assert "raise CustomError(42)" in text
    assert any("raised by fail_deep on worker" in note for note in info.value.__notes__)


def _helper_that_raises() -> None:
    raise ValueError("raised in a helper")


def calls_a_helper_and_a_closure(use_closure: bool) -> None:
    def inner() -> None:
        raise KeyError("raised in a closure")

    inner() if use_closure else _helper_that_raises()


@pytest.mark.parametrize(
    ("use_closure", "source"),
    [
        (False, 'raise ValueError("raised in a helper")'),
        (True, 'raise KeyError("raised in a closure")'),
    ],
)
def test_remote_traceback_shows_source_of_helpers_and_closures(
    server: ServerProcess, use_closure: bool, source: str
) -> None:
    """Code pickled by value keeps its file, so every remote frame shows its line."""
    with pytest.raises((ValueError, KeyError)) as info:
        compute_this(server.address)(calls_a_helper_and_a_closure)(use_closure).compute()
    text = "".join(traceback.format_exception(info.value))
    assert source in text
    assert "inner() if use_closure else _helper_that_raises()" in text
    assert "<dynamic-code>" not in text


def test_each_notebook_cell_keeps_its_own_file(server: ServerProcess, tmp_path: Path) -> None:
    """As in a notebook, where every cell is a file of one module: a helper
    from one cell, called by a function from another, shows its own line."""
    cell1, cell2 = tmp_path / "cell1.py", tmp_path / "cell2.py"
    cell1.write_text("def helper():\n    raise ValueError('raised in cell 1')\n")
    cell2.write_text("def job():\n    helper()\n")
    namespace: dict[str, Any] = {"__name__": "notebook"}  # not importable: pickled by value
    for cell in (cell1, cell2):
        exec(compile(cell.read_text(), str(cell), "exec"), namespace)
    with pytest.raises(ValueError) as info:
        compute_this(server.address)(namespace["job"])().compute()
    text = "".join(traceback.format_exception(info.value))
    assert f'File "{cell2}", line 2, in job\n    helper()' in text
    assert f'File "{cell1}", line 2, in helper\n    raise ValueError' in text


def test_exception_chain_survives(server: ServerProcess) -> None:
    """``raise ... from ...`` keeps its cause across the wire."""

    def chained() -> None:
        try:
            {"present": 1}["missing"]
        except KeyError as e:
            raise RuntimeError("lookup failed") from e

    with pytest.raises(RuntimeError, match="lookup failed") as info:
        compute_this(server.address)(chained)().compute()
    assert isinstance(info.value.__cause__, KeyError)


def test_unrebuildable_exception_becomes_remote_error(server: ServerProcess) -> None:
    """An exception whose class exists only on the worker arrives as RemoteError."""

    def raise_server_only() -> None:
        import types

        module = types.ModuleType("only_on_worker")
        exec("class Boom(Exception):\n    pass", module.__dict__)
        sys.modules["only_on_worker"] = module
        raise module.Boom("no such class here")

    with pytest.raises(RemoteError) as info:
        compute_this(server.address)(raise_server_only)().compute()
    assert info.value.type_name == "only_on_worker.Boom"
    assert "no such class here" in info.value.message
    assert "raise_server_only" in info.value.remote_traceback


@pytest.mark.parametrize(
    ("body", "type_name"),
    [("raise SystemExit(3)", "SystemExit"), ("raise KeyboardInterrupt", "KeyboardInterrupt")],
)
def test_system_exit_and_keyboard_interrupt_do_not_escape(
    server: ServerProcess, body: str, type_name: str
) -> None:
    """They come back as RemoteError (never stopping the caller) and the worker lives on."""
    pids = server.pids()

    def run(source: str) -> None:
        exec(source)

    with pytest.raises(RemoteError, match=type_name):
        compute_this(server.address)(run)(body).compute()
    assert compute_this(server.address)(add)(1).compute() == 3
    assert server.pids() == pids


def test_captured_output_is_replayed(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """print() to stdout and stderr inside the function shows up on the caller's streams."""
    assert compute_this(server.address)(shout)("hi").compute() == "HI"
    captured = capsys.readouterr()
    assert captured.out == "out: hi\n"
    assert captured.err == "err: hi\n"


def test_output_of_a_failing_call_is_replayed(
    server: ServerProcess, capsys: pytest.CaptureFixture[str]
) -> None:
    """Output printed before an exception is not lost."""

    def talk_then_fail() -> None:
        print("before the failure")
        raise ValueError("after")

    with pytest.raises(ValueError, match="after"):
        compute_this(server.address)(talk_then_fail)().compute()
    assert capsys.readouterr().out == "before the failure\n"


@pytest.mark.slow
def test_ten_megabytes_of_output(server: ServerProcess, capsys: pytest.CaptureFixture[str]) -> None:
    """Large captured output arrives whole."""

    def flood() -> int:
        line = "x" * 1023
        for _ in range(10 * 1024):
            print(line)
        return 1

    assert compute_this(server.address)(flood)().compute() == 1
    out = capsys.readouterr().out
    assert len(out) == 10 * 1024 * 1024


def test_raw_fd_writes_and_stdin_cannot_corrupt_the_protocol(server: ServerProcess) -> None:
    """os.write(1, ...) and reading stdin inside a job leave the worker's channel intact."""

    def misbehave() -> str:
        os.write(1, b"RESULT 1 garbage\n" * 100)
        os.write(2, b"noise on fd 2\n")
        return sys.stdin.read() + "done"

    remote = compute_this(server.address)(misbehave)
    assert remote().compute() == "done"
    assert remote().compute() == "done"
    assert "noise on fd 2" in server.log()


def test_depmodules_by_name_and_object(server: ServerProcess) -> None:
    """depmodules are imported on the worker before the function runs."""

    def imported(name: str) -> bool:
        return name in sys.modules

    assert compute_this(server.address, depmodules=["colorsys"])(imported)("colorsys").compute()
    import fractions

    assert compute_this(server.address, depmodules=[fractions])(imported)("fractions").compute()


def test_missing_depmodule_names_the_module(server: ServerProcess) -> None:
    """A depmodule the worker cannot import fails the call clearly; the worker serves on."""
    remote = compute_this(server.address, depmodules=["no_such_module_xyz"])(add)
    with pytest.raises(ModuleNotFoundError, match="no_such_module_xyz") as info:
        remote(1).compute()
    assert any("depmodule 'no_such_module_xyz'" in n for n in info.value.__notes__)
    assert compute_this(server.address)(add)(1).compute() == 3


def test_unpicklable_argument_is_named(server: ServerProcess) -> None:
    """An argument that cannot be pickled is reported before anything is sent."""
    with pytest.raises(SerializationError, match=r"argument 1 \(lock\)"):
        compute_this(server.address)(add)(1, threading.Lock()).compute()  # type: ignore[arg-type]


def test_unpicklable_result_leaves_worker_serving(server: ServerProcess) -> None:
    """A return value that will not pickle is a clear error, and the worker keeps its pid."""
    pids = server.pids()

    def make_lock() -> Any:
        return threading.Lock()

    with pytest.raises(SerializationError, match="return value .*lock.* could not be sent back"):
        compute_this(server.address)(make_lock)().compute()
    assert server.pids() == pids


def test_payload_the_worker_cannot_unpickle(server: ServerProcess) -> None:
    """A call needing a module missing on the server says so and suggests depmodules."""
    import types

    fake = types.ModuleType("client_only_module")
    exec("class Thing:\n    pass", fake.__dict__)
    sys.modules["client_only_module"] = fake
    fake.Thing.__module__ = "client_only_module"
    try:
        with pytest.raises(SerializationError, match="depmodules"):
            compute_this(server.address)(add)(fake.Thing(), 1).compute()
    finally:
        del sys.modules["client_only_module"]


async def test_async_run_both_forms(server: ServerProcess) -> None:
    """``await f.async_run(x)`` and ``await f(x).async_run()`` run on the caller's loop."""
    remote = compute_this(server.address)(add)
    assert await remote.async_run(2) == 4
    assert await remote(2, b=3).async_run() == 5
    results = await asyncio.gather(*(remote.async_run(i, 0) for i in range(50)))
    assert results == list(range(50))


async def test_compute_inside_a_running_loop(server: ServerProcess) -> None:
    """The blocking API works from code that already runs an event loop (a notebook)."""
    assert compute_this(server.address)(add)(5).compute() == 7


def test_server_from_environment(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> None:
    """With no address, $POOL_SERVER is used, even when set after decoration."""
    remote = compute_this(add)
    monkeypatch.setenv("POOL_SERVER", server.address)
    assert remote(1).compute() == 3
    monkeypatch.setenv("POOL_SERVER", f"grpc://{server.address}")
    assert remote(1).compute() == 3


def test_get_workers_and_client_status(server: ServerProcess) -> None:
    """GetWorkers lists every slot with pid, state, jobs done and restarts."""
    remote = compute_this(server.address)(add)
    assert remote.get_workers() == 2
    before = sum(w.jobs_done for w in Client(server.address).workers())
    for _ in range(3):
        remote(1).compute()
    status = Client(server.address).status()
    assert [w.id for w in status.workers] == [1, 2]
    assert all(w.pid > 0 and w.state in ("idle", "busy") for w in status.workers)
    assert sum(w.jobs_done for w in status.workers) == before + 3
    assert status.queue_capacity == 100_000
    assert status.queue_length == 0


def test_original_module_name_is_an_alias(server: ServerProcess) -> None:
    """Scripts written for ``distribute_challenge`` run unchanged."""
    assert distribute_challenge.compute_this(server.address)(add)(2).compute() == 4


def test_unreachable_server_fails_fast() -> None:
    """Nothing listening: ServerUnavailableError (a ConnectionError) within seconds."""
    remote = compute_this("127.0.0.1:1")(add)
    with pytest.raises(ServerUnavailableError, match="no pool-server answered") as info:
        remote(1).compute()
    assert isinstance(info.value, ConnectionError)


def test_bad_address_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    """A malformed address is a ValueError that names it: at decoration time
    when given, and at the call when it comes from $POOL_SERVER."""
    with pytest.raises(ValueError, match="'localhost' is not host:port"):
        compute_this("localhost")(add)
    with pytest.raises(ValueError, match="'127.0.0.1:99999' is not host:port"):
        Client("127.0.0.1:99999")
    monkeypatch.setenv("POOL_SERVER", "no-port")
    with pytest.raises(ValueError, match=r"\$POOL_SERVER is 'no-port', which is not host:port"):
        compute_this()(add)(1, 2).compute()


def test_channels_of_closed_loops_are_dropped(server: ServerProcess) -> None:
    """Each asyncio.run() gets a channel; closed loops' channels are not kept."""
    from distribute_client import _transport

    remote = compute_this(server.address)(add)
    for i in range(5):
        assert asyncio.run(remote.async_run(i, 0)) == i
    assert len(_transport._connections) <= 2  # the last asyncio.run's and the blocking API's
