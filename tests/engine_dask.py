"""A real Dask cluster for tests: ``dask scheduler`` on 127.0.0.1:0 and one
``dask worker`` (two nannies, each a worker process of one thread) as
subprocesses, the way the README tells a user to start them.

Subprocesses rather than ``LocalCluster``: those are the commands a cluster
runs, no worker is a child of the test process (so a worker killed by a test
is restarted by its nanny, as in production), and nothing of Dask runs in
the test process but the client. The scheduler binds port 0 and writes its
address to a scheduler file, which the fixture reads (no probing for a free
port).

``dask_server`` (module-scoped) yields ``dask://127.0.0.1:PORT``;
``dask_cluster`` the cluster itself. Where Dask is missing the tests skip,
saying what to install. At the end the worker and then the scheduler get
SIGTERM, then SIGKILL to their sessions, and the test fails if any process
of theirs is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from distribute_client import Client, PoolError

from .conftest import pid_alive

REPO = Path(__file__).resolve().parent.parent
WORKERS = 2
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
DASK = (sys.executable, "-m", "dask")


def session_members(sid: int) -> list[int]:
    """Live processes of session ``sid``."""
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError):
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
                if int(fields[3]) == sid and pid_alive(int(entry.name)):
                    members.append(int(entry.name))
    return members


@dataclass
class DaskCluster:
    scheduler: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    scheduler_address: str  # tcp://127.0.0.1:PORT
    log_dir: Path

    @property
    def address(self) -> str:
        return self.scheduler_address.replace("tcp://", "dask://", 1)

    def log(self) -> str:
        return "\n".join(
            f"--- {path.name}\n" + path.read_text(errors="replace")[-4000:]
            for path in sorted(self.log_dir.glob("*.log"))
        )

    def worker_pids(self) -> list[int]:
        """The worker processes now: the nannies' children, which
        multiprocessing spawned (not its resource tracker)."""
        return [pid for pid in session_members(self.worker.pid) if _spawned(pid)]

    def stop(self) -> list[int]:
        """Stop the worker, then the scheduler; the processes of theirs left alive."""
        for proc in (self.worker, self.scheduler):
            _stop(proc)
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while time.monotonic() < deadline:
            left = [p for proc in (self.worker, self.scheduler) for p in session_members(proc.pid)]
            if not left:
                break
            time.sleep(0.05)
        return left


def _spawned(pid: int) -> bool:
    try:
        return b"spawn_main" in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)  # anything of its session it left


def _spawn(command: list[str], log_path: Path) -> subprocess.Popen[bytes]:
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
        )


def _read_address(scheduler_file: Path, scheduler: subprocess.Popen[bytes], log: Path) -> str:
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with contextlib.suppress(OSError, ValueError):
            address: str = json.loads(scheduler_file.read_text())["address"]
            return address
        if scheduler.poll() is not None or time.monotonic() > deadline:
            _stop(scheduler)
            text = log.read_text(errors="replace")[-4000:]
            pytest.fail(f"dask scheduler did not start (exit {scheduler.poll()}):\n{text}")
        time.sleep(0.05)


def _wait_for_workers(cluster: DaskCluster) -> None:
    """Until the cluster answers GetWorkers with every worker."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with contextlib.suppress(PoolError):
            if len(Client(cluster.address).workers()) == WORKERS:
                return
        if cluster.worker.poll() is not None or time.monotonic() > deadline:
            pytest.fail(
                f"the dask workers did not start ({cluster.worker.poll()}):\n{cluster.log()}"
            )
        time.sleep(0.1)


@contextlib.contextmanager
def dask_cluster_running(log_dir: Path) -> Iterator[DaskCluster]:
    if importlib.util.find_spec("distributed") is None:
        pytest.skip("Dask is not installed: pip install -e '.[dask]' (or '.[dev]')")
    scheduler_file = log_dir / "scheduler.json"
    scheduler_log = log_dir / "scheduler.log"
    command = [*DASK, "scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard"]
    scheduler = _spawn([*command, "--scheduler-file", str(scheduler_file)], scheduler_log)
    address = _read_address(scheduler_file, scheduler, scheduler_log)
    command = [*DASK, "worker", address, "--nworkers", str(WORKERS), "--nthreads", "1"]
    command += ["--no-dashboard", "--local-directory", str(log_dir / "workers")]
    try:
        worker = _spawn(command, log_dir / "worker.log")
    except BaseException:
        _stop(scheduler)
        raise
    cluster = DaskCluster(scheduler, worker, address, log_dir)
    try:
        _wait_for_workers(cluster)
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"processes of the dask cluster outlived it: {left}"


@pytest.fixture(scope="module")
def dask_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaskCluster]:
    """A scheduler and two one-thread worker processes, for a module's tests."""
    with dask_cluster_running(tmp_path_factory.mktemp("dask")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def dask_server(dask_cluster: DaskCluster) -> str:
    """The ``dask://127.0.0.1:PORT`` address of a running cluster."""
    return dask_cluster.address
