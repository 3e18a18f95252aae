"""A real Celery cluster for tests: ``redis-server`` on a free loopback port
as broker and result store, and a ``celery -A pool_celery worker`` (prefork,
two pool processes) as a subprocess.

``celery_server`` (module-scoped) yields the ``celery://127.0.0.1:PORT/0``
address; ``celery_cluster`` the cluster itself. Where redis-server or Celery
is missing the tests skip, saying what to install. At the end the worker is
stopped (a warm shutdown, then SIGKILL to its session), and the test fails
if any process of its session is left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import os
import shutil
import signal
import socket
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
CONCURRENCY = 2
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 20.0
REDIS_TRIES = 3  # the free port may be taken between choosing and binding it


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _redis_answers(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


def _session_members(sid: int) -> list[int]:
    """Live processes of session ``sid`` (the worker and its pool processes)."""
    members = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        with contextlib.suppress(OSError):
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            if int(fields[3]) == sid and pid_alive(int(entry.name)):
                members.append(int(entry.name))
    return members


def _stop(proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
    try:
        proc.wait(STOP_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


@dataclass
class CeleryCluster:
    redis: subprocess.Popen[bytes]
    worker: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def broker(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def address(self) -> str:
        return f"celery://127.0.0.1:{self.port}/0"

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def pool_pids(self) -> list[int]:
        """The worker's pool processes now (its session, less the worker itself)."""
        return [pid for pid in _session_members(self.worker.pid) if pid != self.worker.pid]

    def stop(self) -> list[int]:
        """Stop the worker and Redis; the processes of the worker's session left alive."""
        _stop(self.worker)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)  # any pool process it left
        deadline = time.monotonic() + STOP_TIMEOUT_S
        while (left := _session_members(self.worker.pid)) and time.monotonic() < deadline:
            time.sleep(0.05)
        _stop(self.redis)
        return left


def start_redis(log_dir: Path) -> tuple[subprocess.Popen[bytes], int]:
    binary = shutil.which("redis-server")
    if binary is None:
        pytest.skip("redis-server is not installed (Debian: apt-get install redis-server)")
    for _ in range(REDIS_TRIES):
        port = free_port()
        command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        command += ["--appendonly", "no", "--loglevel", "warning", "--dir", str(log_dir)]
        # Celery publishes each whole result on its channel: no pub/sub output cap.
        command += ["--client-output-buffer-limit", "pubsub 0 0 0"]
        proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
        deadline = time.monotonic() + 10.0
        while proc.poll() is None and time.monotonic() < deadline:
            if _redis_answers(port):
                return proc, port
            time.sleep(0.05)
        _stop(proc)
    pytest.fail(f"redis-server did not start in {REDIS_TRIES} tries")


def start_worker(broker: str, log_path: Path) -> subprocess.Popen[bytes]:
    command = [sys.executable, "-m", "celery", "-A", "pool_celery", "-b", broker]
    command += ["--result-backend", broker, "worker", "--pool", "prefork"]
    command += ["--concurrency", str(CONCURRENCY), "--loglevel", "INFO"]
    command += ["--hostname", f"pool-test-{os.getpid()}@%h"]
    command += ["--without-gossip", "--without-mingle", "--without-heartbeat"]
    path = [str(REPO), *filter(None, [os.environ.get("PYTHONPATH")])]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(path)}
    with log_path.open("ab") as log:
        return subprocess.Popen(
            command, cwd=REPO, env=env, stdout=log, stderr=log, start_new_session=True
        )


def wait_for_workers(address: str, worker: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until the cluster answers GetWorkers with every pool process."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    while True:
        with contextlib.suppress(PoolError):
            if len(Client(address).workers()) == CONCURRENCY:
                return
        if worker.poll() is not None or time.monotonic() > deadline:
            log = log_path.read_text(errors="replace")[-4000:]
            pytest.fail(f"the celery worker did not start (exit {worker.poll()}):\n{log}")
        time.sleep(0.1)


@contextlib.contextmanager
def celery_cluster_running(log_dir: Path) -> Iterator[CeleryCluster]:
    if importlib.util.find_spec("celery") is None or importlib.util.find_spec("redis") is None:
        pytest.skip("Celery is not installed: pip install -e '.[celery]' (or '.[dev]')")
    redis, port = start_redis(log_dir)
    log_path = log_dir / "celery-worker.log"
    try:
        worker = start_worker(f"redis://127.0.0.1:{port}/0", log_path)
    except BaseException:
        _stop(redis)
        raise
    cluster = CeleryCluster(redis, worker, port, log_path)
    try:
        wait_for_workers(cluster.address, worker, log_path)
        yield cluster
    finally:
        left = cluster.stop()
    assert not left, f"processes of the celery worker outlived it: {left}"


@pytest.fixture(scope="module")
def celery_cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CeleryCluster]:
    """Redis and a 2-process prefork worker of pool_celery, for a module's tests."""
    with celery_cluster_running(tmp_path_factory.mktemp("celery")) as cluster:
        yield cluster


@pytest.fixture(scope="module")
def celery_server(celery_cluster: CeleryCluster) -> str:
    """The ``celery://127.0.0.1:PORT/0`` address of a running cluster."""
    return celery_cluster.address
