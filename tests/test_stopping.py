"""Stopping that works (issue 15): Ctrl-C in a client running a map, a client
that is killed, a server that drains, and a server on a taken port.

Every client here is a real process running a real map against a real
server, interrupted by a real SIGINT (through a pipe and through a pty, as
a terminal's Ctrl-C) or killed by SIGKILL; what is left is read back from
the server (GetWorkers, the job listing), never from the client's word.
"""

from __future__ import annotations

import concurrent.futures
import os
import pty
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distribute_client import (
    JobNotFoundError,
    ServerShuttingDownError,
    ServerUnavailableError,
    compute_this,
)

from .conftest import STOP_TIMEOUT_S, ServerProcess, StartServer, all_idle, wait_until

# The client: a map of 8 calls, one per chunk, each waiting for its file.
# SIGINT is given back its usual meaning first: a test run in the
# background inherits it ignored, as every child of a non-interactive shell
# does, and then Ctrl-C would not reach Python at all.
CLIENT = """\
import os, signal, sys, time
signal.signal(signal.SIGINT, signal.default_int_handler)
if sys.argv[1] == "tty":  # a session of its own (Popen made it): make the pty its terminal
    import fcntl, termios
    fcntl.ioctl(0, termios.TIOCSCTTY, 0)
from distribute_client import compute_this

def wait_for_file(path):
    while not os.path.exists(path):
        time.sleep(0.01)
    return path

durable = sys.argv[3].startswith("durable")
remote = compute_this(sys.argv[2])(wait_for_file)
if sys.argv[3] == "async":  # async for under asyncio.run, whose Ctrl-C cancels the task
    import asyncio

    async def main():
        async for value in remote.async_map(sys.argv[4:], chunk_size=1):
            print("got", value, flush=True)

    print("started", None, flush=True)
    asyncio.run(main())
if sys.argv[3] == "durable-for":  # no with: a bare for loop, interrupted in its body
    for value in remote.map(sys.argv[4:], chunk_size=1, durable=True):
        print("got", value, flush=True)
        time.sleep(600)
with remote.map(sys.argv[4:], chunk_size=1, durable=durable) as results:
    print("started", results.batch_id, flush=True)
    for value in results:
        print("got", value, flush=True)
"""

INTERRUPTED = re.compile(
    r"map of wait_for_file interrupted: cancelled its \d+ unfinished calls?( of batch b\w+)?"
)
DURABLE_WARNING = re.compile(
    r"map of wait_for_file is durable: its batch (b\w+) runs on the server even if this "
    r"process goes away; cancel it with `pool-client cancel --batch \1`"
)
CLIENT_EXIT_TIMEOUT_S = 30.0


