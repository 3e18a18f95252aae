"""The SQLite journal of durable jobs (WAL mode), under --state-dir.

A job's row is inserted with its payload when it is submitted; each later
change of state updates the row without rewriting the payload, which is
dropped once the job is finished. A payload over ``FILE_PAYLOAD_BYTES``
lives beside the database as ``payloads/<job id>`` instead: a file write
lets go of the GIL, where SQLite copies a blob while holding it. WAL with
``synchronous=NORMAL`` makes a commit durable against the server process
dying, not against the machine losing power (and so are payload files).

This module is blocking I/O: only the journal's writer thread
(``journal_writer.py``) calls it once the server serves, never the event
loop. Every error leaves here as a :class:`JournalError` whose message
says what a person can do about it.

The journal has an identity, kept in the database and beside it in
``journal.id``: a journal emptied, deleted or replaced by another while the
server was stopped is noticed at start-up instead of being taken for a new,
empty one.

Every file here is created mode 0600 whatever the umask (the database first,
so that SQLite gives its -wal and -shm files the same mode), and one left
more open by an older version is closed up at start: the journal holds
pickles that run after a restart, and other users' results.

Schema versions: 1 had no ``owner`` column; version 2 adds it, with the
existing rows owned by ``default`` (the name of an unnamed token); version 3
adds ``item_offset``, where a map chunk's first call stands in its batch
(0 for the rows before it); version 4 adds ``function_hash`` and the
``functions`` table.

A map's chunks name their function by key, and the journal keeps its bytes
once, in ``functions``, for all of them (a function with a 32 MiB global
was journaled once per chunk before). A job lets go of it when it finishes,
as of its payload, and a function no unfinished job names is deleted.
The database is in incremental auto-vacuum mode, so the pages of dropped
payloads and functions go back to the file system as they go, and its WAL
is cut back to ``WAL_KEEP_BYTES`` after each checkpoint.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import secrets
import shutil
import sqlite3
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from pool_server.errors import WorkerCrashed, error_from_record
from pool_server.jobs import DEFAULT_OWNER, Job
from pool_wire.names import FINISHED_STATES, JobState

log = logging.getLogger("pool_server.journal")

JOURNAL_FILE = "journal.sqlite3"
IDENTITY_FILE = "journal.id"
PAYLOAD_DIR = "payloads"

# Payloads this large are files: SQLite would copy each into its page cache
# (holding the GIL, so stalling the event loop) and then write it twice
# (WAL, then checkpoint).
FILE_PAYLOAD_BYTES = 1024 * 1024
SCHEMA_VERSION = 4

# What the WAL is cut back to after a checkpoint: one large submit must not
# leave the journal's files that large for good.
WAL_KEEP_BYTES = 4 * 1024 * 1024

# Free pages (4 KiB each) worth giving back: see Journal._give_space_back.
VACUUM_PAGES = 1024

# Only the server's user may read or write what the state dir holds.
FILE_MODE = 0o600

# Only the writer thread uses the database (the state dir is locked), so a
# wait for a lock means something is wrong: fail fast.
BUSY_TIMEOUT_S = 0.5

_SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY,
    batch_id TEXT NOT NULL,
    name TEXT NOT NULL,
    items INTEGER NOT NULL,
    state TEXT NOT NULL,
    payload BLOB,              -- written once at submit, dropped once the job is finished
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
    finished_at REAL NOT NULL,
    owner TEXT NOT NULL DEFAULT 'default',
    item_offset INTEGER NOT NULL DEFAULT 0,
    function_hash TEXT NOT NULL DEFAULT ''  -- '' once finished, or for a job carrying its own
);
CREATE TABLE IF NOT EXISTS functions (hash TEXT PRIMARY KEY, pickled BLOB NOT NULL);
CREATE INDEX IF NOT EXISTS jobs_by_function ON jobs (function_hash) WHERE function_hash != '';
CREATE INDEX IF NOT EXISTS jobs_by_state ON jobs (state);
CREATE INDEX IF NOT EXISTS jobs_by_owner ON jobs (owner, created_at);
CREATE INDEX IF NOT EXISTS jobs_by_batch ON jobs (batch_id);
CREATE INDEX IF NOT EXISTS jobs_by_created ON jobs (created_at);
CREATE INDEX IF NOT EXISTS jobs_by_finished ON jobs (finished_at) WHERE finished_at > 0;
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
"""

