"""The ``dask://`` backend's own behaviour, against a real Dask cluster (a
scheduler and two one-thread worker processes under their nannies): what the
semantic table (``test_backend_semantics``) does not cover because it is
Dask's alone, or a server's that maps onto Dask in its own way.
"""

from __future__ import annotations

import os
import signal
import socket
import threading
import time
from pathlib import Path

import pytest

from distribute_client import (
    Client,
    JobNotFoundError,
    JobTimedOutError,
    ServerUnavailableError,
    WorkerCrashedError,
    compute_this,
)
from distribute_client.backends import dask as dask_backend

from .conftest import wait_until
from .engine_dask import WORKERS, DaskCluster, dask_cluster, dask_cluster_running, dask_server

__all__ = ["dask_cluster", "dask_server"]  # fixtures


class Flaky(Exception):
    pass


def add(a: int, b: int = 0) -> int:
    return a + b


def whoami() -> int:
    return os.getpid()


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def die_once(marker: str) -> str:
    """Kill the worker on the first attempt; answer on the next."""
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os.kill(os.getpid(), signal.SIGKILL)
    return "survived"


def flaky_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text("raised once")
        raise Flaky("first attempt")
    return "second attempt"


def wait_for(release: str) -> str:
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.02)
    return "released"


def all_back(cluster: DaskCluster) -> None:
    """Wait for the nannies to have replaced any worker a test killed."""
    wait_until(
        lambda: len(Client(cluster.address).workers()) == WORKERS, 30, "the workers to be back"
    )


def closed_port() -> int:
    """A loopback port nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
    return port


def test_an_unreachable_scheduler_is_unavailable_at_once_naming_it() -> None:
    """No scheduler: ServerUnavailableError naming the address, within the
    connect timeout, for a call, a submit and a listing alike."""
    pytest.importorskip("distributed", reason="Dask is not installed: pip install -e '.[dask]'")
    address = f"dask://127.0.0.1:{closed_port()}"
    remote = compute_this(address)(add)
    attempts = [lambda: remote(1).compute(), lambda: remote.submit(1), Client(address).workers]
    for attempt in attempts:
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match=address) as raised:
            attempt()
        assert time.monotonic() - start < dask_backend.CONNECT_TIMEOUT_S + 3
        assert "dask scheduler" in str(raised.value)


def test_a_scheduler_that_goes_away_fails_the_calls_on_it(tmp_path: Path) -> None:
    """The scheduler killed mid-call: the call and the job in flight fail with
    ServerUnavailableError at once, and so do later calls."""
    with dask_cluster_running(tmp_path) as cluster:
        remote = compute_this(cluster.address)(wait_for)
        release = str(tmp_path / "never")
        job = remote.submit(release)
        wait_until(lambda: job.status().state == "RUNNING", 30, "the job to start")
        threading.Timer(0.5, cluster.scheduler.send_signal, (signal.SIGKILL,)).start()
        start = time.monotonic()
        with pytest.raises(ServerUnavailableError, match="scheduler"):
            remote(release).compute()
        with pytest.raises(ServerUnavailableError, match="scheduler"):
            job.result(timeout=30)
        assert time.monotonic() - start < 10
        with pytest.raises(ServerUnavailableError):
            compute_this(cluster.address)(add)(1).compute()
        os.killpg(cluster.worker.pid, signal.SIGKILL)  # no scheduler to leave gracefully


def test_dask_and_tcp_addresses_name_the_same_scheduler(dask_cluster: DaskCluster) -> None:
    """``tcp://`` (Dask's own form) is the same backend as ``dask://``."""
    tcp = dask_cluster.scheduler_address
    assert compute_this(tcp)(add)(2, 3).compute() == 5
    from distribute_client import backends

    assert backends.backend_for(tcp) is backends.backend_for(dask_cluster.address)
    with pytest.raises(ValueError, match="dask://host:port"):
        compute_this("dask://no-port")(add)(1).compute()


