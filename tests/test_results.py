"""Results you can always get back (issue 15): a failed job says why in every
view, a finished job's progress is its last report, a durable map's results
come back to any process, and as_completed yields work as it finishes."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from distribute_client import Client, compute_this, progress

from .conftest import ServerProcess


class Refused(Exception):
    pass


def refuse(x: int) -> int:
    raise Refused(f"no {x}")


def report_and_return() -> str:
    """Three reports in well under the 50 ms throttle, then return at once."""
    progress(0.1, "first")
    progress(0.5, "second")
    progress(0.9, "last")
    return "ok"


def cli(server: ServerProcess, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", server.address, *args],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_final_progress_report_is_kept(server: ServerProcess) -> None:
    """A function that reports and returns within the throttle ends with its
    last report: it is flushed before the result, not dropped."""
    job = compute_this(server.address)(report_and_return).submit()
    assert job.result(timeout=30) == "ok"
    status = job.status()
    assert (status.state, status.progress, status.message) == ("DONE", 0.9, "last")


def test_failed_job_says_why_in_every_view(server: ServerProcess) -> None:
    """A job whose function raised shows the exception's type and message in
    status(), in jobs(), and in pool-client status, jobs and --json."""
    job = compute_this(server.address)(refuse).submit(3)
    with pytest.raises(Refused, match="no 3"):
        job.result(timeout=30)
    expected = f"{__name__}.Refused: no 3"
    assert job.status().error == expected
    listed = {s.id: s for s in Client(server.address).jobs(state="FAILED")}
    assert listed[job.id].error == expected

    shown = cli(server, "status", job.id)
    assert shown.returncode == 0 and f"error: {expected}" in shown.stdout, shown
    as_json = json.loads(cli(server, "--json", "status", job.id).stdout)
    assert (as_json["state"], as_json["error"]) == ("FAILED", expected)
    listing = cli(server, "jobs", "--state", "FAILED")
    line = next(line for line in listing.stdout.splitlines() if line.startswith(job.id))
    assert f"error: {expected}" in line
    listed_json = json.loads(cli(server, "--json", "jobs", "--state", "FAILED").stdout)
    assert {j["id"]: j["error"] for j in listed_json}[job.id] == expected