# From each schema version to the next, in one transaction with the bump.
_MIGRATIONS = {
    1: f"ALTER TABLE jobs ADD COLUMN owner TEXT NOT NULL DEFAULT '{DEFAULT_OWNER}'",
    2: "ALTER TABLE jobs ADD COLUMN item_offset INTEGER NOT NULL DEFAULT 0",
    3: "ALTER TABLE jobs ADD COLUMN function_hash TEXT NOT NULL DEFAULT ''",
}

_COLUMNS = (
    "id, batch_id, name, items, state, payload, outcome, error_kind, error, exit_code, attempts, "
    "max_attempts, time_limit, worker_id, progress, message, created_at, started_at, finished_at, "
    "owner, item_offset, function_hash"
)
_COLUMN_COUNT = _COLUMNS.count(",") + 1

_UPDATE = (
    "UPDATE jobs SET state=?, outcome=?, error_kind=?, error=?, exit_code=?, attempts=?, "
    "worker_id=?, progress=?, message=?, started_at=?, finished_at=?, "
    "payload=CASE WHEN ? THEN NULL ELSE payload END, "
    "function_hash=CASE WHEN ? THEN '' ELSE function_hash END WHERE id=?"
)

# Functions that no unfinished job names any more.
_UNNAMED_FUNCTIONS = (
    "DELETE FROM functions WHERE hash NOT IN "
    "(SELECT function_hash FROM jobs WHERE function_hash != '')"
)

# A job's state as the writer thread commits it: taken on the loop when the
# job changes (the job itself goes on changing), in _UPDATE's order.
Snapshot = tuple[object, ...]
# A Snapshot's last two: whether the job is finished (the second time, for
# _UPDATE's second CASE), and its id.
_FINISHED, _ID = -2, -1
# A new job's whole row, payload included, in _COLUMNS' order, then the
# bytes of the function it names (None when it carries its own).
Row = tuple[object, ...]
_PAYLOAD = 5  # the payload's place in a Row
_FUNCTION_HASH = _COLUMN_COUNT - 1

# A row as read back: by column name.
Record = Mapping[str, Any]


class JournalError(Exception):
    """The journal cannot be opened, read or written; the message says why
    and what to do about it."""


@dataclass(frozen=True)
class BatchCounts:
    """Calls (not jobs: a map chunk carries many) per state, and in all."""

    total: int
    states: dict[str, int]


def snapshot(job: Job) -> Snapshot:
    """What :meth:`Journal.update` writes for ``job``'s current state."""
    error_kind = error = exit_code = None
    if job.error is not None:
        error_kind, error = job.error.kind.value, str(job.error)
        if isinstance(job.error, WorkerCrashed):
            exit_code = job.error.exit_code
    elif job.raised:  # no error kind: the outcome holds the exception
        error = job.raised
    return (
        job.state.value,
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
        job.state.finished,
        job.state.finished,
        job.id,
    )


