"""Results you can always get back (issue 15): a failed job says why in every
view, a finished job's progress is its last report, a durable map's results
come back to any process, and as_completed yields work as it finishes."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distribute_client import CallTimeoutError, Client, as_completed, compute_this, progress

from .conftest import ServerProcess
from .test_cli import cli


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


MAPPER = """
import sys, time
from distribute_client import compute_this

def tenfold(x):
    time.sleep(0.05)
    if x == 5:
        raise ValueError(f"no {x}")
    return x * 10

results = compute_this(sys.argv[1])(tenfold).map(
    range(12), durable=True, batch_id=sys.argv[2], chunk_size=4
)
print("first", next(results), flush=True)
time.sleep(600)  # killed here, its map unfinished
"""


@pytest.fixture
def killed_map(server: ServerProcess, tmp_path: Path) -> str:
    """A durable map of 12 calls (chunks of 4; call 5 raises) whose client
    process is SIGKILLed after its first value: returns the batch id."""
    script = tmp_path / "mapper.py"
    script.write_text(MAPPER)
    batch_id = f"killed-{tmp_path.name}"
    mapper = subprocess.Popen(
        [sys.executable, str(script), server.address, batch_id],
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert mapper.stdout is not None
        assert mapper.stdout.readline() == "first 0\n"
    finally:
        mapper.kill()
        mapper.wait()
        if mapper.stdout is not None:
            mapper.stdout.close()
    return batch_id


def _check_values(values: list[Any], start: int) -> None:
    for i, value in enumerate(values, start):
        if i == 5:
            assert isinstance(value, ValueError) and str(value) == "no 5"
        else:
            assert value == i * 10


def test_map_results_survive_their_client(server: ServerProcess, killed_map: str) -> None:
    """Another process gets a killed client's durable map back: by batch id
    (all 12 values in input order, the error at call 5) and by chunk job id
    (that chunk's 4), from the Python API and pool-client."""
    client = Client(server.address)
    values = client.batch(killed_map).results(timeout=60)
    assert len(values) == 12
    _check_values(values, 0)

    chunks = sorted(client.jobs(batch_id=killed_map), key=lambda s: s.item_offset)
    assert [(c.item_offset, c.items, c.state) for c in chunks] == [
        (0, 4, "DONE"),
        (4, 4, "DONE"),
        (8, 4, "DONE"),
    ]
    second = client.job(chunks[1].id)
    _check_values(second.results(), 4)
    assert client.job(chunks[2].id).result() == [80, 90, 100, 110]
    with pytest.raises(ValueError, match="no 5"):  # result() raises at its turn, as map does
        second.result()

    by_chunk = cli(server, "result", "--unpickle", chunks[1].id)
    assert by_chunk.returncode == 1, by_chunk.stderr  # a call raised
    assert by_chunk.stdout.splitlines() == ["40", "error: ValueError: no 5", "60", "70"]
    by_batch = cli(server, "--json", "result", "--unpickle", killed_map)
    entries = json.loads(by_batch.stdout)["results"]
    assert entries[5] == {"error": {"type": "ValueError", "message": "no 5"}}
    assert [e.get("value") for e in entries] == [i * 10 if i != 5 else None for i in range(12)]
    refused = cli(server, "result", killed_map)  # pickles need --unpickle
    assert refused.returncode == 2 and "--unpickle" in refused.stderr


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_as_completed_yields_in_finishing_order(server: ServerProcess) -> None:
    """as_completed yields jobs as they finish (the short sleep first), and
    raises CallTimeoutError when its timeout passes with some unfinished."""
    remote = compute_this(server.address)(nap)
    slow, fast = remote.submit(1.5), remote.submit(0.1)
    finished = [job.id for job in as_completed([slow, fast], timeout=60)]
    assert finished == [fast.id, slow.id]

    stuck = remote.submit(30.0)
    quick = remote.submit(0.0)
    seen = []
    with pytest.raises(CallTimeoutError):
        for job in as_completed([stuck, quick], timeout=2.0):
            seen.append(job.id)
    assert seen == [quick.id]
    stuck.cancel()


def test_as_completed_over_a_batch(server: ServerProcess, killed_map: str) -> None:
    """A durable map's batch yields its chunk jobs, each with its calls' results."""
    batch = Client(server.address).batch(killed_map)
    offsets = []
    for job in as_completed(batch, timeout=60):
        status = job.status()
        offsets.append(status.item_offset)
        _check_values(job.results(), status.item_offset)
    assert sorted(offsets) == [0, 4, 8]


PARTLY_READ = """
import sys, time
from distribute_client import as_completed, compute_this

@compute_this(sys.argv[1])
def nap(seconds):
    time.sleep(seconds)
    return seconds

jobs = [nap.submit(0.0), nap.submit(30.0)]
finished = as_completed(jobs)
print(next(finished).result(), flush=True)
"""


def test_a_partly_read_as_completed_does_not_hold_the_exit(
    server: ServerProcess, tmp_path: Path
) -> None:
    """The script ends with one job still running and its iterator open:
    the interpreter exits as usual, instead of waiting on the iterator's
    cleanup forever."""
    script = tmp_path / "partly.py"
    script.write_text(PARTLY_READ)
    done = subprocess.run(
        [sys.executable, str(script), server.address], capture_output=True, text=True, timeout=25
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines() == ["0.0"]
    for job in server.client().jobs(state="RUNNING"):
        server.client().job(job.id).cancel()
