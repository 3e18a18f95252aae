"""Progress and output you can see (issue 15): chunk sizes measured from the
calls' running time, a map's bar moved by the progress() of running calls,
a running job's output streamed as it prints (job.logs, pool-client logs),
and pool-client watch drawing a bar on a terminal."""

from __future__ import annotations

import fcntl
import os
import pty
import struct
import subprocess
import sys
import termios
import threading
import time
from pathlib import Path

from distribute_client import Client, compute_this, progress
from distribute_client._chunk_size import TARGET_CHUNK_S, ChunkSizer
from distribute_client._codec import Returned

from .conftest import ServerProcess, wait_until


def noop(x: int) -> int:
    return x


def nap(x: int) -> int:
    time.sleep(0.3)  # at least this long, so the size it makes is known
    return x


def wait_for(path: str) -> None:
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)


def talk_then_wait(go: str) -> str:
    print("started, waiting for the go signal", flush=True)
    wait_for(go)
    print("released")
    return "done"


def test_chunk_sizer_aims_at_a_second() -> None:
    """One call first; then as many as run in TARGET_CHUNK_S, within 1..cap."""
    sizer = ChunkSizer(cap=100)
    assert (sizer.measured, sizer.size()) == (False, 1)
    sizer.observe([Returned(None, TARGET_CHUNK_S / 10)] * 2)
    assert (sizer.measured, sizer.size()) == (True, 10)
    slow = ChunkSizer(cap=100)
    slow.observe([Returned(None, TARGET_CHUNK_S * 3)])
    assert slow.size() == 1
    fast = ChunkSizer(cap=100)
    fast.observe([Returned(None, 0.0)])
    assert fast.size() == 100
    assert ChunkSizer(cap=100, fixed=7).size() == 7
    # A durable map's floor: its jobs must fit one listing, however slow its calls.
    floored = ChunkSizer(cap=100, floor=3)
    assert floored.size() == 3
    floored.observe([Returned(None, TARGET_CHUNK_S * 3)])
    assert floored.size() == 3


def _chunk_sizes(server: ServerProcess, batch_id: str) -> list[int]:
    jobs = server.client().jobs(batch_id=batch_id, limit=1000)
    return [job.items for job in sorted(jobs, key=lambda job: job.item_offset)]


def test_durable_map_starts_small_then_grows(server: ServerProcess) -> None:
    """Quick calls: four probe chunks of one call, then the cap (Pool.map's
    size, 100 / 8 rounded up); calls of 0.3 s or more: at most 3 a chunk."""
    remote = compute_this(server.address)(noop)
    with remote.map(range(100), durable=True) as results:
        assert list(results) == list(range(100))
        batch = results.batch_id
    assert batch is not None
    sizes = _chunk_sizes(server, batch)
    assert sizes[:4] == [1, 1, 1, 1] and sum(sizes) == 100
    assert max(sizes) == 13
    slow = compute_this(server.address)(nap)
    with slow.map(range(10), durable=True) as results:
        assert list(results) == list(range(10))
        batch = results.batch_id
    assert batch is not None
    sizes = _chunk_sizes(server, batch)
    assert sizes[:4] == [1, 1, 1, 1] and sum(sizes) == 10 and max(sizes) <= 3


BAR_SCRIPT = """
import os, sys, time
from distribute_client import compute_this, progress

def half_then_wait(go):
    progress(0.5, "half way")
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return 1

remote = compute_this(sys.argv[1])(half_then_wait)
print(sum(remote.map([sys.argv[2]] * 2, chunk_size=2, progress=True)))
"""


