"""Cleanup nobody escapes, calls that cannot damage later calls, and capped
output (issue 9), against real servers and real worker processes."""

from __future__ import annotations

import ctypes
import os
import re
import shutil
import signal
import subprocess
import threading
import traceback
from pathlib import Path
from typing import Any

import pytest

from distribute_client import compute_this
from pool_server.cgroup import cgroup2_mounts
from pool_server.process import OUTPUT_CAP_BYTES

from . import conftest
from .conftest import ServerProcess, StartServer, all_idle, pid_alive, wait_until

_PR_SET_PDEATHSIG = 1
FLOOD_BYTES = 50_000_000


def start_child(new_session: bool) -> int:
    """Start a long sleep (in a new session if asked) and return its pid."""
    child = subprocess.Popen(
        ["sleep", "600"],
        start_new_session=new_session,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return child.pid


def clear_pdeathsig() -> None:
    ctypes.CDLL(None).prctl(_PR_SET_PDEATHSIG, 0)


def clear_pdeathsig_and_sleep(seconds: float) -> None:
    clear_pdeathsig()
    threading.Event().wait(seconds)


def close_fds_0_to_2() -> None:
    for fd in (0, 1, 2):
        os.close(fd)


def ignore_sigterm() -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def block_sigterm() -> None:
    signal.pthread_sigmask(signal.SIG_BLOCK, [signal.SIGTERM])


def point_fd_1_at_devnull() -> None:
    os.dup2(os.open(os.devnull, os.O_WRONLY), 1)


def damage_and_answer(damage: Any) -> tuple[str, int]:
    damage()
    return "answered", os.getpid()


def getpid() -> int:
    return os.getpid()


def write_straight(fd: int, data: bytes) -> str:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]
    return "survived"


def recurse(depth: int) -> int:
    return recurse(depth + 1)


def cgroup_pool(server: ServerProcess) -> Path | None:
    """The pool cgroup the server logged, or None if it uses process groups."""
    match = re.search(r"by cgroup\.kill, one cgroup per worker slot under (\S+)", server.log())
    return Path(match[1]) if match else None


def needs_cgroups(server: ServerProcess) -> Path:
    pool = cgroup_pool(server)
    if pool is None:
        pytest.skip("cgroup v2 is not writable here: workers are cleaned up by process group")
    return pool


def test_child_in_a_new_session_dies_with_the_server(start_server: StartServer) -> None:
    """With cgroups, a function's child that called setsid() (out of reach
    of killpg) is killed when the server stops, and the pool's cgroup is gone."""
    server = start_server("--workers", "1")
    pool = needs_cgroups(server)
    child = compute_this(server.address)(start_child)(True).compute()
    assert pid_alive(child)
    assert server.stop() == 0
    wait_until(lambda: not pid_alive(child), 10, f"child {child} to die with the server")
    assert not pool.exists()


def test_next_server_removes_what_a_killed_server_left(start_server: StartServer) -> None:
    """A SIGKILLed server leaves its cgroup and a setsid() child behind; the
    next server started in the same cgroup kills them and removes it, and
    leaves a live server's cgroup alone."""
    live = start_server("--workers", "1")
    needs_cgroups(live)
    killed = start_server("--workers", "1")
    killed_pool = needs_cgroups(killed)
    child = compute_this(killed.address)(start_child)(True).compute()
    killed.stop(signal.SIGKILL)  # also checks its worker did not outlive it
    assert pid_alive(child) and killed_pool.exists()

    fresh = start_server("--workers", "1")
    assert f"removing the cgroup of server pid {killed.proc.pid}, which is gone" in fresh.log()
    wait_until(lambda: not pid_alive(child), 10, f"the left-behind child {child} to be killed")
    assert not killed_pool.exists()
    live_pool = cgroup_pool(live)
    assert live_pool is not None and live_pool.exists()
    assert compute_this(live.address)(getpid)().compute() in live.pids()


@pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root and unshare"
)
def test_without_writable_cgroups_workers_stop_by_process_group(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Where cgroup v2 is read-only (here: remounted so in a private mount
    namespace) the server says it uses process groups, serves, and a child
    left in the worker's process group dies with the server."""
    remounts = " && ".join(f"mount -o remount,bind,ro {m}" for _, m in cgroup2_mounts())
    wrapper = ("unshare", "-m", "sh", "-c", f'{remounts or "true"} && exec "$0" "$@"')
    monkeypatch.setattr(conftest, "SERVER_COMMAND", (*wrapper, *conftest.SERVER_COMMAND))
    server = start_server("--workers", "1")
    assert "worker cleanup: by process group, since cgroup v2 is not usable here" in server.log()
    child = compute_this(server.address)(start_child)(False).compute()
    assert server.stop() == 0
    wait_until(lambda: not pid_alive(child), 10, f"child {child} to die with the server")


def test_worker_with_pdeathsig_cleared_dies_with_a_killed_server(
    start_server: StartServer,
) -> None:
    """A call that clears its parent-death signal, then runs on, does not
    keep its worker alive after the server is SIGKILLed: the worker's
    watchdog thread sees the server's pidfd turn readable."""
    server = start_server("--workers", "1")
    call = compute_this(server.address, timeout=60)(clear_pdeathsig_and_sleep)(600)
    errors: list[BaseException] = []

    def run() -> None:
        try:
            call.compute()
        except Exception as e:
            errors.append(e)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    wait_until(lambda: [w.state for w in server.client().workers()] == ["busy"], 30, "busy")
    server.stop(signal.SIGKILL)  # fails unless every worker it had is gone within 10 s
    thread.join(30)
    assert errors, "the call cannot have succeeded"


DAMAGE = [
    pytest.param(close_fds_0_to_2, "fd 0 was closed", id="closes-fds-0-2"),
    pytest.param(point_fd_1_at_devnull, "fd 1 now refers to another file", id="redirects-fd-1"),
    pytest.param(ignore_sigterm, "the SIGTERM handler was changed", id="ignores-SIGTERM"),
    pytest.param(block_sigterm, "SIGTERM is blocked", id="blocks-SIGTERM"),
    pytest.param(clear_pdeathsig, "parent-death signal was changed", id="clears-PDEATHSIG"),
]


@pytest.mark.parametrize(("damage", "reason"), DAMAGE)
def test_call_that_damages_its_worker_gets_a_fresh_one_after_it(
    server: ServerProcess, damage: Any, reason: str
) -> None:
    """The damaging call's own result comes back; its worker asks to be
    replaced, the pool keeps its size, and later calls run on healthy
    workers (none on the damaged pid)."""
    value, damaged = compute_this(server.address)(damage_and_answer)(damage).compute()
    assert value == "answered"
    wait_until(lambda: damaged not in server.pids(), 30, f"worker pid {damaged} replaced")
    wait_until(all_idle(server, 2), 30, "both workers idle")
    assert not pid_alive(damaged)
    pids = {compute_this(server.address)(getpid)().compute() for _ in range(6)}
    assert damaged not in pids and pids <= set(server.pids())
    assert "asks to be replaced after job" in server.log() and reason in server.log()


@pytest.mark.parametrize(
    ("fd", "data"),
    [
        pytest.param(1, b"x" * FLOOD_BYTES, id="50MB-to-fd-1"),
        pytest.param(2, b"\n" * (FLOOD_BYTES // 10), id="5MB-of-newlines-to-fd-2"),
    ],
)
def test_output_written_straight_to_fds_is_capped_per_call(
    start_server: StartServer, fd: int, data: bytes
) -> None:
    """os.write to fd 1 or 2 bypasses the worker's capture; the server logs
    at most about OUTPUT_CAP_BYTES of it per call, says how many bytes it
    dropped, and keeps serving."""
    server = start_server("--workers", "1")
    before = server.log_path.stat().st_size
    assert compute_this(server.address, timeout=120)(write_straight)(fd, data).compute() == (
        "survived"
    )
    wait_until(lambda: "bytes of output from job" in server.log(), 30, "the dropped count")
    assert compute_this(server.address)(getpid)().compute() in server.pids()
    assert server.stop() == 0
    grown = server.log_path.stat().st_size - before
    assert grown < 4 * OUTPUT_CAP_BYTES, f"the log grew by {grown} bytes"
    dropped = sum(int(n) for n in re.findall(r"dropped (\d+) bytes of output", server.log()))
    assert len(data) - 2 * OUTPUT_CAP_BYTES < dropped <= len(data)


def test_recursion_error_comes_back_as_itself(server: ServerProcess) -> None:
    """A RecursionError (whose ~1,000-frame traceback once failed to pickle)
    is raised as RecursionError, with a trimmed traceback that says so."""
    with pytest.raises(RecursionError) as info:
        compute_this(server.address)(recurse)(0).compute()
    text = "".join(traceback.format_exception(info.value))
    assert "recurse" in text
    assert "frames left out" in text
    assert compute_this(server.address)(getpid)().compute() in server.pids()