class Journal:
    """The journal database (blocking; see the module docstring)."""

    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / JOURNAL_FILE
        self._identity_file = state_dir / IDENTITY_FILE
        self._payload_dir = state_dir / PAYLOAD_DIR
        with self._errors("cannot use the job journal", corrupt_advice=True):
            _make_private(self.path)
            self._db = sqlite3.connect(
                self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S, check_same_thread=False
            )
            self._db.row_factory = sqlite3.Row
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.execute(f"PRAGMA journal_size_limit={WAL_KEEP_BYTES}")
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise sqlite3.DatabaseError(check)
            self._migrate()
            self._check_identity()
            self._payload_dir.mkdir(mode=0o700, exist_ok=True)
            self._close_up()
        self._vacuum_incrementally()

    def _vacuum_incrementally(self) -> None:
        """Put the journal in incremental auto-vacuum mode, which only a
        VACUUM does for an existing one: once, after every check has passed.
        It rewrites the file, so it needs its size again in free space; if
        that is not there, the journal works on, keeping its free pages."""
        if self._db.execute("PRAGMA auto_vacuum").fetchone()[0] == _INCREMENTAL:
            return
        try:
            self._db.execute(f"PRAGMA auto_vacuum={_INCREMENTAL}")
            self._db.execute("VACUUM")
        except sqlite3.Error as e:
            log.warning(
                "journal %s: could not switch to incremental vacuum (%s); it keeps the space "
                "of finished jobs for reuse instead of giving it back",
                self.path,
                e,
            )

    def close(self) -> None:
        self._db.close()

    def _migrate(self) -> None:
        """Bring an older journal to SCHEMA_VERSION (a new one starts there);
        refuse one from a newer version, which this one cannot read."""
        version = self._db.execute("PRAGMA user_version").fetchone()[0]
        if version > SCHEMA_VERSION:
            raise sqlite3.DatabaseError(
                f"schema version {version}, newer than this server's {SCHEMA_VERSION}: "
                "run the pool-server version that wrote it"
            )
        with self._transaction():
            if version:
                for old in range(version, SCHEMA_VERSION):
                    self._db.execute(_MIGRATIONS[old])
                    log.info("journal %s: schema version %d -> %d", self.path, old, old + 1)
            for statement in filter(str.strip, _SCHEMA.split(";")):
                self._db.execute(statement)  # executescript would commit first
            self._db.execute(f"PRAGMA user_version={SCHEMA_VERSION}")

    def _close_up(self) -> None:
        """Make files an older version (or a looser umask) left readable
        by others private; SQLite makes its -wal and -shm like the database."""
        paths = [self._identity_file, *(self.path.with_name(self.path.name + s) for s in _SIDE)]
        paths += [p for p in self._payload_dir.iterdir() if p.is_file()]
        for path in paths:
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_mode & 0o077:
                    log.warning("%s was readable by other users; made it mode 0600", path)
                    path.chmod(FILE_MODE)
        if self._payload_dir.stat().st_mode & 0o077:
            self._payload_dir.chmod(0o700)

    def commit(self, added: list[Row], updates: list[Snapshot]) -> None:
        """New jobs' rows and changes of state, in one transaction (group commit)."""
        files = self._write_payload_files(added)
        functions = {row[_FUNCTION_HASH]: row[-1] for row in added if row[-1] is not None}
        finished = [str(entry[_ID]) for entry in updates if entry[_FINISHED]]
        try:
            with self._errors("job changes could not be journaled"), self._transaction():
                self._db.executemany(
                    "INSERT OR IGNORE INTO functions (hash, pickled) VALUES (?, ?)",
                    functions.items(),
                )
                self._db.executemany(
                    f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * _COLUMN_COUNT)})",
                    [_columns(row, row[0] in files) for row in added],
                )
                self._db.executemany(_UPDATE, updates)
                if finished:
                    self._db.execute(_UNNAMED_FUNCTIONS)
        except JournalError:
            self._remove_payload_files(files)
            raise
        self._remove_payload_files(finished)
        if finished:
            self._give_space_back()

    def _give_space_back(self) -> None:
        """Once dropped payloads and functions have left ``VACUUM_PAGES`` free
        pages, return them to the file system, and the WAL's space with them
        (a failure costs space, not correctness). Below that it is not worth
        the checkpoint's write on the path of every finished job."""
        try:
            if self._db.execute("PRAGMA freelist_count").fetchone()[0] < VACUUM_PAGES:
                return
            # It frees a page per step, and only executescript steps it to
            # the end (a cursor stops after one page). No transaction is open.
            self._db.executescript("PRAGMA incremental_vacuum; PRAGMA wal_checkpoint(TRUNCATE);")
        except sqlite3.Error as e:
            log.warning("journal %s: could not give free space back: %s", self.path, e)

    def _write_payload_files(self, added: list[Row]) -> set[str]:
        """Write the large payloads of new jobs as files; their ids."""
        written: set[str] = set()
        try:
            for row in added:
                payload = row[_PAYLOAD]
                if isinstance(payload, bytes) and len(payload) > FILE_PAYLOAD_BYTES:
                    job_id = str(row[0])
                    with self._errors(f"the payload of job {job_id} could not be written"):
                        _write_private(self._payload_dir / job_id, payload)
                    written.add(job_id)
        except JournalError:
            self._remove_payload_files(written)
            raise
        return written

    def _remove_payload_files(self, job_ids: Iterable[str]) -> None:
        for job_id in job_ids:
            try:
                (self._payload_dir / job_id).unlink(missing_ok=True)
            except OSError as e:  # a leftover file costs space, not correctness
                log.warning("could not delete the payload file of job %s: %s", job_id, e)

    def _with_payload(self, row: sqlite3.Row, functions: dict[str, bytes]) -> dict[str, object]:
        """An unfinished job's row, with its payload read back from its file
        if it has one, and the bytes of the function it names: one object
        per function in ``functions``, shared by all the jobs naming it (40
        chunks of a 32 MiB global hold it once, as before the restart)."""
        record = dict(row)
        path = self._payload_dir / str(record["id"])
        if record["payload"] is None and path.exists():
            record["payload"] = path.read_bytes()
        key = record["function_hash"]
        if key:
            if key not in functions:
                found = self._db.execute(
                    "SELECT pickled FROM functions WHERE hash=?", (key,)
                ).fetchone()
                if found is None:
                    raise sqlite3.DatabaseError(
                        f"job {record['id']} names function {key}, which is not in the journal"
                    )
                functions[key] = found[0]
            record["function"] = functions[key]
        return record

    # Reads return rows: a Job is made on the event loop (see job_from_row).

    def get(self, job_id: str) -> Record | None:
        with self._errors(f"job {job_id} could not be read from the journal"):
            row: Record | None = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE id=?", (job_id,)
            ).fetchone()
            return row

    def unfinished(self) -> list[Record]:
        """Jobs that were QUEUED, RUNNING or INTERRUPTED when the server last stopped."""
        finished = tuple(state.value for state in FINISHED_STATES)
        with self._errors("the unfinished jobs could not be read from the journal"):
            rows = self._db.execute(
                f"SELECT {_COLUMNS} FROM jobs WHERE state NOT IN "
                f"({', '.join('?' * len(finished))}) ORDER BY created_at",
                finished,
            )
            functions: dict[str, bytes] = {}
            return [self._with_payload(row, functions) for row in rows]

    def list(
        self, state: JobState | None, batch_id: str, limit: int, owner: str | None
    ) -> list[Record]:
        """Newest first, without payloads or outcomes; only ``owner``'s
        jobs unless it is None."""
        where, params = _filters(state=state, batch_id=batch_id, owner=owner)
        columns = _COLUMNS.replace("payload, outcome", "NULL AS payload, NULL AS outcome")
        with self._errors("the job list could not be read from the journal"):
            rows = self._db.execute(
                f"SELECT {columns} FROM jobs {where} ORDER BY created_at DESC LIMIT ?",
                (*params, limit),
            )
            return list(rows)

    def batch(self, batch_id: str, owner: str | None) -> BatchCounts:
        """Calls per state in the batch: in ``owner``'s jobs unless it is None."""
        where, params = _filters(batch_id=batch_id or None, owner=owner, all_batches=False)
        with self._errors("the batch could not be read from the journal"):
            rows = self._db.execute(
                f"SELECT state, SUM(items) FROM jobs {where} GROUP BY state", params
            ).fetchall()
        states = {row[0]: row[1] for row in rows}
        return BatchCounts(sum(states.values()), states)

    def expire(self, finished_before: float) -> int:
        """Forget jobs finished before the given time; return how many."""
        with self._errors("finished jobs past --result-ttl could not be deleted"):
            cursor = self._db.execute(
                "DELETE FROM jobs WHERE finished_at > 0 AND finished_at < ?", (finished_before,)
            )
        if cursor.rowcount:
            self._give_space_back()
        return cursor.rowcount

    def _check_identity(self) -> None:
        """Refuse a journal that is not the one this state dir last had."""
        row = self._db.execute("SELECT value FROM meta WHERE key='journal_id'").fetchone()
        expected = self._read_identity()
        if row is None and expected is not None:
            raise _Refused(
                f"{self.path} is not journal {expected}, which this state dir had: it was "
                "emptied, deleted or replaced while the server was stopped, and the jobs it "
                f"held are not in it. Restore it from a backup; or, to start with an empty "
                f"journal and give those jobs up, delete {self._identity_file}"
            )
        if row is None:
            identity = f"J{secrets.token_hex(8)}"
            self._db.execute("INSERT INTO meta (key, value) VALUES ('journal_id', ?)", (identity,))
        else:
            identity = row[0]
            if expected is not None and identity != expected:
                raise _Refused(
                    f"{self.path} is journal {identity}, but this state dir had journal "
                    f"{expected}: it was replaced while the server was stopped. Put the right "
                    f"one back; or, to use this one, delete {self._identity_file}"
                )
        if expected is None:
            temporary = self._identity_file.with_suffix(".tmp")
            _write_private(temporary, (identity + "\n").encode())
            os.replace(temporary, self._identity_file)

    def _read_identity(self) -> str | None:
        try:
            return self._identity_file.read_text().strip() or None
        except FileNotFoundError:
            return None

    @contextlib.contextmanager
    def _errors(self, what: str, corrupt_advice: bool = False) -> Iterator[None]:
        try:
            yield
        except _Refused as e:
            raise JournalError(str(e)) from None
        except (sqlite3.Error, OSError) as e:
            raise JournalError(self._describe(what, e, corrupt_advice)) from e

    def _describe(self, what: str, error: sqlite3.Error | OSError, corrupt_advice: bool) -> str:
        if _disk_full(error):
            try:
                free = f"{shutil.disk_usage(self.path.parent).free // 1024} KiB free"
            except OSError:
                free = "free space unknown"
            return (
                f"{what}: the disk holding {self.path.parent} is full ({free}). "
                "Free space on it (delete other files there, or give the server a --state-dir "
                "on a larger disk after moving the whole state dir); the journal itself is "
                "intact and nothing it holds is lost"
            )
        if corrupt_advice and isinstance(error, sqlite3.DatabaseError):
            return (
                f"{what} {self.path}: {error}; restore it from a backup, or move it and "
                f"{self._identity_file.name} aside to start with an empty journal (its jobs "
                "are then lost)"
            )
        return f"{what} ({self.path}): {error}"

    def _transaction(self) -> sqlite3.Connection:
        self._db.execute("BEGIN")
        return self._db


