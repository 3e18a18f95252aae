"""Hostile input against real servers (issue 9, "Hostile input" and "Who
sees what"): every oversized or absurd field gets a clear status that quotes
only a short prefix of it, crash retries back off, queued payloads are
bounded in bytes, the journal's files are private, and each caller sees
only its own jobs.

Most cases speak raw gRPC (``pool_proto``) so that the server, not the
client library's own checks, is what answers; payloads are JSON calls of
standard-library functions, so no pickle is involved.
"""

from __future__ import annotations

import json
import math
import os
import sqlite3
import stat
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest

from distribute_client import (
    CallTimeoutError,
    Client,
    InvalidRequestError,
    QueueFullError,
    compute_this,
)
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_wire.limits import (
    ECHO_CHARS,
    GRPC_MESSAGE_OPTIONS,
    MAX_BATCH_ID_CHARS,
    MAX_ID_CHARS,
    MAX_ITEMS_PER_JOB,
    MAX_NAME_CHARS,
    MAX_RETRIES,
)

from .conftest import ServerProcess, StartServer, wait_until

MEGABYTE_ID = "j" * (1 << 20)
# An error's message stays short whatever was sent: a prefix and a count.
MAX_DETAILS_CHARS = 2 * ECHO_CHARS + 200


def json_call(function: str, *args: Any) -> bytes:
    return json.dumps({"function": function, "args": list(args)}).encode()


ADD = json_call("operator:add", 1, 2)
SLEEP = json_call("time:sleep", 60)


class Raw:
    """The raw Pool stub of one server, calling with one token."""

    def __init__(self, address: str, token: str | None = None) -> None:
        self._channel = grpc.insecure_channel(address, options=GRPC_MESSAGE_OPTIONS)
        self.stub = pool_pb2_grpc.PoolStub(self._channel)
        secret = token if token is not None else os.environ["POOL_TOKEN"]
        self.metadata = (("authorization", f"Bearer {secret}"),)

    def __call__(self, method: str, request: Any, timeout: float = 30) -> Any:
        call = getattr(self.stub, method)
        if method == "WatchJob":
            return list(call(request, timeout=timeout, metadata=self.metadata))
        return call(request, timeout=timeout, metadata=self.metadata)

    def refused(self, method: str, request: Any, code: grpc.StatusCode) -> str:
        """Call, expect ``code``, and return its details (checked to be short)."""
        with pytest.raises(grpc.RpcError) as caught:
            self(method, request)
        error: grpc.Call = caught.value
        assert error.code() == code, (error.code(), error.details())
        details: str = error.details()
        assert len(details) < MAX_DETAILS_CHARS, details[:300]
        return details

    def close(self) -> None:
        self._channel.close()


@pytest.fixture
def raw(server: ServerProcess) -> Iterator[Raw]:
    stub = Raw(server.address)
    yield stub
    stub.close()


INVALID = grpc.StatusCode.INVALID_ARGUMENT

LONG_STRINGS: list[tuple[str, Any, str]] = [
    ("GetJob", pool_pb2.JobRef(job_id=MEGABYTE_ID), "job_id"),
    ("WatchJob", pool_pb2.JobRef(job_id=MEGABYTE_ID), "job_id"),
    ("GetResult", pool_pb2.JobRef(job_id=MEGABYTE_ID), "job_id"),
    ("CancelJob", pool_pb2.JobRef(job_id=MEGABYTE_ID), "job_id"),
    ("GetJob", pool_pb2.JobRef(job_id="j" * (MAX_ID_CHARS + 1)), "job_id"),
    ("GetBatch", pool_pb2.BatchRef(batch_id=MEGABYTE_ID), "batch_id"),
    ("ListJobs", pool_pb2.ListJobsRequest(batch_id=MEGABYTE_ID), "batch_id"),
    ("Submit", pool_pb2.SubmitRequest(payloads=[ADD], batch_id=MEGABYTE_ID), "batch_id"),
    (
        "Submit",
        pool_pb2.SubmitRequest(payloads=[ADD] * 64, name="n" * (1 << 20), batch_id="b"),
        "name",
    ),
    ("Submit", pool_pb2.SubmitRequest(payloads=[ADD], name="n" * (MAX_NAME_CHARS + 1)), "name"),
]


