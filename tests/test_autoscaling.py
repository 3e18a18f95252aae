"""Autoscaling against a real server: from its minimum to its maximum under
load and never above it, at most two workers starting at once, back to the
minimum once idle past the scale-down delay; limits changed while it runs
with ``pool-client workers --set``, by an admin only."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from distribute_client import AuthenticationError, Client, InvalidRequestError, compute_this

from .conftest import ServerProcess, StartServer, wait_until


def nap(seconds: float) -> int:
    time.sleep(seconds)
    return os.getpid()


class Sampler(threading.Thread):
    """GetWorkers every 50 ms while the test runs: the pool's sizes and how
    many slots were starting at once."""

    def __init__(self, client: Client) -> None:
        super().__init__(daemon=True)
        self.client = client
        self.sizes: list[int] = []
        self.starting: list[int] = []
        self.done = threading.Event()

    def run(self) -> None:
        while not self.done.is_set():
            workers = self.client.workers()
            self.sizes.append(len(workers))
            self.starting.append(sum(w.state == "starting" for w in workers))
            time.sleep(0.05)


def test_the_pool_grows_to_its_maximum_under_load_and_shrinks_when_idle(
    start_server: StartServer,
) -> None:
    server = start_server("--min-workers", "1", "--max-workers", "3", "--scale-down-delay", "1")
    client = server.client()
    assert len(client.workers()) == 1
    sampler = Sampler(client)
    sampler.start()
    remote = compute_this(server.address)(nap)

    async def load() -> list[int]:
        return list(await asyncio.gather(*(remote.async_run(1.0) for _ in range(18))))

    pids = asyncio.run(load())
    assert len(set(pids)) == 3, "the calls did not spread over three workers"
    wait_until(lambda: len(client.workers()) == 1, 30, "the pool to shrink back to 1")
    sampler.done.set()
    sampler.join()
    assert max(sampler.sizes) == 3, sampler.sizes
    assert max(sampler.starting) <= 2, sampler.starting
    (left,) = client.workers()
    assert left.state == "idle" and left.restarts == 0
    assert "dismissed: the pool is above its target" in server.log()


def test_an_idle_pool_waits_out_the_delay_before_it_shrinks(start_server: StartServer) -> None:
    server = start_server("--min-workers", "1", "--max-workers", "2", "--scale-down-delay", "4")
    remote = compute_this(server.address)(nap)

    async def two() -> list[int]:
        return list(await asyncio.gather(remote.async_run(1.5), remote.async_run(1.5)))

    assert len(set(asyncio.run(two()))) == 2
    time.sleep(1.5)  # idle, but within the delay: both kept
    assert len(server.client().workers()) == 2
    wait_until(lambda: len(server.client().workers()) == 1, 30, "the scale-down")


ROOT = "root-token-0123456789"
ALICE = "alice-token-0123456789"


@pytest.fixture
def admin_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    """A 1-worker server with an admin token (root) and another (alice)."""
    tokens = tmp_path / "tokens"
    tokens.write_text(f"root:{ROOT}:admin\nalice:{ALICE}\n")
    tokens.chmod(0o600)
    env = {k: v for k, v in os.environ.items() if k != "POOL_TOKEN"}  # the file's tokens
    return start_server("--workers", "1", "--token-file", str(tokens), env=env, token=ROOT)


def pool_client(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", server.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        env={**os.environ, "POOL_TOKEN": ROOT},
    )


def test_limits_change_while_it_runs(admin_server: ServerProcess) -> None:
    client = admin_server.client()
    client.set_worker_limits(3, 3)
    wait_until(lambda: len(client.workers()) == 3, 60, "three workers")
    assert (client.status().min_workers, client.status().max_workers) == (3, 3)
    done = pool_client(admin_server, "workers", "--set", "1:2")
    assert done.returncode == 0, done.stderr
    assert "(limits 1..2)" in done.stdout, done.stdout
    wait_until(lambda: len(client.workers()) == 2, 30, "lowering the maximum to take effect")
    with pytest.raises(InvalidRequestError, match="1 <= min <= max"):
        client.set_worker_limits(3, 1)
    bad = pool_client(admin_server, "workers", "--set", "two")
    assert bad.returncode == 2 and "is not MIN:MAX" in bad.stderr, bad.stderr
    assert compute_this(admin_server.address, token=ROOT)(nap)(0.0).compute() > 0


def test_only_an_admin_changes_the_limits(admin_server: ServerProcess) -> None:
    alice = Client(admin_server.address, token=ALICE)
    with pytest.raises(AuthenticationError, match="needs an admin token"):
        alice.set_worker_limits(1, 4)
    admin_server.client().set_worker_limits(1, 4)
    assert alice.status().max_workers == 4


def test_workers_conflicts_with_autoscaling_limits() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "pool_server", "--workers", "2", "--max-workers", "4"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert done.returncode == 2 and "--workers N fixes the pool's size" in done.stderr
