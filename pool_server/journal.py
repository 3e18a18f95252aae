"""The SQLite journal of durable jobs (WAL mode), under --state-dir.

Every submitted job is inserted before Submit answers, and every change of
state is written as it happens, so a restarted server (after a clean stop
or a SIGKILL) knows each job's last state. WAL with ``synchronous=NORMAL``
makes a commit durable against the server process dying, not against the
machine losing power.
"""

from __future__ import annotations

import contextlib
import sqlite3
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from pool_server.errors import WorkerCrashed, error_from_record
from pool_server.jobs import Job
from pool_wire.names import FINISHED_STATES, JobState

JOURNAL_FILE = "journal.sqlite3"
BUSY_TIMEOUT_S = 0.5
SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    name TEXT NOT NULL,
    items INTEGER NOT NULL,
    state TEXT NOT NULL,
    payload BLOB,              -- dropped once the job is finished
    outcome BLOB,
    error_kind TEXT,
    error TEXT,
    exit_code INTEGER,
    attempts INTEGER NOT NULL,
    max_attempts INTEGER NOT NULL,
    time_limit REAL,
    worker_id INTEGER NOT NULL,
    progress REAL,
    message TEXT NOT NULL,
    created_at REAL NOT NULL,
    started_at REAL NOT NULL,
    finished_at REAL NOT NULL
);
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished_at) WHERE finished_at > 0;
"""

_COLUMNS = (
    "id, batch_id, name, items, state, payload, outcome, error_kind, error, exit_code, attempts, "
    "max_attempts, time_limit, worker_id, progress, message, created_at, started_at, finished_at"
)


class JournalError(Exception):
    """The journal cannot be opened or read."""


@dataclass(frozen=True)
class BatchCounts:
    """Calls (not jobs: a map chunk carries many) per state, and in all."""

    total: int
    states: dict[str, int]


class Journal:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_FILE
        try:
            # Only this server writes (the state dir is locked), so waiting on
            # a lock means something is wrong: fail fast, not block the loop.
            self._db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version not in (0, SCHEMA_VERSION):
                raise sqlite3.DatabaseError(f"schema version {version}, expected {SCHEMA_VERSION}")
            self._db.executescript(_SCHEMA)
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")
        except sqlite3.Error as e:
            raise JournalError(
                f"cannot use the job journal {self.path}: {e}; move it aside to start "
                "with an empty journal (its jobs are then lost), or restore a backup"
            ) from e

    def close(self) -> None:
        self._db.close()

    def add(self, jobs: Iterable[Job]) -> None:
        """Record new jobs, all or none."""
        with _writing(self.path), self._transaction():
            self._db.executemany(
                f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 19)})",
                (_row(job) for job in jobs),
            )

    def save(self, job: Job) -> None:
        """Record a job's new state (and its outcome or error once finished)."""
        error_kind = error = exit_code = None
        if job.error is not None:
            error_kind, error = job.error.kind, str(job.error)
            if isinstance(job.error, WorkerCrashed):
                exit_code = job.error.exit_code
        with _writing(self.path):
            self._update(job, error_kind, error, exit_code)

    def _update(
        self, job: Job, error_kind: str | None, error: str | None, exit_code: int | None
    ) -> None:
        self._db.execute(
            "UPDATE jobs SET state=?, payload=?, outcome=?, error_kind=?, error=?, exit_code=?, "
            "attempts=?, worker_id=?, progress=?, message=?, started_at=?, finished_at=? "
            "WHERE id=?",
            (
                job.state.value,
                None if job.state.finished else job.payload,
                job.outcome,
                error_kind,
                error,
                exit_code,
                job.attempts,
                job.worker_id,
                job.progress,
                job.message,
                job.started_at,
                job.finished_at,
                job.id,
            ),
        )

    def get(self, job_id: str) -> Job | None:
        row = self._db.execute(f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)).fetchone()
        return None if row is None else _job(row)

    def unfinished(self) -> list[Job]:
        """Jobs that were QUEUED, RUNNING or INTERRUPTED when the server last stopped."""
        finished = tuple(state.value for state in FINISHED_STATES)
        rows = self._db.execute(
            f"SELECT {_COLUMNS} FROM jobs WHERE state NOT IN ({', '.join('?' * len(finished))}) "
            "ORDER BY created_at",
            finished,
        )
        return [_job(row) for row in rows]

    def list(self, state: JobState | None, batch_id: str, limit: int) -> list[Job]:
        """Newest first, without payloads or outcomes."""
        where, params = _filters(state, batch_id)
        columns = _COLUMNS.replace("payload, outcome", "NULL AS payload, NULL AS outcome")
        rows = self._db.execute(
            f"SELECT {columns} FROM jobs {where} ORDER BY created_at DESC LIMIT ?",
            (*params, limit),
        )
        return [_job(row) for row in rows]

    def batch(self, batch_id: str) -> BatchCounts:
        rows = self._db.execute(
            "SELECT state, SUM(items) FROM jobs WHERE batch_id=? GROUP BY state", (batch_id,)
        ).fetchall()
        states = {row[0]: row[1] for row in rows}
        return BatchCounts(sum(states.values()), states)

    def expire(self, finished_before: float) -> int:
        """Forget jobs finished before the given time; return how many."""
        cursor = self._db.execute(
            "DELETE FROM jobs WHERE finished_at > 0 AND finished_at < ?", (finished_before,)
        )
        return cursor.rowcount

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db


@contextlib.contextmanager
def _writing(path: Path) -> Iterator[None]:
    try:
        yield
    except sqlite3.Error as e:
        raise JournalError(f"writing {path} failed: {e}") from e


def _filters(state: JobState | None, batch_id: str) -> tuple[str, tuple[str, ...]]:
    clauses, params = [], []
    if state:
        clauses.append("state=?")
        params.append(state.value)
    if batch_id:
        clauses.append("batch_id=?")
        params.append(batch_id)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _row(job: Job) -> tuple[object, ...]:
    return (
        job.id,
        job.batch_id,
        job.name,
        job.items,
        job.state.value,
        job.payload,
        job.outcome,
        None,
        None,
        None,
        job.attempts,
        job.max_attempts,
        job.time_limit,
        job.worker_id,
        job.progress,
        job.message,
        job.created_at,
        job.started_at,
        job.finished_at,
    )


def _job(row: sqlite3.Row) -> Job:
    job = Job(
        payload=row["payload"] or b"",
        id=row["id"],
        durable=True,
        max_attempts=row["max_attempts"],
        time_limit=row["time_limit"],
        batch_id=row["batch_id"],
        name=row["name"],
        items=row["items"],
        state=JobState(row["state"]),
        attempts=row["attempts"],
        worker_id=row["worker_id"],
        progress=row["progress"],
        message=row["message"],
        created_at=row["created_at"],
        started_at=row["started_at"],
        finished_at=row["finished_at"],
        outcome=row["outcome"],
    )
    if row["error_kind"]:
        job.error = error_from_record(
            row["error_kind"], row["error"], job.worker_id, row["exit_code"]
        )
    if job.state.finished:
        job.done.set_result(None)
    return job