@pytest.mark.parametrize(("method", "request_", "field"), LONG_STRINGS)
def test_long_strings_are_refused_with_a_short_echo(
    raw: Raw, method: str, request_: Any, field: str
) -> None:
    """An id, batch id or name over its limit is INVALID_ARGUMENT, naming the
    field and its limit and quoting at most a short prefix (a 1 MB id once came
    back as a 1 MB header, which the client reported as RESOURCE_EXHAUSTED)."""
    details = raw.refused(method, request_, INVALID)
    assert f"{field} is at most" in details and "characters" in details


def test_strings_at_their_limits_are_accepted(raw: Raw) -> None:
    """The limits are inclusive: a name of 1,024 and a batch id of 256 characters pass."""
    batch_id = "b" * MAX_BATCH_ID_CHARS
    request = pool_pb2.SubmitRequest(payloads=[ADD], name="n" * MAX_NAME_CHARS, batch_id=batch_id)
    (job_id,) = raw("Submit", request).job_ids
    assert raw("GetResult", pool_pb2.JobRef(job_id=job_id)).status.state == pool_pb2.JOB_STATE_DONE
    assert raw("GetBatch", pool_pb2.BatchRef(batch_id=batch_id)).total == 1
    not_found = raw.refused(
        "GetJob", pool_pb2.JobRef(job_id="x" * MAX_ID_CHARS), grpc.StatusCode.NOT_FOUND
    )
    assert "…" in not_found


def test_the_client_reports_a_long_id_as_invalid(server: ServerProcess) -> None:
    """Through distribute_client, a 16 KB id is an InvalidRequestError, not the
    misleading "payloads are limited to 1 GiB"."""
    with pytest.raises(InvalidRequestError, match="at most 256") as caught:
        server.client().job("j" * 16_384).status()
    assert "limited to" not in str(caught.value)


@pytest.mark.parametrize("retries", [MAX_RETRIES + 1, 2**32 - 1])
def test_retries_are_capped(raw: Raw, retries: int) -> None:
    """Run and Submit refuse more than 100 retries and say so; 2**32-1 once
    overflowed max_attempts and broke every listing."""
    for method, request in (
        ("Run", pool_pb2.RunRequest(payload=ADD, retries=retries)),
        ("Submit", pool_pb2.SubmitRequest(payloads=[ADD], retries=retries)),
    ):
        details = raw.refused(method, request, INVALID)
        assert f"retries is at most {MAX_RETRIES}" in details
    (job_id,) = raw("Submit", pool_pb2.SubmitRequest(payloads=[ADD], retries=MAX_RETRIES)).job_ids
    assert raw("GetJob", pool_pb2.JobRef(job_id=job_id)).max_attempts == MAX_RETRIES + 1
    assert raw("ListJobs", pool_pb2.ListJobsRequest(limit=5)).jobs


@pytest.mark.parametrize(
    "counts",
    [[2**32 - 1], [MAX_ITEMS_PER_JOB + 1], [4_000_000_000, 4_000_000_000], [0, 1], [1]],
)
def test_absurd_item_counts_are_refused(raw: Raw, counts: list[int]) -> None:
    """Each payload's count is 1 to 2**31-1, one per payload (two payloads here)."""
    request = pool_pb2.SubmitRequest(payloads=[ADD, ADD], item_counts=counts)
    details = raw.refused("Submit", request, INVALID)
    assert "item_counts" in details


@pytest.mark.parametrize("offsets", [[2**63, 0], [2**64 - 1, 1], [0], [0, 1, 2]])
def test_absurd_item_offsets_are_refused(raw: Raw, offsets: list[int]) -> None:
    """Each payload's offset fits the journal (below 2**63), one per payload."""
    request = pool_pb2.SubmitRequest(payloads=[ADD, ADD], item_offsets=offsets)
    details = raw.refused("Submit", request, INVALID)
    assert "item_offsets" in details


def test_a_batch_can_count_past_32_bits(raw: Raw) -> None:
    """Counts at the limit, submitted three times to one batch, add up to more
    than a uint32 holds, and GetBatch still answers (its totals are 64-bit)."""
    batch_id = f"big-{time.monotonic_ns()}"
    request = pool_pb2.SubmitRequest(
        payloads=[ADD], item_counts=[MAX_ITEMS_PER_JOB], batch_id=batch_id
    )
    job_ids = [raw("Submit", request).job_ids[0] for _ in range(3)]
    for job_id in job_ids:
        raw("GetResult", pool_pb2.JobRef(job_id=job_id))
    batch = raw("GetBatch", pool_pb2.BatchRef(batch_id=batch_id))
    assert batch.total == 3 * MAX_ITEMS_PER_JOB > 2**32
    assert batch.states["DONE"] == batch.total and batch.percent_done == 100.0


