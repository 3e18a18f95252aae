"""The journal under faults: a disk that fills up, a journal emptied while
the server was stopped, errors reading it back."""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest

from distribute_client import Client, Job, JournalUnavailableError, compute_this

from .conftest import SERVER_COMMAND, StartServer, wait_until

TMPFS_BYTES = 8 * 1024 * 1024
FILLER_BYTES = 5 * 1024 * 1024  # deleted to make room again: more than all the outcomes need
ARGUMENT_BYTES = 96 * 1024  # each job's payload: a few dozen fill the rest of the disk
RESULT_BYTES = 48 * 1024  # each job's outcome: the DONE changes need room too


def gated_echo(index: int, ballast: bytes, gate: str, runs: str) -> bytes:
    """Wait for the gate file, note the run, then answer with a large value."""
    while not os.path.exists(gate):
        time.sleep(0.01)
    with open(runs, "a") as f:
        f.write(f"{index}\n")
    return bytes([index % 256]) * RESULT_BYTES


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """An 8 MiB tmpfs, unmounted after the test (needs root, as CI has)."""
    mount_point = tmp_path / "small-disk"
    mount_point.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={TMPFS_BYTES}", "tmpfs", str(mount_point)],
        capture_output=True,
        text=True,
    )
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here (needs root): {mounted.stderr.strip()}")
    try:
        yield mount_point
    finally:
        subprocess.run(["umount", "-l", str(mount_point)], check=True)


@pytest.mark.slow
def test_full_disk_loses_nothing_accepted(
    start_server: StartServer, small_disk: Path, tmp_path: Path
) -> None:
    """The state dir's disk fills up while jobs wait and run: submits are
        refused with a message that says so; every accepted job's result() still
        returns its value (from memory); nothing runs twice; and once space is
        freed, a restart finds every accepted job DONE with its result. Calls (Run)
    work throughout."""
    state = small_disk / "state"
    filler = small_disk / "filler"
    filler.write_bytes(bytes(FILLER_BYTES))
    gate, runs = tmp_path / "gate", tmp_path / "runs"
    first = start_server("--workers", "2", "--state-dir", str(state))
    remote = compute_this(first.address)(gated_echo)
    accepted: list[Job[bytes]] = []
    with pytest.raises(JournalUnavailableError, match="full") as refused:
        for index in range(1000):
            accepted.append(remote.submit(index, os.urandom(ARGUMENT_BYTES), str(gate), str(runs)))
    assert "Free space" in str(refused.value) and "move it aside" not in str(refused.value)
    assert len(accepted) >= 5, "the disk filled up before the test got going"

    gate.touch()
    for index, job in enumerate(accepted):
        assert job.result(timeout=60) == bytes([index % 256]) * RESULT_BYTES
    assert "kept in memory and retried" in first.log(), "no journal write ever failed"
    assert first.client().job(accepted[-1].id).status().state == "DONE"
    # Calls need no journal: they keep working while the disk is still full.
    assert [compute_this(first.address)(wait_a_moment)().compute() for _ in range(3)] == [
        "done"
    ] * 3

    filler.unlink()
    wait_until(lambda: "takes writes again" in first.log(), 30, "the journal to catch up")
    assert first.stop() == 0
    second = start_server("--workers", "2", "--state-dir", str(state))
    client = Client(second.address)
    for index, job in enumerate(accepted):
        assert client.job(job.id).status().state == "DONE"
        assert client.job(job.id).result(timeout=10) == bytes([index % 256]) * RESULT_BYTES
    counts = Counter(int(line) for line in runs.read_text().split())
    assert counts == Counter(range(len(accepted))), "a job ran twice, or not at all"


def wait_a_moment() -> str:
    return "done"


def test_emptied_journal_is_noticed(start_server: StartServer, tmp_path: Path) -> None:
    """A journal truncated to 0 bytes while the server was stopped is refused
    at start (exit 5, one line saying what happened), not taken for a new
    one; deleting journal.id, as the message says, accepts the loss."""
    state = tmp_path / "state"
    first = start_server("--workers", "1", "--state-dir", str(state))
    job = compute_this(first.address)(wait_a_moment).submit()
    assert job.result(timeout=30) == "done"
    assert first.stop() == 0
    for suffix in ("", "-wal", "-shm"):
        path = state / f"journal.sqlite3{suffix}"
        if path.exists():
            path.write_bytes(b"")

    command = [*SERVER_COMMAND, "--workers", "1", "--port", "0", "--state-dir", str(state)]
    refused = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 5
    errors = [line for line in refused.stderr.splitlines() if "ERROR" in line]
    assert len(errors) == 1 and "emptied" in errors[0] and "journal.id" in errors[0]

    (state / "journal.id").unlink()
    second = start_server("--workers", "1", "--state-dir", str(state))
    wait_until(lambda: second.client().status().queue_length == 0, 10, "an empty queue")
    with pytest.raises(LookupError):
        second.client().job(job.id).status()
