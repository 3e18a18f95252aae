"""The original Go server's RemoteExecuteAPI (``--serve-original-api``),
called as its own clients call it (tests/original_client.py), on a real
server with real workers."""

from __future__ import annotations

import asyncio
import math
import os
import subprocess
import sys
import time
import traceback
from collections.abc import Iterator

import pytest

from .conftest import SERVER_COMMAND, ServerProcess, wait_until
from .metrics_port import metrics_url, scrape, value
from .original_client import MethodReturnedError, OriginalClient

# The functions travel as bare code objects, with globals holding only their
# depmodules: the modules they use are imported here for the reader, and sent
# as depmodules for the worker.


def square(x: float) -> float:
    return x * x


def chatty(name: str) -> int:
    print(f"hello {name}")
    print("careful", file=sys.stderr)
    return len(name)


def raising(x: object) -> None:
    raise ValueError(f"bad x: {x}")  # the line the traceback must point at


def uses_modules(x: float) -> tuple[float, int]:
    return math.sqrt(x), os.getpid()


def crash() -> None:
    os._exit(3)


def nap(seconds: float) -> tuple[float, int]:
    time.sleep(seconds)
    return seconds * seconds, os.getpid()


def unpicklable() -> object:
    return (n for n in range(0))


@pytest.fixture(scope="module")
def original(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    from .conftest import launch_server

    log_path = tmp_path_factory.mktemp("original") / "server.log"
    server = launch_server(
        log_path, "--workers", "3", "--auth", "none", "--serve-original-api", "--metrics-port", "0"
    )
    yield server
    assert server.stop() == 0


@pytest.fixture
def client(original: ServerProcess) -> Iterator[OriginalClient]:
    client = OriginalClient(original.address)
    yield client
    client.close()


def test_a_value(client: OriginalClient) -> None:
    assert client.run(square, 7) == 49
    assert client.execute(square, x=1.5) == (2.25, "", "", None)


def test_stdout_and_stderr(client: OriginalClient, capsys: pytest.CaptureFixture[str]) -> None:
    assert client.execute(chatty, "ada", depmodules=("sys",)) == (
        3,
        "hello ada\n",
        "careful\n",
        None,
    )
    assert client.run(chatty, "bob", depmodules=("sys",)) == 3
    printed = capsys.readouterr()
    assert (printed.out, printed.err) == ("hello bob\n", "careful\n")


def test_an_exception_with_its_traceback(client: OriginalClient) -> None:
    with pytest.raises(ValueError, match="bad x: 5") as raised:
        client.run(raising, 5)
    last = traceback.extract_tb(raised.value.__traceback__)[-1]
    assert (last.filename, last.name) == (__file__, "raising")
    assert last.line == 'raise ValueError(f"bad x: {x}")  # the line the traceback must point at'
    assert "worker_proc" not in "".join(traceback.format_exception(raised.value))


def test_depmodules(client: OriginalClient, original: ServerProcess) -> None:
    root, pid = client.run(uses_modules, 16.0, depmodules=("math", "os"))
    assert root == 4.0
    assert pid in original.pids()
    _, _, _, missing = client.execute(square, 1, depmodules=("no_such_module_here",))
    assert isinstance(missing, ModuleNotFoundError)
    assert "no_such_module_here" in str(missing)


def test_a_worker_crash_is_an_error_naming_it(
    client: OriginalClient, original: ServerProcess
) -> None:
    with pytest.raises(
        MethodReturnedError, match=r"worker \d+ \(pid \d+\) exited with code 3 while running"
    ) as raised:
        client.run(crash, depmodules=("os",))
    assert str(raised.value).startswith("Execute() method failed: ")
    wait_until(lambda: len(original.pids()) == 3, 30, "the pool to be back at 3 workers")
    assert client.run(square, 3) == 9


def test_get_workers(client: OriginalClient) -> None:
    assert client.get_workers() == 3


def test_many_concurrent_calls_spread_over_the_workers(
    client: OriginalClient, original: ServerProcess
) -> None:
    """As the original's test_load.py: asyncio.gather of 10 calls per worker."""
    numbers = [(0.05 + 0.01 * (i % 5),) for i in range(30)]
    results = asyncio.run(client.gather(nap, numbers, depmodules=("time", "os")))
    assert [square for square, _ in results] == [x * x for (x,) in numbers]
    pids = {pid for _, pid in results}
    assert pids == set(original.pids())  # every worker served some


def test_failures_outside_the_function_come_back_in_error(
    client: OriginalClient, original: ServerProcess
) -> None:
    """A request that is not the original's encoding, a value that will not
    pickle and a passed deadline are told in ``error``; the pool keeps serving."""
    for request in (b"not a pickle", b"\x80\x04K\x01."):
        reply = client.execute_raw(request)
        assert reply.result == b""
        assert reply.error.startswith("the call could not be decoded on the worker: expected a")
    assert "empty request" in client.execute_raw(b"").error
    with pytest.raises(MethodReturnedError, match=r"return value \(generator\) could not be sent"):
        client.run(unpicklable)
    with pytest.raises(MethodReturnedError, match="ran past its .* deadline"):
        client.execute(nap, 5, depmodules=("time", "os"), timeout=1.0)
    wait_until(lambda: len(original.pids()) == 3, 30, "the pool to be back at 3 workers")
    assert client.run(square, 4) == 16


def test_our_own_clients_share_the_port(original: ServerProcess) -> None:
    from distribute_client import compute_this

    @compute_this(server=original.address)
    def add(a: int, b: int) -> int:
        return a + b

    assert add(2, 3).compute() == 5


def test_calls_are_metered_as_ours(client: OriginalClient, original: ServerProcess) -> None:
    url = metrics_url(original)
    before = scrape(url)
    client.run(square, 2)
    with pytest.raises(ValueError):
        client.run(raising, 1)
    after = scrape(url)
    for outcome in ("done", "error"):
        added = value(after, "pool_calls_total", outcome=outcome) - value(
            before, "pool_calls_total", outcome=outcome
        )
        assert added >= 1, outcome
    labels = {
        "grpc_type": "unary",
        "grpc_service": "com.github.anight.mysticchallenge.RemoteExecuteAPI",
        "grpc_method": "Execute",
        "grpc_code": "OK",
    }
    assert value(after, "grpc_server_handled_total", **labels) > value(
        before, "grpc_server_handled_total", **labels
    )


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (("--serve-original-api",), "--serve-original-api needs --auth none"),
        (
            ("--serve-original-api", "--auth", "none", "--host", "0.0.0.0"),
            "--host 0.0.0.0 with --auth none would let anyone",
        ),
    ],
)
def test_it_needs_auth_none_and_keeps_the_bind_rules(args: tuple[str, ...], error: str) -> None:
    done = subprocess.run(
        [*SERVER_COMMAND, "--port", "0", *args], capture_output=True, text=True, timeout=30
    )
    assert done.returncode == 2
    assert error in done.stderr
