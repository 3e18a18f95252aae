"""One worker subprocess: start-up handshake, job lines, pipes, termination.

This module does the I/O with a single ``python -m worker_proc`` process and
reports what happened; deciding what to do about it (restart, fail the job)
is the supervisor's job. Both pipes from the worker are drained from the
moment it is spawned, READY handshake included: an unread stderr pipe would
block a worker that is noisy while it starts until the READY timeout, and one
that is noisy later forever (issue 8).

What a worker writes to its fds 1 and 2 during a call (``os.write(1, ...)``
bypasses the worker's capture) is logged up to ``OUTPUT_CAP_BYTES`` per
call, then counted and dropped: one call must not fill the server's log
(issue 9). Output before the first call (start-up, where a broken site
module explains itself) is logged whole.

A worker is stopped through its process group and, where the pool has
them, its slot's cgroup (``pool_server.cgroup``), which also reaches the
children that left its session.

Each worker gets its own shared-memory arena at spawn (``pool_wire.arena``,
fd passed with ``pass_fds`` and named by ``--arena-fd``): a payload above
``ARENA_THRESHOLD_BYTES`` is written there and sent as a JOBREF line, and
an outcome the worker left there (RESULTREF) is copied out before the
reply resolves, so callers only ever see bytes. A restarted worker gets a
fresh arena with a fresh process.

Functions are sent once per worker (issue 10): :meth:`WorkerProcess.send`
keeps an exact mirror of the worker's function cache and writes a FUNCTION
line only for a key the worker lacks. A ``missing`` answer (the mirror was
wrong) is recovered here, by sending the function and the job again, once.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import signal
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from pool_server.cgroup import SlotCgroups
from pool_wire.arena import Arena
from pool_wire.function_cache import FunctionCache
from pool_wire.limits import ARENA_THRESHOLD_BYTES
from pool_wire.protocol import (
    PROTOCOL_VERSION,
    ArenaJob,
    ArenaOutcome,
    FunctionBytes,
    JobOutcome,
    JobRequest,
    LineReader,
    Message,
    Output,
    Progress,
    ProtocolError,
    Raised,
    Ready,
    ResultStatus,
    Retiring,
    encode_parts,
)

log = logging.getLogger("pool_server.worker")

# A new worker imports cloudpickle and tblib before it says READY; on a busy
# 2-core machine starting many workers at once that can take seconds.
READY_TIMEOUT_S = 30.0

# After SIGTERM, how long a worker may clean up before SIGKILL. Short, since a
# cancelled call's slot stays empty until the worker is gone.
TERM_GRACE_S = 1.0

# After EOF on its stdin at shutdown, how long an idle worker has to exit.
STOP_GRACE_S = 5.0

# How long to wait for a dead worker's pipes to close; a grandchild it forked
# can hold them open forever.
PIPE_DRAIN_TIMEOUT_S = 1.0

# stderr is read in chunks and logged per line; longer lines are cut here.
STDERR_CHUNK_BYTES = 64 * 1024

# What one call may put in the log from the worker's fds 1 and 2, counting
# each line's log prefix (LOG_LINE_COST_BYTES): a flood of empty lines costs
# what it adds to the log. 64 KiB holds any traceback and a page of prints.
OUTPUT_CAP_BYTES = 64 * 1024
LOG_LINE_COST_BYTES = 64

# A worker that dies before READY is described by the end of its stderr
# (all of which is in the log): enough for a traceback's last frames.
STDERR_TAIL_LINES = 20
STDERR_TAIL_CHARS = 2000

# The protocol channel is read this much at a time; at most twice this is
# buffered before the worker is made to wait (asyncio's StreamReader limit).
STDOUT_CHUNK_BYTES = 256 * 1024

# After a call that used more of its arena than this, the pages past it are
# given back: a worker keeps what a 128 MiB round trip needs (reused, so no
# page faults the next time), not the peak of its largest call ever.
ARENA_KEEP_BYTES = 256 << 20

WORKER_COMMAND = (sys.executable, "-m", "worker_proc")


class WorkerStartError(Exception):
    """A worker did not complete the READY handshake."""


class WorkerDied(Exception):
    """The worker closed its protocol channel (it exited) before answering."""


class WorkerProcess:
    """A started worker that has said READY (see :meth:`start`)."""

    def __init__(
        self,
        worker_id: int,
        proc: asyncio.subprocess.Process,
        cgroups: SlotCgroups | None,
        arena: Arena,
    ) -> None:
        self.worker_id = worker_id
        self.pid = proc.pid
        self._proc = proc
        self._cgroups = cgroups
        self._arena = arena
        self._arena_open = True
        self._arena_used = 0  # the end of the current job's payloads in the arena
        self._functions: FunctionCache[bool] = FunctionCache()  # the worker's, mirrored
        # What a ``missing`` answer to the current job is recovered with.
        self._resend: tuple[ArenaJob | JobRequest, list[FunctionBytes]] | None = None
        self.bytes_sent = 0  # written to the worker's protocol channel, all lines
        self.functions_sent = 0  # FUNCTION lines
        self.outcomes_from_arena = 0  # RESULTREF lines
        # Why the worker asked to be replaced after its current job, if it did.
        self.retiring: str | None = None
        # The RAISED summary of the current job's exception, if its call failed.
        self.raised = ""
        self._output_job: str | None = None  # whose output fds 1 and 2 carry; None: start-up
        self._output_left = OUTPUT_CAP_BYTES
        self._output_dropped = 0
        self._job_id = ""
        self._reply: asyncio.Future[JobOutcome] | None = None
        self._on_progress: Callable[[Progress], None] | None = None
        self._on_output: Callable[[Output], None] | None = None
        self.protocol_error: str | None = None  # why we gave up on it, if it broke the protocol
        self.memory_kill: str | None = None  # why it was killed for its memory, if it was
        loop = asyncio.get_running_loop()
        self._ready: asyncio.Future[Ready] = loop.create_future()
        self._stderr_tail: collections.deque[str] = collections.deque(maxlen=STDERR_TAIL_LINES)
        # Done when the worker exits or closes its protocol channel, whichever
        # comes first: a child it forked may hold the pipe open after it died.
        # Set in the same step as the last reply, so no job follows a broken line.
        self.gone: asyncio.Future[None] = loop.create_future()
        # Both pipes are read for the whole life of the process, from spawn.
        self._stdout_reader = asyncio.ensure_future(self._read_stdout())
        self._stderr_reader = asyncio.ensure_future(self._read_stderr())
        self._exited = asyncio.ensure_future(self._proc.wait())
        self._exited.add_done_callback(lambda _: self._mark_gone())

    def __repr__(self) -> str:
        return f"<WorkerProcess worker={self.worker_id} pid={self.pid} rc={self._proc.returncode}>"

    @classmethod
    async def start(
        cls, worker_id: int, cgroups: SlotCgroups | None = None, workdir: Path | None = None
    ) -> WorkerProcess:
        """Spawn worker ``worker_id`` in ``workdir`` (its cwd and, as for any
        ``python -m``, the first entry of its sys.path; None: the server's)."""
        try:
            arena = Arena.create(f"pool-arena-{worker_id}")
        except OSError as e:  # out of file descriptors
            raise WorkerStartError(f"cannot make the worker's arena: {e}") from e
        try:
            proc = await asyncio.create_subprocess_exec(
                *WORKER_COMMAND,
                "--arena-fd",
                str(arena.fd),
                stdin=asyncio.subprocess.PIPE,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
                limit=STDOUT_CHUNK_BYTES,
                start_new_session=True,  # Ctrl-C in the server's terminal is the server's
                pass_fds=(arena.fd,),
                cwd=workdir,
            )
        except OSError as e:  # out of file descriptors, processes or memory
            arena.close()
            raise WorkerStartError(f"cannot spawn {WORKER_COMMAND}: {e}") from e
        if cgroups is not None:
            try:
                # Before READY, so before any call: nothing it starts is outside.
                cgroups.add(worker_id, proc.pid)
            except OSError as e:
                log.error("worker %d: cannot put pid %d in its cgroup: %s", worker_id, proc.pid, e)
        process = cls(worker_id, proc, cgroups, arena)
        try:
            await process._handshake()
        except BaseException:
            process._kill_all()
            await proc.wait()
            await process._close()
            raise
        return process

    async def _handshake(self) -> None:
        """Wait for READY, which the stdout reader checks and hands over."""
        await _first_done((self._ready, self.gone), READY_TIMEOUT_S)
        if self.protocol_error is not None:  # before READY, or right after it
            raise WorkerStartError(f"broke the line protocol: {self.protocol_error}")
        if self._ready.done():
            return
        if not self.gone.done():
            raise WorkerStartError(f"no READY within {READY_TIMEOUT_S:.0f} s")
        code = await self.exit_code()
        await _first_done((self._stderr_reader,), PIPE_DRAIN_TIMEOUT_S)
        stderr = "\n".join(self._stderr_tail)[-STDERR_TAIL_CHARS:]
        raise WorkerStartError(f"{self.describe_exit(code)} before READY: {stderr}")

    async def send(
        self,
        job_id: str,
        payload: bytes | bytearray,
        on_progress: Callable[[Progress], None],
        function: bytes | None = None,
        function_hash: str = "",
        objects: Sequence[tuple[str, bytes]] = (),
        on_output: Callable[[Output], None] | None = None,
    ) -> asyncio.Future[JobOutcome]:
        """Write one job to the worker; the future resolves with its outcome,
        or with :class:`WorkerDied` if the worker closes its channel first.

        A payload with ``function_hash`` set names its function by that key;
        ``function`` (its pickled bytes) goes first, on a FUNCTION line, if
        the worker does not have it yet, and so does each of the stored
        ``objects`` (key, pickled bytes) it refers to. ``on_output`` hears
        what the job prints as it runs (OUTPUT lines).
        """
        reply: asyncio.Future[JobOutcome] = asyncio.get_running_loop().create_future()
        if self.gone.done():
            reply.set_exception(WorkerDied())
            return reply
        self._job_id, self._reply, self._on_progress = job_id, reply, on_progress
        self._on_output = on_output
        self.raised = ""
        self._start_output(job_id)
        job = self._job_line(job_id, payload)
        lines: list[Message] = [job]
        offers = [FunctionBytes(key, pickled) for key, pickled in objects]
        for offer in offers:  # the worker resolves objects without touching their recency
            if offer.key not in self._functions:
                lines.insert(-1, self._offered(offer))
        if function_hash and function is not None:
            offer = FunctionBytes(function_hash, function)
            offers.append(offer)
            if self._functions.get(function_hash) is None:  # as the worker will look it up
                lines.insert(-1, self._offered(offer))
        self._resend = (job, offers) if offers else None
        await self._write(lines)
        return reply

    def _job_line(self, job_id: str, payload: bytes | bytearray) -> JobRequest | ArenaJob:
        """A JOB line, or for a large payload a JOBREF to it, written into the arena."""
        if len(payload) <= ARENA_THRESHOLD_BYTES:
            return JobRequest(job_id, bytes(payload))  # no copy of bytes; kept for a resend
        span = self._arena.write(payload)
        self._arena_used = span.end
        return ArenaJob(job_id, span)

    def _offered(self, offer: FunctionBytes) -> FunctionBytes:
        """``offer``, now in the mirror as the worker will have it once it reads it."""
        self._functions.put(offer.key, True, len(offer.pickled))
        self.functions_sent += 1
        return offer

    async def _write(self, messages: list[Message]) -> None:
        assert self._proc.stdin is not None
        stdin = self._proc.stdin
        for message in messages:
            for part in encode_parts(message):
                if stdin.is_closing() or self._exited.done():  # it died mid-line; the reply says so
                    return
                stdin.write(part)
                self.bytes_sent += len(part)
                if stdin.transport.get_write_buffer_size():  # the worker is behind: wait for it
                    await self._drain(stdin)

    async def _drain(self, stdin: asyncio.StreamWriter) -> None:
        """Wait until ``stdin`` takes more, or the worker exits: a child it
        forked may hold the pipe open, and its drain would never end."""
        drained = asyncio.ensure_future(stdin.drain())
        await _first_done((drained, self._exited), None)
        if drained.done():
            with contextlib.suppress(ConnectionError):
                drained.result()
        else:
            drained.cancel()

    async def outcome(
        self,
        reply: asyncio.Future[JobOutcome],
        until: asyncio.Future[Any],
        time_limit: float | None,
    ) -> JobOutcome | None:
        """Wait for the job sent with :meth:`send`.

        Returns ``None`` if ``until`` completes first (the job was cancelled)
        or ``time_limit`` passes; the worker is then still running the job.
        Raises :class:`WorkerDied` if the worker exits before answering.
        """
        try:
            await _first_done((reply, until, self.gone), time_limit)
            if self.gone.done() and not reply.done():
                # It exited; its last line may still be in the pipe.
                await _first_done((reply,), PIPE_DRAIN_TIMEOUT_S)
                if not reply.done():
                    raise WorkerDied()
        finally:
            self._reply = self._on_progress = self._on_output = self._resend = None
            self._report_dropped()
        return reply.result() if reply.done() else None

    async def exit_code(self) -> int:
        """Wait for a worker that closed its pipes to exit; kill it if it
        lingers, and what it left behind either way."""
        try:
            async with asyncio.timeout(PIPE_DRAIN_TIMEOUT_S):
                await self._proc.wait()
        except TimeoutError:
            await self.kill()
        await self._close()
        return await self._proc.wait()

    async def kill(self) -> None:
        """SIGTERM, then SIGKILL after TERM_GRACE_S; also reaps its children."""
        if self._proc.returncode is None:
            _signal_group(self.pid, signal.SIGTERM)
            try:
                async with asyncio.timeout(TERM_GRACE_S):
                    await self._proc.wait()
            except TimeoutError:
                self._kill_all()
                await self._proc.wait()
        await self._close()

    def kill_for_memory(self, why: str) -> None:
        """SIGKILL the worker, which is over the pool's hard memory limit;
        its reader sees it go, and :meth:`describe_exit` says ``why``."""
        if self.memory_kill is not None or self._proc.returncode is not None:
            return
        self.memory_kill = why
        log.warning("worker %d (pid %d) killed: %s", self.worker_id, self.pid, why)
        self._kill_all()

    def describe_exit(self, code: int) -> str:
        """How the worker ended, in words, e.g. "was killed by SIGKILL (...)"."""
        if self.protocol_error is not None:
            return f"broke the line protocol ({self.protocol_error}) and was killed"
        if self.memory_kill is not None:
            return f"was killed: {self.memory_kill}"
        if code >= 0:
            return f"exited with code {code}"
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        how = f"was killed by {name}"
        if code == -signal.SIGKILL:
            how += " (possibly by the out-of-memory killer)"
        return how

    async def stop(self) -> None:
        """Close the worker's stdin so it exits when idle; kill it if it does not."""
        assert self._proc.stdin is not None
        self._proc.stdin.close()
        try:
            async with asyncio.timeout(STOP_GRACE_S):
                await self._proc.wait()
        except TimeoutError:
            log.warning("worker %d (pid %d) ignored EOF; killing it", self.worker_id, self.pid)
        await self.kill()

    async def _close(self) -> None:
        """Kill whatever the worker left behind, stop reading its pipes, and
        let its arena go."""
        self._kill_all()
        readers = (self._stdout_reader, self._stderr_reader)
        _, pending = await asyncio.wait(readers, timeout=PIPE_DRAIN_TIMEOUT_S)
        for reader in pending:
            reader.cancel()
        self._report_dropped()
        if self._arena_open:
            self._arena_open = False
            self._arena.close()

    def _kill_all(self) -> None:
        """SIGKILL the worker's process group and, where there is one, its
        cgroup, which also holds the children that made their own session."""
        _signal_group(self.pid, signal.SIGKILL)
        if self._cgroups is not None:
            self._cgroups.kill(self.worker_id)

    def _mark_gone(self) -> None:
        if not self.gone.done():
            self.gone.set_result(None)

    async def _read_stdout(self) -> None:
        assert self._proc.stdout is not None
        reader = LineReader()
        try:
            while chunk := await self._proc.stdout.read(STDOUT_CHUNK_BYTES):
                try:
                    messages = reader.feed(chunk)
                except ProtocolError as e:
                    # What came before the broken line arrived whole: a RESULT
                    # there answers its job although the worker must go.
                    self._handle_all(e.messages)
                    raise
                self._handle_all(messages)
        except ProtocolError as e:
            self.protocol_error = str(e)
            log.error("worker %d (pid %d) broke the protocol: %s", self.worker_id, self.pid, e)
            self._kill_all()
        finally:
            if self._reply is not None and not self._reply.done():
                self._reply.set_exception(WorkerDied())
            self._mark_gone()

    def _handle_all(self, messages: list[Message]) -> None:
        for message in messages:
            self._handle(message)

    def _handle(self, message: Message) -> None:
        if not self._ready.done():
            self._handle_ready(message)
            return
        if isinstance(message, Progress | Output | Retiring | Raised):
            self._handle_aside(message)
            return
        if isinstance(message, ArenaOutcome):
            message = self._from_arena(message)
        if not isinstance(message, JobOutcome):
            raise ProtocolError(f"unexpected {type(message).__name__} line")
        if self._reply is None or message.job_id != self._job_id or self._reply.done():
            # The caller gave up just as the answer came; the worker is being replaced.
            log.debug("worker %d: ignoring outcome of job %s", self.worker_id, message.job_id)
            return
        if message.status is ResultStatus.MISSING:
            if self._send_again(message.job_id):
                return
            message = JobOutcome(message.job_id, ResultStatus.ERROR, message.outcome)
        self._release_arena()
        self._reply.set_result(message)

    def _handle_aside(self, message: Progress | Output | Retiring | Raised) -> None:
        """A line about the running job that is not its answer."""
        if isinstance(message, Progress):
            if self._on_progress is not None and message.job_id == self._job_id:
                self._on_progress(message)
        elif isinstance(message, Output):
            if self._on_output is not None and message.job_id == self._job_id:
                self._on_output(message)
        elif isinstance(message, Retiring):
            log.info(
                "worker %d (pid %d) asks to be replaced after job %s: %s",
                self.worker_id,
                self.pid,
                message.job_id,
                message.reason,
            )
            self.retiring = message.reason
        elif message.job_id == self._job_id:
            self.raised = message.summary

    def _from_arena(self, message: ArenaOutcome) -> JobOutcome:
        """The outcome the worker left in the arena, copied out: the arena is
        the server's again from this line on, and will be reused."""
        try:
            outcome = self._arena.read(message.span)
        except ValueError as e:
            raise ProtocolError(f"RESULTREF {message.job_id}: {e}") from e
        self._arena_used = max(self._arena_used, message.span.end)
        self.outcomes_from_arena += 1
        return JobOutcome(message.job_id, message.status, outcome)

    def _release_arena(self) -> None:
        """After a job that used more of the arena than is worth keeping."""
        if self._arena_used > ARENA_KEEP_BYTES:
            self._arena.trim(ARENA_KEEP_BYTES)
        self._arena_used = 0

    def _send_again(self, job_id: str) -> bool:
        """The worker lacked the job's function: send it and the job again,
        once; False if there is nothing to send (the call then fails with
        the worker's BAD_REQUEST outcome, which says why).

        The job line is the one sent before: a JOBREF's payload is still in
        the arena, since a worker answers ``missing`` before it writes there.
        """
        if self._resend is None or self._proc.stdin is None or self._proc.stdin.is_closing():
            return False
        job, offers = self._resend
        self._resend = None
        log.warning(
            "worker %d (pid %d) lacked function or object %s for job %s; sending it again",
            self.worker_id,
            self.pid,
            ", ".join(offer.key for offer in offers),
            job_id,
        )
        for offer in offers:
            self._functions.discard(offer.key)
        for message in (*(self._offered(offer) for offer in offers), job):
            for part in encode_parts(message):  # buffered, and drained as the worker reads
                self._proc.stdin.write(part)
                self.bytes_sent += len(part)
        return True

    def _handle_ready(self, message: Message) -> None:
        if not isinstance(message, Ready):
            raise ProtocolError(f"expected READY, got a {type(message).__name__} line")
        if message.version != PROTOCOL_VERSION:
            raise ProtocolError(
                f"the worker speaks protocol version {message.version}, this server "
                f"{PROTOCOL_VERSION}: is another version of worker_proc first on its path?"
            )
        self._ready.set_result(message)

    async def _read_stderr(self) -> None:
        assert self._proc.stderr is not None
        pending = b""
        while chunk := await self._proc.stderr.read(STDERR_CHUNK_BYTES):
            *lines, pending = (pending + chunk).split(b"\n")
            for line in lines:
                self._log_stderr(line, newline=True)
            if len(pending) >= STDERR_CHUNK_BYTES:
                self._log_stderr(pending, newline=False)
                pending = b""
        if pending:
            self._log_stderr(pending, newline=False)

    def _log_stderr(self, line: bytes, newline: bool) -> None:
        if self._output_job is not None:  # in a call: within its cap
            cost = len(line) + LOG_LINE_COST_BYTES
            if cost > self._output_left:
                kept = max(self._output_left - LOG_LINE_COST_BYTES, 0)
                if self._output_dropped == 0 and self._output_left > 0:
                    log.warning(
                        "worker %d (pid %d): job %s wrote over %d bytes to fds 1 and 2; "
                        "the rest is counted, not logged",
                        self.worker_id,
                        self.pid,
                        self._output_job,
                        OUTPUT_CAP_BYTES,
                    )
                self._output_dropped += len(line) + newline - kept
                self._output_left = 0
                if not kept:
                    return
                line = line[:kept]
            else:
                self._output_left -= cost
        text = line.decode(errors="replace").rstrip()
        self._stderr_tail.append(text)
        log.warning("worker %d (pid %d): %s", self.worker_id, self.pid, text)

    def _start_output(self, job_id: str) -> None:
        """From now on, output on fds 1 and 2 is ``job_id``'s, with a fresh cap."""
        self._report_dropped()
        self._output_job, self._output_left = job_id, OUTPUT_CAP_BYTES

    def _report_dropped(self) -> None:
        """Say how much of the current call's output was dropped since the
        last report: at its end, and again for whatever came after."""
        if self._output_dropped:
            log.warning(
                "worker %d (pid %d): dropped %d bytes of output from job %s "
                "(over the %d-byte cap per call)",
                self.worker_id,
                self.pid,
                self._output_dropped,
                self._output_job,
                OUTPUT_CAP_BYTES,
            )
            self._output_dropped = 0


async def _first_done(futures: tuple[asyncio.Future[Any], ...], limit_s: float | None) -> None:
    """Wait until one of ``futures`` is done or ``limit_s`` passes: what
    ``asyncio.wait(FIRST_COMPLETED)`` does, without its overhead on the path
    every job takes."""
    loop = asyncio.get_running_loop()
    wake: asyncio.Future[None] = loop.create_future()

    def on_done(_: object) -> None:
        if not wake.done():
            wake.set_result(None)

    for future in futures:
        future.add_done_callback(on_done)
    timer = loop.call_later(limit_s, on_done, None) if limit_s is not None else None
    try:
        await wake
    finally:
        if timer is not None:
            timer.cancel()
        for future in futures:
            future.remove_done_callback(on_done)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    """Signal the worker's process group (it leads its own session)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, sig)
