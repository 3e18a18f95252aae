"""The Celery backend (``celery://``) against a real Redis and a real
``celery -A pool_celery`` worker (``tests/engine_celery.py``): what is
Celery's own, beside the semantics every backend shares
(``test_backend_semantics.py``).
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distribute_client import (
    Client,
    JobCancelledError,
    JobNotFoundError,
    JobTimedOutError,
    ServerUnavailableError,
    WorkerCrashedError,
    compute_this,
    progress,
)
from distribute_client.backends import celery as celery_backend

from .conftest import pid_alive, wait_until
from .engine_celery import CeleryCluster, celery_cluster, celery_server, free_port

__all__ = ["celery_cluster", "celery_server"]  # fixtures, used by name


class Flaky(Exception):
    pass


def add(a: int, b: int = 0) -> int:
    return a + b


def sleep_then_mark(seconds: float, marker: str) -> str:
    time.sleep(seconds)
    Path(marker).write_text("ran to the end")
    return "finished"


def report_steps(release: str) -> str:
    for step in range(1, 5):
        progress(step / 4, f"step {step}")
    deadline = time.monotonic() + 60
    while not os.path.exists(release) and time.monotonic() < deadline:
        time.sleep(0.05)
    return "released"


def fail_once(marker: str) -> str:
    if not os.path.exists(marker):
        Path(marker).write_text("failed once")
        raise Flaky("the first attempt fails")
    return "second time lucky"


def die_once(marker: str) -> int:
    if not os.path.exists(marker):
        Path(marker).write_text("died once")
        os._exit(3)
    return os.getpid()


def join(a: bytes, b: bytes) -> bytes:
    return a + b


def die() -> None:
    os._exit(3)


@pytest.mark.parametrize(
    ("url", "problem"),
    [
        ("celery://", "is not celery://"),
        ("celery://host:port/0", "bad port"),
        ("celery://host:6379/zero", "database is a number"),
        ("celery://host:6379/0?results=redis://h", "unknown option 'results'"),
        ("celery://host:6379/0?result=amqp://h", "result must be a redis://"),
        ("celery://host:6379/0?queue=a&queue=b", "'queue' twice"),
    ],
)
def test_a_bad_address_is_refused_when_the_function_is_made(url: str, problem: str) -> None:
    with pytest.raises(ValueError, match=problem):
        compute_this(url)(add)


def test_an_address_names_the_broker_the_result_store_and_the_queue() -> None:
    parse = celery_backend.CeleryAddress.parse
    assert parse("celery://:secret@h:6380/2") == celery_backend.CeleryAddress(
        "redis://:secret@h:6380/2", "redis://:secret@h:6380/2", "celery"
    )
    assert parse("celery://h?result=rediss://h2:6379/1&queue=big") == celery_backend.CeleryAddress(
        "redis://h", "rediss://h2:6379/1", "big"
    )
    assert "secret" not in celery_backend._hidden("redis://:secret@h:6380/2")


def test_importing_the_client_imports_no_celery() -> None:
    code = "import distribute_client, sys; assert 'celery' not in sys.modules; "
    code += "distribute_client.compute_this('celery://h:6379/0')(len)"
    code += "; assert 'celery' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


def test_a_broker_that_is_down_is_server_unavailable_at_once() -> None:
    address = f"celery://127.0.0.1:{free_port()}/0"
    started = time.monotonic()
    with pytest.raises(ServerUnavailableError, match=r"127\.0\.0\.1.*celery -A pool_celery"):
        compute_this(address)(add)(1).compute()
    with pytest.raises(ServerUnavailableError):
        compute_this(address)(add).submit(1)
    with pytest.raises(ServerUnavailableError):
        Client(address).workers()
    assert time.monotonic() - started < 15.0


def test_get_workers_has_a_row_per_pool_process(celery_cluster: CeleryCluster) -> None:
    client = Client(celery_cluster.address)
    wait_until(lambda: {w.state for w in client.workers()} == {"idle"}, 30, "idle workers")
    workers = client.workers()
    assert sorted(w.pid for w in workers) == sorted(celery_cluster.pool_pids())
    assert len({w.id for w in workers}) == 2
    assert client.status().queue_length == 0


def test_a_running_job_shows_its_worker_busy(celery_cluster: CeleryCluster, tmp_path: Path) -> None:
    client = Client(celery_cluster.address)
    release = tmp_path / "release"
    job = compute_this(celery_cluster.address)(report_steps).submit(str(release))
    wait_until(lambda: job.status().progress == 1.0, 30, "the job's last progress report")
    status = job.status()
    assert (status.state, status.message, status.attempts) == ("RUNNING", "step 4", 1)
    busy = [w for w in client.workers() if w.state == "busy"]
    assert [w.id for w in busy] == [status.worker_id]
    release.write_text("go")
    assert job.result(timeout=30) == "released"
    assert [j.id for j in client.jobs()][:1] == [job.id]


def test_the_hard_time_limit_stops_the_work(celery_server: str, tmp_path: Path) -> None:
    marker = tmp_path / "marker"
    job = compute_this(celery_server, timeout=1.0)(sleep_then_mark).submit(2.0, str(marker))
    with pytest.raises(JobTimedOutError, match="time limit"):
        job.result(timeout=30)
    assert job.status().state == "TIMED_OUT"
    time.sleep(2.0)
    assert not marker.exists(), "the call ran on past Celery's time limit"


def test_cancel_kills_the_process_running_the_job(
    celery_cluster: CeleryCluster, tmp_path: Path
) -> None:
    marker = tmp_path / "marker"
    job = compute_this(celery_cluster.address)(sleep_then_mark).submit(3.0, str(marker))
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to start")
    (pid,) = [w.pid for w in Client(celery_cluster.address).workers() if w.state == "busy"]
    assert job.cancel().state == "CANCELLED"
    wait_until(lambda: not pid_alive(pid), 10, f"pool process {pid} to be killed")
    with pytest.raises(JobCancelledError):
        job.result(timeout=10)
    time.sleep(3.0)
    assert not marker.exists()


def test_a_queued_job_that_is_cancelled_never_runs(celery_server: str, tmp_path: Path) -> None:
    markers = [tmp_path / f"marker{i}" for i in range(3)]
    remote = compute_this(celery_server)(sleep_then_mark)
    jobs = [remote.submit(1.5, str(marker)) for marker in markers]  # two run, one waits
    assert jobs[2].cancel().state == "CANCELLED"
    assert [job.result(timeout=30) for job in jobs[:2]] == ["finished"] * 2
    time.sleep(1.0)
    assert not markers[2].exists()


def test_a_job_is_found_by_a_client_that_did_not_submit_it(celery_server: str) -> None:
    job = compute_this(celery_server)(add).submit(2, 3)
    assert job.result(timeout=30) == 5
    other = Client(f"{celery_server}?queue=celery")  # another backend, with no records
    assert other.job(job.id).result(timeout=30) == 5
    assert other.job(job.id).status().state == "DONE"
    with pytest.raises(JobNotFoundError, match="still queued"):
        other.job("no-such-job").status()


def test_retry_on_is_celery_retrying_the_task(celery_server: str, tmp_path: Path) -> None:
    remote = compute_this(celery_server, retries=1, retry_on=[Flaky])(fail_once)
    assert remote(str(tmp_path / "marker")).compute() == "second time lucky"


def test_a_pool_process_that_dies_fails_the_call_or_is_tried_again(
    celery_server: str, tmp_path: Path
) -> None:
    with pytest.raises(WorkerCrashedError, match="died"):
        compute_this(celery_server)(die)().compute()
    pid = compute_this(celery_server, retries=1)(die_once)(str(tmp_path / "marker")).compute()
    assert pid_alive(pid)


def test_a_large_payload_and_outcome_travel(celery_server: str) -> None:
    data = os.urandom(8 * 1024 * 1024)
    assert compute_this(celery_server)(join)(data, b"!").compute() == data + b"!"
