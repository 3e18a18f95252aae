"""The journal: jobs survive the server's death, and a bad journal is refused."""

from __future__ import annotations

import os
import signal
import subprocess
import time
from collections import Counter
from pathlib import Path

import pytest

from distribute_client import Client, compute_this

from .conftest import SERVER_COMMAND, StartServer, wait_until


def record_and_square(x: int, log: str) -> int:
    """Take a while, then note the completion (one line per finished attempt)."""
    time.sleep(0.02)
    with open(log, "a") as f:
        f.write(f"{x}\n")
    return x * x


def wait_for_file(path: str) -> str:
    while not os.path.exists(path):
        time.sleep(0.01)
    return "released"


@pytest.mark.slow
def test_sigkill_loses_no_submitted_job(start_server: StartServer, tmp_path: Path) -> None:
    """200 jobs, the server SIGKILLed mid-run and restarted: every job finishes,
    and each ran to completion once per attempt it was given."""
    state = str(tmp_path / "state")
    log = tmp_path / "completions"
    first = start_server("--workers", "2", "--state-dir", state)
    remote = compute_this(first.address, retries=1)(record_and_square)
    jobs = [remote.submit(x, str(log)) for x in range(200)]
    wait_until(lambda: log.exists() and len(log.read_text().split()) >= 20, 60, "20 completions")
    assert first.stop(signal.SIGKILL) == -signal.SIGKILL

    second = start_server("--workers", "2", "--state-dir", state)
    client = Client(second.address)
    results = [client.job(job.id).result(timeout=120) for job in jobs]
    assert results == [x * x for x in range(200)]
    completions = Counter(int(line) for line in log.read_text().split())
    assert set(completions) == set(range(200))
    statuses = {job.id: client.job(job.id).status() for job in jobs}
    for x, job in enumerate(jobs):
        assert statuses[job.id].state == "DONE"
        assert completions[x] <= statuses[job.id].attempts
    # Only the jobs running at the moment of the kill may have run twice.
    assert sum(count - 1 for count in completions.values()) <= 2


def test_clean_stop_keeps_queued_jobs(start_server: StartServer, tmp_path: Path) -> None:
    """SIGTERM with jobs still queued: the next server on the same state dir runs them."""
    state = str(tmp_path / "state")
    go = tmp_path / "go"
    first = start_server("--workers", "1", "--state-dir", state, "--grace", "0.2")
    remote = compute_this(first.address, retries=1)(wait_for_file)
    jobs = [remote.submit(str(go)) for _ in range(3)]
    wait_until(lambda: jobs[0].status().state == "RUNNING", 30, "the first job to run")
    assert first.stop() == 0
    go.touch()
    second = start_server("--workers", "1", "--state-dir", state)
    client = Client(second.address)
    assert [client.job(job.id).result(timeout=30) for job in jobs] == ["released"] * 3
    # The first was interrupted by the stop and ran again: that is its second attempt.
    assert [client.job(job.id).status().attempts for job in jobs] == [2, 1, 1]


def test_running_job_without_attempts_left_fails_after_restart(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A job interrupted on its last attempt is FAILED, with the reason, after a restart."""
    state = str(tmp_path / "state")
    first = start_server("--workers", "1", "--state-dir", state)
    job = compute_this(first.address)(wait_for_file).submit(str(tmp_path / "never"))
    wait_until(lambda: job.status().state == "RUNNING", 30, "the job to run")
    first.stop(signal.SIGKILL)
    second = start_server("--workers", "1", "--state-dir", state)
    status = Client(second.address).job(job.id).status()
    assert status.state == "FAILED"
    assert "server stopped while job" in status.error and "last attempt" in status.error


def test_corrupt_journal_is_refused(tmp_path: Path) -> None:
    """An unreadable journal stops the server at start with an actionable message."""
    (tmp_path / "journal.sqlite3").write_bytes(b"this is not a database" * 100)
    out = subprocess.run(
        [*SERVER_COMMAND, "--workers", "1", "--port", "0", "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 5
    assert "cannot use the job journal" in out.stderr and "journal.id aside" in out.stderr


def test_state_dir_is_locked(start_server: StartServer, tmp_path: Path) -> None:
    """A second server on the same state dir is refused, naming the first's pid."""
    state = tmp_path / "state"
    first = start_server("--workers", "1", "--state-dir", str(state))
    out = subprocess.run(
        [*SERVER_COMMAND, "--workers", "1", "--port", "0", "--state-dir", str(state)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 5
    assert f"in use by pool-server pid {first.proc.pid}" in out.stderr
