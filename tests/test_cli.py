"""pool-client end to end: JSON calls submitted from the shell, on a real server."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import ServerProcess, StartServer

SHELL_JOBS = """
import time
from distribute_client import progress

def steps(n, pause=0.05):
    for i in range(n):
        progress((i + 1) / n, f"step {i + 1} of {n}")
        time.sleep(pause)
    return {"steps": n}

def fail():
    raise ValueError("shell job failed")
"""


@pytest.fixture
def cli_server(start_server: StartServer, tmp_path: Path) -> ServerProcess:
    """A server whose workers can import ``shell_jobs`` (from their working dir)."""
    (tmp_path / "shell_jobs.py").write_text(SHELL_JOBS)
    return start_server("--workers", "2", cwd=tmp_path)


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", server.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_submit_watch_result(cli_server: ServerProcess) -> None:
    """submit prints an id; watch follows progress to DONE; result prints the value."""
    submitted = cli(cli_server, "submit", "shell_jobs:steps", "4")
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.strip()
    watched = cli(cli_server, "--json", "watch", job_id)
    assert watched.returncode == 0
    updates = [json.loads(line) for line in watched.stdout.splitlines()]
    assert updates[-1]["state"] == "DONE"
    assert {"step 4 of 4"} <= {u["message"] for u in updates}
    result = cli(cli_server, "result", job_id)
    assert (result.returncode, result.stdout) == (0, '{"steps": 4}\n')
    status = cli(cli_server, "status", job_id)
    assert "DONE" in status.stdout and "shell_jobs:steps" in status.stdout


def test_exit_codes_say_what_happened(cli_server: ServerProcess) -> None:
    """Failed jobs exit 1, cancelled 4, unknown ids 5, a missing server 6, bad usage 2."""
    failing = cli(cli_server, "submit", "shell_jobs:fail").stdout.strip()
    failed = cli(cli_server, "result", failing)
    assert failed.returncode == 1 and "shell job failed" in failed.stderr
    slow = cli(cli_server, "submit", "shell_jobs:steps", "1000", "--kwargs", '{"pause": 1}')
    job_id = slow.stdout.strip()
    cancelled = cli(cli_server, "cancel", job_id)
    assert cancelled.returncode == 0 and "CANCELLED" in cancelled.stdout
    assert cli(cli_server, "result", job_id).returncode == 4
    assert cli(cli_server, "status", "jnope").returncode == 5
    assert cli(cli_server, "submit").returncode == 2
    assert cli(cli_server, "submit", "shell_jobs:fail", "--kwargs", "{nope").returncode == 2
    assert cli(cli_server, "jobs", "--state", "BOGUS").returncode == 2
    assert cli(cli_server, "status", job_id, "--json").returncode == 0  # options after the command
    missing = subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", "127.0.0.1:1", "workers"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert missing.returncode == 6 and "no pool-server answered" in missing.stderr


def test_jobs_and_workers_listings(cli_server: ServerProcess) -> None:
    """jobs lists what was submitted; workers lists every slot (JSON for scripts)."""
    job_id = cli(cli_server, "submit", "shell_jobs:steps", "1").stdout.strip()
    assert cli(cli_server, "result", job_id).returncode == 0
    listed = json.loads(cli(cli_server, "--json", "jobs", "--state", "DONE").stdout)
    assert job_id in [job["id"] for job in listed]
    workers = json.loads(cli(cli_server, "--json", "workers").stdout)
    assert [w["id"] for w in workers["workers"]] == [1, 2]