@pytest.mark.parametrize("seconds", [math.nan, math.inf, -math.inf, -1.0, 1e300])
def test_odd_time_limits_are_refused(raw: Raw, seconds: float) -> None:
    """NaN (which once killed the job's worker with an INTERNAL error),
    infinities, negative and absurdly long limits are refused."""
    request = pool_pb2.SubmitRequest(payloads=[ADD], time_limit_s=seconds)
    assert "time_limit_s" in raw.refused("Submit", request, INVALID)


def test_list_limit_is_clamped_and_unknown_states_refused(raw: Raw) -> None:
    """ListJobs(limit=2**32-1) answers (at most 10,000 jobs); a state number
    this server does not know is INVALID_ARGUMENT, not UNKNOWN."""
    raw("Submit", pool_pb2.SubmitRequest(payloads=[ADD]))
    assert raw("ListJobs", pool_pb2.ListJobsRequest(limit=2**32 - 1)).jobs
    request = pool_pb2.ListJobsRequest(state=99)  # type: ignore[arg-type]
    assert "state 99" in raw.refused("ListJobs", request, INVALID)


def always_crash() -> None:
    os._exit(3)


def total_restarts(client: Client) -> int:
    return sum(w.restarts for w in client.workers())


def test_crash_retries_back_off(start_server: StartServer) -> None:
    """A function that always crashes, with retries=100, is retried after
    0.1 s, 0.2 s, 0.4 s ... (not hundreds of times a second), and while it
    waits its one worker slot serves other calls at once."""
    server = start_server("--workers", "1")
    client = server.client()
    job = compute_this(server.address, retries=MAX_RETRIES)(always_crash).submit()
    wait_until(lambda: total_restarts(client) >= 4, 30, "four crashes")  # 0.1+0.2+0.4 s
    started, before = time.monotonic(), total_restarts(client)
    assert compute_this(server.address, timeout=10)(math.factorial)(5).compute() == 120
    time.sleep(max(0.0, 3.0 - (time.monotonic() - started)))
    # The next waits are 0.8, 1.6 and 3.2 s: at most three more crashes in 3 s.
    assert total_restarts(client) - before <= 3
    status = job.status()
    assert status.state in ("QUEUED", "RUNNING") and status.attempts <= 8
    assert job.cancel().state == "CANCELLED"
    after = total_restarts(client)
    time.sleep(1.0)
    assert total_restarts(client) == after  # cancelled while it waited: not run again


def test_queued_bytes_are_bounded(start_server: StartServer) -> None:
    """With --max-queued-bytes 1 MB and the one worker busy: a Submit that
    would pass the bound is refused as queue-full, a Run waits (here until its
    deadline), and a payload larger than the whole bound is still accepted
    into an empty queue."""
    server = start_server("--workers", "1", "--max-queued-bytes", "1000000")
    raw = Raw(server.address)
    try:
        (blocker,) = raw("Submit", pool_pb2.SubmitRequest(payloads=[SLEEP])).job_ids
        wait_until(
            lambda: (
                raw("GetJob", pool_pb2.JobRef(job_id=blocker)).state == pool_pb2.JOB_STATE_RUNNING
            ),
            30,
            "the blocker to run",
        )
        huge = json_call("builtins:len", "x" * 2_000_000)  # twice the bound, alone: accepted
        (huge_id,) = raw("Submit", pool_pb2.SubmitRequest(payloads=[huge])).job_ids
        small = json_call("builtins:len", "x" * 100)
        details = raw.refused(
            "Submit",
            pool_pb2.SubmitRequest(payloads=[small]),
            grpc.StatusCode.RESOURCE_EXHAUSTED,
        )
        assert "--max-queued-bytes" in details
        with pytest.raises(QueueFullError, match="max-queued-bytes"):
            compute_this(server.address)(len).submit("x" * 100)
        with pytest.raises(CallTimeoutError, match="queue was full"):
            compute_this(server.address, timeout=1.0)(len)("x" * 100).compute()
        raw("CancelJob", pool_pb2.JobRef(job_id=huge_id))  # the queue is empty again
        fits = raw("Submit", pool_pb2.SubmitRequest(payloads=[small] * 3)).job_ids[0]
        raw("CancelJob", pool_pb2.JobRef(job_id=blocker))
        result = raw("GetResult", pool_pb2.JobRef(job_id=fits))
        assert json.loads(result.outcome)["value"] == len("x" * 100)
    finally:
        raw.close()