def wait_for_file(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


def client_command(tmp_path: Path, how: str, server: ServerProcess, mode: str) -> list[str]:
    script = tmp_path / "client.py"
    script.write_text(CLIENT)
    files = [str(tmp_path / "never")] * 8
    return [sys.executable, str(script), how, server.address, mode, *files]


def all_busy(server: ServerProcess) -> bool:
    return all(w.state == "busy" for w in server.client().workers())


def assert_nothing_left(server: ServerProcess, workers: int, batch_id: str | None) -> None:
    """No chunk of the map is queued or running on the server any more."""
    wait_until(all_idle(server, workers), 10, "the workers to be idle again")
    assert server.client().status().queue_length == 0
    if batch_id is not None:
        jobs = server.client().jobs(batch_id=batch_id)
        assert len(jobs) == 8
        assert {job.state for job in jobs} == {"CANCELLED"}


@pytest.mark.parametrize("mode", ["plain", "durable"])
def test_ctrl_c_under_a_pipe_cancels_the_map_with_one_line(
    start_server: StartServer, tmp_path: Path, mode: str
) -> None:
    """SIGINT to a client whose output is piped: every chunk it sent is
    cancelled on the server, and stderr gets one line, no traceback."""
    server = start_server("--workers", "2")
    client = subprocess.Popen(
        client_command(tmp_path, "pipe", server, mode),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        assert client.stdout is not None
        started = client.stdout.readline().split()
        wait_until(lambda: all_busy(server), 30, "the map's chunks to run")
        client.send_signal(signal.SIGINT)
        out, err = client.communicate(timeout=CLIENT_EXIT_TIMEOUT_S)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == -signal.SIGINT
    assert out == ""
    lines = err.splitlines()
    if mode == "durable":
        warning = DURABLE_WARNING.fullmatch(lines.pop(0).split(" or Client()")[0])
        assert warning is not None and warning[1] == started[1]
    assert len(lines) == 1, err
    assert INTERRUPTED.fullmatch(lines[0]), err
    assert_nothing_left(server, 2, started[1] if mode == "durable" else None)


def interrupt_when_busy(server: ServerProcess, command: list[str], first: str) -> str:
    """Run the client piped, SIGINT it once it printed ``first`` and every
    worker is busy with its map, and return its stderr once it has died of it."""
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert client.stdout is not None
        assert client.stdout.readline().startswith(first)
        wait_until(lambda: all_busy(server), 30, "the map's calls to run")
        client.send_signal(signal.SIGINT)
        _, err = client.communicate(timeout=CLIENT_EXIT_TIMEOUT_S)
    finally:
        client.kill()
        client.wait()
    assert client.returncode == -signal.SIGINT, err
    return err


def test_ctrl_c_under_asyncio_run_cancels_an_async_map_with_one_line(
    start_server: StartServer, tmp_path: Path
) -> None:
    """``async for`` over ``f.async_map`` in ``asyncio.run``: asyncio's own
    Ctrl-C cancels the task, which cancels the map's calls; the program
    ends with the one line, not asyncio's traceback."""
    server = start_server("--workers", "2")
    err = interrupt_when_busy(server, client_command(tmp_path, "pipe", server, "async"), "started")
    lines = err.splitlines()
    assert len(lines) == 1 and INTERRUPTED.fullmatch(lines[0]), err
    assert_nothing_left(server, 2, None)


def test_ctrl_c_in_the_body_of_a_bare_for_loop_cancels_a_durable_map(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A Ctrl-C that lands in the caller's own code, in a `for` over a
    durable map without `with`, still cancels the map's jobs, with the one
    line and no traceback."""
    server = start_server("--workers", "2")
    command = client_command(tmp_path, "pipe", server, "durable-for")
    command[-8] = str(tmp_path)  # the first call returns at once
    err = interrupt_when_busy(server, command, "got")
    warning = DURABLE_WARNING.search(err)
    assert warning is not None, err
    lines = [line for line in err.splitlines() if not DURABLE_WARNING.search(line)]
    assert len(lines) == 1 and INTERRUPTED.fullmatch(lines[0]), err
    wait_until(all_idle(server, 2), 10, "the workers to be idle again")
    assert server.client().status().queue_length == 0
    states = sorted(job.state for job in server.client().jobs(batch_id=warning[1]))
    assert states == ["CANCELLED"] * 7 + ["DONE"]


def test_ctrl_c_in_a_terminal_cancels_the_map_with_one_line(
    start_server: StartServer, tmp_path: Path
) -> None:
    """Ctrl-C typed at the client's terminal (a pty, its controlling tty):
    the map's chunks are cancelled and the terminal shows one line."""
    server = start_server("--workers", "2")
    master, slave = pty.openpty()
    client = subprocess.Popen(
        client_command(tmp_path, "tty", server, "plain"),
        stdin=slave,
        stdout=slave,
        stderr=slave,
        start_new_session=True,
    )
    os.close(slave)
    output = b""

    def read_until(condition: bytes) -> None:
        nonlocal output
        deadline = time.monotonic() + CLIENT_EXIT_TIMEOUT_S
        while condition not in output and time.monotonic() < deadline:
            if select.select([master], [], [], 0.1)[0]:
                try:
                    output += os.read(master, 4096)
                except OSError:  # EIO: every end of the slave is closed
                    return

    try:
        read_until(b"started")
        wait_until(lambda: all_busy(server), 30, "the map's chunks to run")
        os.write(master, b"\x03")  # Ctrl-C: the tty sends SIGINT to the client
        read_until(b"never seen")  # everything, to the end
        assert client.wait(CLIENT_EXIT_TIMEOUT_S) == -signal.SIGINT
    finally:
        client.kill()
        client.wait()
        os.close(master)
    text = output.decode().replace("^C", "")
    lines = [line for line in text.splitlines() if line.strip()]
    assert lines[0] == "started None"
    assert len(lines) == 2, text
    assert INTERRUPTED.fullmatch(lines[1].strip()), text
    assert_nothing_left(server, 2, None)


def test_a_killed_clients_plain_map_is_cancelled_by_the_server(
    start_server: StartServer, tmp_path: Path
) -> None:
    """SIGKILL leaves the client no say: its plain map's chunks stop with
    its stream, queued ones dropped and running ones' workers stopped."""
    server = start_server("--workers", "2")
    client = subprocess.Popen(
        client_command(tmp_path, "pipe", server, "plain"),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_until(lambda: all_busy(server), 30, "the map's chunks to run")
        client.kill()
        _, err = client.communicate(timeout=CLIENT_EXIT_TIMEOUT_S)
    finally:
        client.kill()
        client.wait()
    assert err == ""  # a plain map promises nothing past its client
    assert_nothing_left(server, 2, None)


def test_a_killed_clients_durable_map_runs_on_and_cancels_by_batch(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A durable map said at submit that it outlives its client, and it
    does: after SIGKILL its jobs run on (two finish), and `pool-client
    cancel --batch ID` then cancels the rest."""
    server = start_server("--workers", "2")
    release = tmp_path / "release"
    command = client_command(tmp_path, "pipe", server, "durable")
    command[-8:-6] = [str(release)] * 2  # the first two calls can finish
    client = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: all_busy(server), 30, "the map's jobs to run")
        client.kill()
        _, err = client.communicate(timeout=CLIENT_EXIT_TIMEOUT_S)
    finally:
        client.kill()
        client.wait()
    warning = DURABLE_WARNING.search(err)
    assert warning is not None, err
    batch_id = warning[1]
    release.touch()
    wait_until(
        lambda: server.client().batch(batch_id).states.get("DONE") == 2,
        30,
        "the batch's first two jobs to finish without their client",
    )
    wait_until(lambda: all_busy(server), 30, "the batch's next jobs to run")
    cli = [sys.executable, "-m", "distribute_client.cli", "--server", server.address]
    out = subprocess.run(
        [*cli, "cancel", "--batch", batch_id], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    assert f"batch {batch_id}: 100.0% done of 8 (6 CANCELLED, 2 DONE)" in out.stdout
    wait_until(all_idle(server, 2), 10, "the workers to be idle again")
    assert server.client().status().queue_length == 0
    states = {job.state for job in server.client().jobs(batch_id=batch_id)}
    assert states == {"DONE", "CANCELLED"}
    usage = subprocess.run([*cli, "cancel"], capture_output=True, text=True, timeout=60)
    assert usage.returncode == 2 and "JOB_ID or --batch" in usage.stderr
    with pytest.raises(JobNotFoundError):
        server.client().cancel_batch("bnosuchbatch")


def test_a_draining_server_answers_lookups_refuses_calls_and_ends_with_its_work(
    start_server: StartServer, tmp_path: Path
) -> None:
    """SIGINT with a call running and --grace 600: the port stays open,
    GetWorkers shows the busy worker, new calls and submits are refused as
    draining, and once the running call finishes the server exits 0 (long
    before the grace: a wait far shorter than it)."""
    server = start_server("--workers", "1", "--grace", "600")
    go = tmp_path / "go"
    remote = compute_this(server.address)(wait_for_file)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(remote(str(go)).compute)
        wait_until(lambda: all_busy(server), 30, "the call to run")
        server.proc.send_signal(signal.SIGINT)
        wait_until(lambda: "draining" in server.log(), 30, "the drain to start")
        assert [w.state for w in server.client().workers()] == ["busy"]
        with pytest.raises(ServerShuttingDownError, match="server is draining"):
            remote(str(go)).compute()
        with pytest.raises(ServerShuttingDownError, match="server is draining"):
            remote.submit(str(go))
        go.touch()
        assert running.result(timeout=30) == "released"
    assert server.proc.wait(STOP_TIMEOUT_S) == 0
    assert server.stop() == 0


def test_a_second_signal_stops_the_drain_at_once(start_server: StartServer, tmp_path: Path) -> None:
    """A second SIGINT ends the drain without waiting for the running call:
    the call fails as stopped, and the server exits 0 well within --grace."""
    server = start_server("--workers", "1", "--grace", "600")
    remote = compute_this(server.address)(wait_for_file)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        running = pool.submit(remote(str(tmp_path / "never")).compute)
        wait_until(lambda: all_busy(server), 30, "the call to run")
        server.proc.send_signal(signal.SIGINT)
        wait_until(lambda: "draining" in server.log(), 30, "the drain to start")
        server.proc.send_signal(signal.SIGINT)
        assert server.proc.wait(STOP_TIMEOUT_S) == 0
        with pytest.raises(
            ServerUnavailableError, match=r"stopped before the call finished \(a second signal\)"
        ):
            running.result(timeout=30)
    assert "SIGINT again: stopping without waiting" in server.log()
    assert server.stop() == 0