def test_map_bar_counts_fractions_of_running_calls(server: ServerProcess, tmp_path: Path) -> None:
    """One chunk of two calls: the first call's progress(0.5) shows as 0.5 of
    2 calls while it runs (stderr is no terminal: shown anyway); the second
    call's as 1.5 (the finished one counted); then 2/2."""
    go = tmp_path / "go"
    script = tmp_path / "bar.py"
    script.write_text(BAR_SCRIPT)
    proc = subprocess.Popen(
        [sys.executable, str(script), server.address, str(go)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert proc.stderr is not None and proc.stdout is not None
    stderr = proc.stderr
    seen = bytearray()

    def pump() -> None:
        while chunk := os.read(stderr.fileno(), 65536):
            seen.extend(chunk)

    reader = threading.Thread(target=pump)
    reader.start()
    try:
        wait_until(lambda: b"0.5/2" in seen, 60, "the bar at 0.5/2 while the first call runs")
        assert b"half way" in seen
        go.touch()
        proc.wait(60)
        out = proc.stdout.read()
    finally:
        proc.kill()
        proc.wait()
        reader.join(10)
        proc.stdout.close()
        stderr.close()
    assert proc.returncode == 0, seen.decode()
    assert out == b"2\n"
    assert b"1.5/2" in seen and b"2/2" in seen


def test_logs_stream_while_the_job_runs(server: ServerProcess, tmp_path: Path) -> None:
    """job.logs(follow=True) yields a line the running job printed before it
    finishes (it waits for a file the test writes only after reading it);
    a finished job's logs are its captured output."""
    go = tmp_path / "go"
    job = compute_this(server.address)(talk_then_wait).submit(str(go))
    streamed = ""
    pieces = job.logs(follow=True)
    for text in pieces:
        streamed += text
        if "started" in streamed:
            break
    assert job.status().state == "RUNNING"  # printed, and streamed, before it finished
    go.touch()
    streamed += "".join(pieces)  # the rest, until it finishes
    assert streamed == "started, waiting for the go signal\nreleased\n"
    assert job.result(timeout=30) == "done"
    assert "".join(job.logs()) == "started, waiting for the go signal\nreleased\n"


def test_pool_client_logs(server: ServerProcess, tmp_path: Path) -> None:
    """pool-client logs prints a running job's tail; --follow streams it to
    the end and exits as watch does; a pickled job's finished logs need
    --unpickle, as its result does."""
    go = tmp_path / "go"
    job = compute_this(server.address)(talk_then_wait).submit(str(go))
    base = [sys.executable, "-m", "distribute_client.cli", "--server", server.address]

    def logs(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*base, "logs", job.id, *args], capture_output=True, text=True, timeout=60
        )

    wait_until(lambda: "started" in logs().stdout, 30, "the running job's first line")
    follower = subprocess.Popen([*base, "logs", job.id, "--follow"], stdout=subprocess.PIPE)
    assert follower.stdout is not None
    assert follower.stdout.readline() == b"started, waiting for the go signal\n"
    go.touch()
    rest, _ = follower.communicate(timeout=60)
    assert (follower.returncode, rest) == (0, b"released\n")
    assert logs().returncode == 2  # finished, and its outcome is a pickle
    finished = logs("--unpickle")
    assert finished.stdout == "started, waiting for the go signal\nreleased\n"


def steps(n: int) -> int:
    for i in range(n):
        progress((i + 1) / n, f"step {i + 1}")
        time.sleep(0.05)
    return n


def test_watch_draws_a_bar_on_a_terminal(server: ServerProcess) -> None:
    """pool-client watch on a terminal: a tqdm bar on stderr, the final
    status line on stdout; lines per update when stderr is not a terminal."""
    job = Client(server.address).job(compute_this(server.address)(steps).submit(10).id)
    controller, terminal = pty.openpty()
    # A terminal 100 columns wide (a new pty is 0 by 0, and tqdm fits its bar to it).
    fcntl.ioctl(terminal, termios.TIOCSWINSZ, struct.pack("HHHH", 24, 100, 0, 0))
    try:
        watched = subprocess.run(
            [sys.executable, "-m", "distribute_client.cli", "--server", server.address]
            + ["watch", job.id],
            stdout=subprocess.PIPE,
            stderr=terminal,
            timeout=60,
        )
        os.close(terminal)
        drawn = b""
        while True:
            try:
                chunk = os.read(controller, 65536)
            except OSError:  # the terminal's other end is closed: all read
                break
            if not chunk:
                break
            drawn += chunk
    finally:
        os.close(controller)
    assert watched.returncode == 0
    assert b"100%|" in drawn and b"DONE" in drawn and b"step 10" in drawn
    lines = watched.stdout.decode().splitlines()
    assert len(lines) == 1 and "DONE" in lines[0]
    plain = subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", server.address]
        + ["watch", job.id],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert plain.returncode == 0 and "DONE" in plain.stdout and "%|" not in plain.stderr