class _Refused(Exception):
    """The journal is readable but is not this state dir's."""


def _disk_full(error: sqlite3.Error | OSError) -> bool:
    if isinstance(error, OSError):
        return error.errno in (errno.ENOSPC, errno.EDQUOT)
    return getattr(error, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL


_SIDE = ("", "-wal", "-shm")  # the database's files: suffixes of its name
_INCREMENTAL = 2  # PRAGMA auto_vacuum's value for INCREMENTAL


def _make_private(path: Path) -> None:
    """Create ``path`` empty with mode 0600 unless it exists (the umask
    cannot widen it: the mode is set again after creating)."""
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, FILE_MODE)
    except FileExistsError:
        return
    try:
        os.fchmod(fd, FILE_MODE)
    finally:
        os.close(fd)


def _write_private(path: Path, data: bytes) -> None:
    """Write ``data`` as the whole of ``path``, mode 0600."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, FILE_MODE)
    with open(fd, "wb") as f:
        os.fchmod(fd, FILE_MODE)
        f.write(data)


def _filters(
    *,
    state: JobState | None = None,
    batch_id: str | None,
    owner: str | None,
    all_batches: bool = True,
) -> tuple[str, tuple[str, ...]]:
    """The WHERE clause for these filters; with ``all_batches`` an empty
    ``batch_id`` means any batch, else it means the jobs in none."""
    clauses, params = [], []
    if state:
        clauses.append("state=?")
        params.append(state.value)
    if batch_id or not all_batches:
        clauses.append("batch_id=?")
        params.append(batch_id or "")
    if owner is not None:
        clauses.append("owner=?")
        params.append(owner)
    return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def new_row(job: Job) -> Row:
    """What :meth:`Journal.commit` inserts for a job just submitted."""
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
        job.owner,
        job.item_offset,
        job.function_hash if job.function is not None else "",
        job.function,
    )


def _columns(row: Row, payload_in_file: bool) -> Row:
    """What a Row inserts into ``jobs``: no function bytes, and no payload
    where it was written as a file."""
    columns = row[:_COLUMN_COUNT]
    if payload_in_file:
        return (*columns[:_PAYLOAD], None, *columns[_PAYLOAD + 1 :])
    return columns


def job_from_row(row: Record) -> Job:
    """A job rebuilt from its row (on the event loop: it makes a future);
    ``done`` is resolved if it is finished. ``JournalError`` for a row this
    version cannot read."""
    try:
        return _job(row)
    except (ValueError, TypeError, KeyError) as e:
        raise JournalError(f"the journal holds a row this version cannot read: {e}") from e


def _job(row: Record) -> Job:
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
        owner=row["owner"],
        item_offset=row["item_offset"],
        function=row["function"] if "function" in row.keys() else None,  # noqa: SIM118 - a Row
        function_hash=row["function_hash"],
    )
    if row["error_kind"]:
        job.error = error_from_record(
            row["error_kind"], row["error"], job.worker_id, row["exit_code"]
        )
    else:
        job.raised = row["error"] or ""
    if job.state.finished:
        job.done.set_result(None)
    return job
