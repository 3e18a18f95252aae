"""Worker recycling against a real server: after N calls (with jitter), past
a soft memory limit after a call (a function that leaks), never in a loop
for a worker that starts near the limit, and the hard limit that kills a
worker allocating past it, its call failing as a crash and retried where
allowed."""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distribute_client import WorkerCrashedError, compute_this

from .conftest import StartServer, wait_until

MIB = 1 << 20
LEAK_BYTES = 40 * MIB


def own_pid(_: int = 0) -> int:
    return os.getpid()


def own_rss() -> int:
    with open("/proc/self/statm", "rb") as statm:
        return int(statm.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def leak(size: int) -> tuple[int, int]:
    """Keep ``size`` more bytes for the life of the worker, as a growing
    cache does; the pid and RSS after it."""
    sys.__dict__.setdefault("_test_leak", []).append(b"\x01" * size)
    return os.getpid(), own_rss()


def allocate_past(limit: int, marker: str) -> int:
    """On the first attempt (``marker`` absent), touch memory in steps until
    killed; on a later one, return at once."""
    if os.path.exists(marker):
        return os.getpid()
    Path(marker).write_text("tried")
    held = []
    while True:  # the pool kills this worker within a sample of passing the limit
        held.append(b"\x01" * (16 * MIB))
        time.sleep(0.02)
        if len(held) * 16 * MIB > 4 * limit:
            return -1  # never killed: the test fails on this value


def runs(pids: list[int]) -> list[int]:
    """The lengths of the runs of equal pids, in order."""
    return [len(list(group)) for _, group in itertools.groupby(pids)]


def test_a_worker_is_replaced_after_n_calls_between_calls(start_server: StartServer) -> None:
    server = start_server("--workers", "1", "--max-tasks-per-worker", "3")
    remote = compute_this(server.address)(own_pid)
    pids = [remote(i).compute() for i in range(7)]
    assert runs(pids) == [3, 3, 1], pids
    assert len(set(pids)) == 3
    wait_until(lambda: server.client().workers()[0].state == "idle", 30, "the worker")
    (worker,) = server.client().workers()
    assert (worker.recycles, worker.restarts) == (2, 0)  # a recycle is not a crash
    assert worker.last_exit_reason == "recycled-tasks"
    assert worker.jobs_done == 7


def test_jitter_spreads_the_recycles(start_server: StartServer) -> None:
    server = start_server(
        "--workers", "1", "--max-tasks-per-worker", "2", "--max-tasks-jitter", "3"
    )
    remote = compute_this(server.address)(own_pid)
    pids = [remote(i).compute() for i in range(60)]
    lengths = runs(pids)[:-1]  # the last process has not reached its budget
    assert all(2 <= n <= 5 for n in lengths), lengths
    assert len(set(lengths)) > 1, f"every worker ran the same number of calls: {lengths}"


def test_a_leaking_worker_is_recycled_past_the_soft_limit(start_server: StartServer) -> None:
    limit = 150 * MIB
    server = start_server("--workers", "1", "--worker-max-rss", "150M")
    remote = compute_this(server.address)(leak)
    answers = [remote(LEAK_BYTES).compute() for _ in range(8)]  # every call answered
    for (pid, rss), (next_pid, _) in itertools.pairwise(answers):
        # The server reads the RSS just after the call: a MiB either way is a tie.
        if rss > limit + MIB:  # answered first, then replaced
            assert next_pid != pid, answers
        elif rss < limit - MIB:
            assert next_pid == pid, answers
    assert any(rss > limit for _, rss in answers)
    wait_until(lambda: server.client().workers()[0].state == "idle", 30, "the worker")
    (worker,) = server.client().workers()
    assert worker.recycles >= 1 and worker.restarts == 0, worker
    assert worker.last_exit_reason == "recycled-memory"
    assert 0 < worker.rss_bytes < limit
    assert "recycled for memory" in server.log()


def test_a_worker_that_starts_near_the_soft_limit_is_kept_not_looped(
    start_server: StartServer,
) -> None:
    probe = start_server("--workers", "1")
    wait_until(lambda: probe.client().workers()[0].rss_bytes > 0, 30, "the worker's RSS")
    start_rss = probe.client().workers()[0].rss_bytes
    probe.stop()
    limit = int(start_rss * 0.95)  # below where a fresh worker starts
    server = start_server("--workers", "1", "--worker-max-rss", str(limit))
    remote = compute_this(server.address)(own_pid)
    pids = [remote(i).compute() for i in range(20)]
    assert len(set(pids)) == 1, f"recycled in a loop: {runs(pids)}"
    assert "kept, and recycled for memory only past" in server.log()
    (worker,) = server.client().workers()
    assert worker.recycles == 0
    pid, _ = compute_this(server.address)(leak)(LEAK_BYTES).compute()  # once it grows, it goes
    assert pid == pids[0]
    wait_until(lambda: server.client().workers()[0].recycles == 1, 30, "the recycle")
    assert server.client().workers()[0].last_exit_reason == "recycled-memory"


def test_a_worker_past_the_hard_limit_is_killed_and_its_call_retried(
    start_server: StartServer, tmp_path: Path
) -> None:
    limit = 200 * MIB
    server = start_server("--workers", "1", "--worker-rss-limit", "200M")
    marker = tmp_path / "attempted"
    with pytest.raises(WorkerCrashedError) as raised:
        compute_this(server.address)(allocate_past)(limit, str(marker)).compute()
    message = str(raised.value)
    assert "--worker-rss-limit 200 MiB" in message and "its RSS" in message, message
    marker.unlink()
    retried = compute_this(server.address, retries=1)(allocate_past)
    assert retried(limit, str(marker)).compute() > 0  # the first attempt killed, the retry ran
    wait_until(lambda: server.client().workers()[0].state == "idle", 30, "the worker")
    (worker,) = server.client().workers()
    assert worker.restarts == 2 and worker.recycles == 0, worker
    assert worker.last_exit_reason == "memory-limit"
    assert server.log().count("passed --worker-rss-limit") >= 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--worker-max-rss", "lots"], "'lots' is not a size"),
        (["--max-tasks-per-worker", "0"], "max tasks per worker must be at least 1"),
        (["--max-tasks-jitter", "2"], "--max-tasks-jitter needs --max-tasks-per-worker"),
        (["--worker-max-rss", "1G", "--worker-rss-limit", "512M"], "must be above"),
    ],
)
def test_bad_recycling_options_exit_2_saying_why(args: list[str], message: str) -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pool_server", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2
    assert message in done.stderr, done.stderr