def test_journal_files_are_private_under_umask_022(
    start_server: StartServer, tmp_path: Path
) -> None:
    """With umask 022 the journal, its -wal and -shm, its identity file and
    the payload files are all mode 0600 (others once read results with sqlite3)."""
    state_dir = tmp_path / "state"
    old = os.umask(0o022)
    try:
        server = start_server("--workers", "1", "--state-dir", str(state_dir))
    finally:
        os.umask(old)
    raw = Raw(server.address)
    try:
        (blocker,) = raw("Submit", pool_pb2.SubmitRequest(payloads=[SLEEP])).job_ids
        big = json_call("builtins:len", "x" * 2_000_000)  # over 1 MiB: a payload file
        (big_id,) = raw("Submit", pool_pb2.SubmitRequest(payloads=[big])).job_ids
        payload_file = state_dir / "payloads" / big_id
        assert payload_file.exists()
        names = ["journal.sqlite3", "journal.sqlite3-wal", "journal.sqlite3-shm", "journal.id"]
        for path in [payload_file, *(state_dir / name for name in names)]:
            assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
        for job_id in (big_id, blocker):
            raw("CancelJob", pool_pb2.JobRef(job_id=job_id))
    finally:
        raw.close()


def write_token_file(path: Path) -> dict[str, str]:
    tokens = {"alice": "alice-token-1234", "bob": "bob-token-5678", "root": "root-token-9012"}
    lines = [
        f"{name}:{secret}" + (":admin" if name == "root" else "") for name, secret in tokens.items()
    ]
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write("\n".join(lines) + "\n")
    return tokens


def env_without_pool_token() -> dict[str, str]:
    """The suite's environment without its shared token, so the server reads
    the token file instead."""
    return {k: v for k, v in os.environ.items() if not k.startswith("POOL_")}