def test_workers_are_one_row_per_dask_worker_with_its_pid(dask_cluster: DaskCluster) -> None:
    """GetWorkers: each Dask worker process once, its real pid, idle, and
    busy while it runs a call; a job's worker_id is its row's id."""
    all_back(dask_cluster)
    rows = Client(dask_cluster.address).workers()
    assert sorted(row.pid for row in rows) == sorted(dask_cluster.worker_pids())
    assert len({row.id for row in rows}) == WORKERS
    assert {row.state for row in rows} == {"idle"}

    release = dask_cluster.log_dir / "release-workers"
    job = compute_this(dask_cluster.address)(wait_for).submit(str(release))
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to start")
    rows = Client(dask_cluster.address).workers()
    busy = [row for row in rows if row.state == "busy"]
    assert [row.id for row in busy] == [job.status().worker_id]
    release.write_text("go")
    assert job.result(timeout=30) == "released"
    pid = compute_this(dask_cluster.address)(whoami)().compute()
    assert pid in dask_cluster.worker_pids()


def test_a_worker_killed_mid_call_is_a_crash(dask_cluster: DaskCluster) -> None:
    """A worker that dies running a call without retries: WorkerCrashedError
    naming the worker and its pid; the cluster answers the next call."""
    all_back(dask_cluster)
    with pytest.raises(WorkerCrashedError, match=r"died while running") as raised:
        compute_this(dask_cluster.address)(die)().compute()
    assert raised.value.worker_id
    all_back(dask_cluster)
    assert compute_this(dask_cluster.address)(add)(1, 1).compute() == 2


def test_a_crash_within_retries_runs_again(dask_cluster: DaskCluster, tmp_path: Path) -> None:
    """With retries, Dask's rerun of a call whose worker died is its next
    attempt: the call answers, and the job counts two attempts."""
    all_back(dask_cluster)
    remote = compute_this(dask_cluster.address, retries=1)(die_once)
    assert remote(str(tmp_path / "call")).compute() == "survived"
    all_back(dask_cluster)
    job = remote.submit(str(tmp_path / "job"))
    assert job.result(timeout=60) == "survived"
    assert (job.status().state, job.status().attempts) == ("DONE", 2)
    all_back(dask_cluster)


def test_retry_on_sends_the_call_again(dask_server: str, tmp_path: Path) -> None:
    """A ``retry_on`` exception within ``retries`` makes a new task of the call."""
    remote = compute_this(dask_server, retries=1, retry_on=[Flaky])(flaky_once)
    assert remote(str(tmp_path / "call")).compute() == "second attempt"
    job = remote.submit(str(tmp_path / "job"))
    assert job.result(timeout=30) == "second attempt"
    assert job.status().attempts == 2


def test_jobs_are_listed_and_found_in_this_process(dask_server: str) -> None:
    """Jobs live in this process's memory: listed newest first, found by id
    from another Client, in batches; an unknown id says Dask keeps none."""
    remote = compute_this(dask_server)(add)
    jobs = [remote.submit(i, 1) for i in range(3)]
    assert [job.result(timeout=30) for job in jobs] == [1, 2, 3]
    listed = [status.id for status in Client(dask_server).jobs(limit=3)]
    assert listed == [job.id for job in reversed(jobs)]
    again = Client(dask_server).job(jobs[0].id)
    assert (again.status().state, again.result()) == ("DONE", 1)
    assert list(remote.map(range(10), range(10), batch_id="dask-batch")) == [
        2 * x for x in range(10)
    ]
    batch = Client(dask_server).batch("dask-batch")
    assert (batch.total, batch.percent_done) == (10, 100.0)
    with pytest.raises(JobNotFoundError, match="Dask has no durable jobs"):
        Client(dask_server).job("j-never").status()


def test_a_job_past_its_time_limit_times_out(dask_server: str, tmp_path: Path) -> None:
    """A job's time limit: TIMED_OUT and JobTimedOutError at the limit,
    saying the task runs on (Dask cannot stop it)."""
    remote = compute_this(dask_server, timeout=0.5, durable=True)(wait_for)
    release = tmp_path / "release"
    job = remote.submit(str(release))
    with pytest.raises(JobTimedOutError, match="cannot stop a running task"):
        job.result(timeout=30)
    assert job.status().state == "TIMED_OUT"
    release.write_text("go")  # let the worker go on to the next test's calls