@pytest.fixture
def named_tokens(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    token_file = tmp_path / "tokens"
    return token_file, write_token_file(token_file)


# The columns of schema version 1 (before owners), as that version made them.
V1_SCHEMA = """
CREATE TABLE jobs (
    id TEXT PRIMARY KEY, batch_id TEXT NOT NULL, name TEXT NOT NULL, items INTEGER NOT NULL,
    state TEXT NOT NULL, payload BLOB, outcome BLOB, error_kind TEXT, error TEXT,
    exit_code INTEGER, attempts INTEGER NOT NULL, max_attempts INTEGER NOT NULL,
    time_limit REAL, worker_id INTEGER NOT NULL, progress REAL, message TEXT NOT NULL,
    created_at REAL NOT NULL, started_at REAL NOT NULL, finished_at REAL NOT NULL
);
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
INSERT INTO meta VALUES ('journal_id', 'J0123456789abcdef');
PRAGMA user_version=1;
"""


def test_a_version_1_journal_is_migrated(
    start_server: StartServer, tmp_path: Path, named_tokens: tuple[Path, dict[str, str]]
) -> None:
    """A journal from before owners keeps its jobs, now owned by "default":
    an admin sees them, a named caller does not."""
    state_dir = tmp_path / "state"
    state_dir.mkdir(mode=0o700)
    db = sqlite3.connect(state_dir / "journal.sqlite3")
    db.executescript(V1_SCHEMA)
    outcome = json.dumps({"status": "returned", "value": 42, "stdout": "", "stderr": ""})
    now = time.time()
    db.execute(
        "INSERT INTO jobs VALUES "
        "('jold', '', 'old', 1, 'DONE', NULL, ?, NULL, NULL, NULL, 1, 1, NULL, 1, NULL, '', "
        "?, ?, ?)",
        (outcome.encode(), now, now, now),
    )
    db.commit()
    db.close()
    os.chmod(state_dir / "journal.sqlite3", 0o600)
    (state_dir / "journal.id").write_text("J0123456789abcdef\n")
    os.chmod(state_dir / "journal.id", 0o600)
    token_file, tokens = named_tokens
    server = start_server(
        "--workers", "1", "--state-dir", str(state_dir), "--token-file", str(token_file),
        env=env_without_pool_token(), token=tokens["root"],
    )  # fmt: skip
    root, alice = Raw(server.address, tokens["root"]), Raw(server.address, tokens["alice"])
    try:
        old = root("GetResult", pool_pb2.JobRef(job_id="jold"))
        assert json.loads(old.outcome)["value"] == 42 and old.status.name == "old"
        assert [job.id for job in root("ListJobs", pool_pb2.ListJobsRequest()).jobs] == ["jold"]
        alice.refused("GetJob", pool_pb2.JobRef(job_id="jold"), grpc.StatusCode.NOT_FOUND)
        assert not alice("ListJobs", pool_pb2.ListJobsRequest()).jobs
    finally:
        root.close()
        alice.close()
    server.stop()
    db = sqlite3.connect(state_dir / "journal.sqlite3")
    assert db.execute("PRAGMA user_version").fetchone()[0] == 4
    assert db.execute("PRAGMA auto_vacuum").fetchone()[0] == 2  # incremental, switched once
    row = db.execute("SELECT owner, item_offset, function_hash FROM jobs WHERE id='jold'")
    assert row.fetchone() == ("default", 0, "")
    db.close()


def test_callers_see_only_their_own_jobs(
    start_server: StartServer, named_tokens: tuple[Path, dict[str, str]]
) -> None:
    """alice and bob each list, read, watch, fetch and cancel only their own
    jobs and batches: the other's answers NOT_FOUND, as if it did not exist;
    root (admin) sees and cancels both."""
    token_file, tokens = named_tokens
    server = start_server(
        "--workers", "1", "--token-file", str(token_file),
        env=env_without_pool_token(), token=tokens["root"],
    )  # fmt: skip
    callers = {name: Raw(server.address, secret) for name, secret in tokens.items()}
    alice, bob, root = callers["alice"], callers["bob"], callers["root"]
    try:
        submit = pool_pb2.SubmitRequest(payloads=[SLEEP], batch_id="shared-name")
        (alices,) = alice("Submit", submit).job_ids
        (bobs,) = bob("Submit", submit).job_ids
        for caller, own, other in ((alice, alices, bobs), (bob, bobs, alices)):
            listed = [job.id for job in caller("ListJobs", pool_pb2.ListJobsRequest()).jobs]
            assert listed == [own]
            assert caller("GetJob", pool_pb2.JobRef(job_id=own)).id == own
            batch = caller("GetBatch", pool_pb2.BatchRef(batch_id="shared-name"))
            assert batch.total == 1
            for method in ("GetJob", "WatchJob", "GetResult", "CancelJob"):
                details = caller.refused(
                    method, pool_pb2.JobRef(job_id=other), grpc.StatusCode.NOT_FOUND
                )
                assert details.startswith(f"no job {other!r}")
        # Another's job reads exactly as one that never existed.
        never = bob.refused("GetJob", pool_pb2.JobRef(job_id="jnever"), grpc.StatusCode.NOT_FOUND)
        assert never.replace("jnever", alices) == details
        assert root("GetBatch", pool_pb2.BatchRef(batch_id="shared-name")).total == 2
        everyone = {job.id for job in root("ListJobs", pool_pb2.ListJobsRequest()).jobs}
        assert everyone == {alices, bobs}
        for job_id in (alices, bobs):
            assert root("CancelJob", pool_pb2.JobRef(job_id=job_id)).state == (
                pool_pb2.JOB_STATE_CANCELLED
            )
        by_client = Client(server.address, token=tokens["bob"])
        assert [job.id for job in by_client.jobs()] == [bobs]
    finally:
        for caller in callers.values():
            caller.close()


def test_stopping_waits_only_for_the_running_jobs(start_server: StartServer) -> None:
    """SIGTERM while a job runs: the server exits once that job is done, not
    after the whole --grace (it once waited the grace out whenever a job ran,
    for a second signal that never came)."""
    server = start_server("--workers", "1", "--grace", "60")
    raw = Raw(server.address)
    try:
        request = pool_pb2.SubmitRequest(payloads=[json_call("time:sleep", 1)])
        (job_id,) = raw("Submit", request).job_ids
        wait_until(
            lambda: (
                raw("GetJob", pool_pb2.JobRef(job_id=job_id)).state == pool_pb2.JOB_STATE_RUNNING
            ),
            30,
            "the job to run",
        )
    finally:
        raw.close()
    started = time.monotonic()
    assert server.stop() == 0
    assert time.monotonic() - started < 15
