"""Entry point of a worker process: ``python -m worker_proc``.

Before any user code runs, the protocol moves off fds 0 and 1 onto private
descriptors: fd 0 becomes /dev/null and fd 1 a copy of fd 2 (the worker's
stderr, which the server logs). A function that prints, calls
``os.write(1, ...)`` or reads stdin therefore cannot corrupt the protocol.

A call can leave its worker changed for every later call (issue 9): it may
close fds 0-2 or the protocol's, ignore or block SIGTERM (then the server's
SIGTERM no longer stops it), clear the parent-death signal. After each call
the worker checks what it relies on (:func:`unfit`); if something changed,
it sends RETIRING before the call's RESULT and exits after it, and the
server starts a fresh worker in its slot. Repairing in place would be
guesswork: the damage seen is a sign of damage not seen.

The worker dies with the server three ways, since a call can switch off
each but the last: EOF on the protocol channel (read between calls), the
parent-death signal (a call can clear it with prctl), and a thread that
waits on a pidfd of the server and exits the moment the server does,
however it ended and whatever the call is doing, short of holding the GIL
in C for good. Any of them alone leaves a gap; the thread is what covers a
call that cleared PDEATHSIG and then runs for hours.

The server passes the fd of this worker's shared-memory arena as
``--arena-fd N`` (``pool_wire.arena``): a JOBREF line's payload is read
from it in place, and an outcome over ``ARENA_THRESHOLD_BYTES`` is written
there and answered with RESULTREF. FUNCTION lines fill the worker's cache
of functions (``pool_wire.function_cache``), which payloads with a
``function_hash`` take their function from.

The server never sends a broken line; if one comes anyway, the jobs that
arrived whole before it in the same read are run and answered (the server
awaits them), then the worker exits with ``EXIT_PROTOCOL_ERROR``, since
nothing after the break can be trusted.
"""

from __future__ import annotations

import ctypes
import functools
import os
import select
import signal
import sys
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import BinaryIO

from tblib import pickling_support

from pool_wire import refs
from pool_wire.arena import Arena
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
    ProtocolError,
    Raised,
    Ready,
    ResultStatus,
    Retiring,
    encode_parts,
)
from worker_proc.reporting import reporting
from worker_proc.runner import (
    CachedFunction,
    Functions,
    failure_summary,
    resolve_object,
    run_checked,
)

EXIT_PROTOCOL_ERROR = 3  # the server sent something this worker cannot parse
EXIT_RETIRED = 4  # a call left this worker unfit; the server replaces it
EXIT_SERVER_GONE = 5  # the server exited while this worker ran a call

READ_CHUNK_BYTES = 1024 * 1024  # a large JOB line is decoded this much at a time

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>
_PR_GET_PDEATHSIG = 2

# What the worker needs of a signal: SIGTERM stops it (the server's way to
# end a call), SIGPIPE stays ignored as Python sets it (a write to a closed
# pipe raises instead of killing the worker).
_SIGNALS_NEEDED = {signal.SIGTERM: signal.SIG_DFL, signal.SIGPIPE: signal.SIG_IGN}


@dataclass(frozen=True)
class _Fixture:
    """What the worker relies on, taken before any call runs."""

    fds: dict[int, tuple[int, int]]  # fd -> (st_dev, st_ino) of what it must still be
    watchdog: threading.Thread | None
    pdeathsig: bool  # whether it was set (Linux) and must stay set


@dataclass
class _Session:
    """What lives from one job to the next: how to answer, what to check
    after each call, the arena, the function cache."""

    write: Callable[[Message], None]
    fixture: _Fixture
    arena: Arena | None
    functions: Functions


def main() -> int:
    arena = _arena(sys.argv[1:])
    protocol_in, protocol_out = _claim_protocol_fds()
    for signum, handler in _SIGNALS_NEEDED.items():
        signal.signal(signum, handler)  # a server ignoring SIGTERM must not pass that on
    pdeathsig = _die_with_parent()
    watchdog, pidfd = _watch_server()
    fds = [0, 1, 2, protocol_in, protocol_out.fileno()]
    fds += [fd for fd in (pidfd, arena.fd if arena else None) if fd is not None]
    fixture = _Fixture({fd: _identity(fd) for fd in fds}, watchdog, pdeathsig)
    pickling_support.install()  # exceptions pickle with their tracebacks
    write_lock = threading.Lock()  # progress timers write from other threads

    def write(message: Message) -> None:
        parts = encode_parts(message)
        with write_lock:
            protocol_out.writelines(parts)
            protocol_out.flush()

    session = _Session(write, fixture, arena, Functions())
    refs.set_resolver(functools.partial(resolve_object, session.functions))
    write(Ready(os.getpid(), PROTOCOL_VERSION))
    reader = LineReader()
    while chunk := os.read(protocol_in, READ_CHUNK_BYTES):
        broken = None
        try:
            messages = reader.feed(chunk)
        except ProtocolError as e:
            broken, messages = e, e.messages
        try:
            error = _run_jobs(messages, session) or broken
        except _Retired:
            protocol_out.flush()
            os._exit(EXIT_RETIRED)  # no atexit code of the call's, no teardown on broken fds
        if error is not None:
            sys.stderr.write(f"worker {os.getpid()}: {error}\n")
            return EXIT_PROTOCOL_ERROR
    return 0  # EOF on the protocol channel: the server is done with us


class _Retired(Exception):
    """A call left the worker unfit; its RESULT is sent, and the worker exits."""


def _run_jobs(messages: list[Message], session: _Session) -> str | None:
    """Run and answer each job in turn, keeping each function offered; at a
    message that is neither, stop and say what it was. Raises
    :class:`_Retired` after answering a job that left the worker unfit."""
    while messages:
        message = messages.pop(0)
        if isinstance(message, FunctionBytes):
            entry = CachedFunction(message.pickled)
            session.functions.put(message.key, entry, len(message.pickled))
            continue
        try:
            payload = _payload(message, session.arena)
        except ValueError as e:
            return str(e)
        assert isinstance(message, JobRequest | ArenaJob)
        job_id = message.job_id
        del message  # let a large payload go before its outcome is written
        check = functools.partial(unfit, session.fixture)
        with reporting(job_id, session.write, session.write):
            status, outcome, problem = run_checked(payload, check, session.functions, session.arena)
        del payload
        _answer(job_id, status, outcome, problem, session)
    return None


def _payload(message: Message, arena: Arena | None) -> bytes | memoryview:
    """A job's payload: from its line, or a view of the arena; ValueError
    for a message that is not a job, or a JOBREF outside the arena."""
    if isinstance(message, JobRequest):
        return message.payload
    if not isinstance(message, ArenaJob):
        raise ValueError(f"unexpected {type(message).__name__} line")
    if arena is None:
        raise ValueError(f"JOBREF {message.job_id}, but this worker has no arena")
    return arena.view(message.span)


def _answer(
    job_id: str, status: ResultStatus, outcome: bytes, problem: str | None, session: _Session
) -> None:
    """RESULT (or, for a large outcome, RESULTREF), after RETIRING if the
    call left the worker unfit (``problem``): the server must know that first."""
    if problem is not None:
        session.write(Retiring(job_id, problem))
    summary = failure_summary(status, outcome)
    if summary is not None:
        session.write(Raised(job_id, summary))
    # A ``missing`` answer never goes through the arena: the server resends
    # a JOBREF as it was, so the payload there must stay untouched.
    big = len(outcome) > ARENA_THRESHOLD_BYTES and status is not ResultStatus.MISSING
    if session.arena is not None and big:
        session.write(ArenaOutcome(job_id, status, session.arena.write(outcome)))
    else:
        session.write(JobOutcome(job_id, status, outcome))
    if problem is not None:
        raise _Retired(problem)


def unfit(fixture: _Fixture) -> str | None:
    """What a call changed that the worker needs, in words; None if nothing."""
    for fd, identity in fixture.fds.items():
        try:
            now = _identity(fd)
        except OSError:
            return f"fd {fd} was closed"
        if now != identity:
            return f"fd {fd} now refers to another file"
    for signum, handler in _SIGNALS_NEEDED.items():
        if signal.getsignal(signum) != handler:
            return f"the {signum.name} handler was changed"
    blocked = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    if signal.SIGTERM in blocked:
        return "SIGTERM is blocked"
    if fixture.watchdog is not None and not fixture.watchdog.is_alive():
        return "the thread that watches for the server's exit stopped"
    if fixture.pdeathsig and _pdeathsig() != signal.SIGKILL:
        return "its parent-death signal was changed"
    return None


def _identity(fd: int) -> tuple[int, int]:
    stat = os.fstat(fd)
    return stat.st_dev, stat.st_ino


def _arena(argv: list[str]) -> Arena | None:
    """The arena the server passed (``--arena-fd N``), kept from our children."""
    if len(argv) != 2 or argv[0] != "--arena-fd":
        return None  # started by hand: every payload comes on its line
    fd = int(argv[1])
    os.set_inheritable(fd, False)
    return Arena(fd)


def _claim_protocol_fds() -> tuple[int, BinaryIO]:
    protocol_in = os.dup(0)
    protocol_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)  # fd 0 is /dev/null now; input() gets EOF
    return protocol_in, protocol_out


def _die_with_parent() -> bool:
    """Ask Linux to SIGKILL us when the server dies, even by SIGKILL; False
    where there is no such thing."""
    if not sys.platform.startswith("linux"):
        return False  # elsewhere, EOF on the protocol channel still ends the worker
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the server died before prctl took effect
        os._exit(1)
    return True


def _pdeathsig() -> int:
    value = ctypes.c_int()
    ctypes.CDLL(None, use_errno=True).prctl(_PR_GET_PDEATHSIG, ctypes.byref(value))
    return value.value


def _watch_server() -> tuple[threading.Thread | None, int | None]:
    """A thread that ends the worker when the server exits, and the pidfd it
    waits on; (None, None) where pidfds are missing (not Linux 5.3+).

    A pidfd turns readable when its process exits, so nothing polls; the
    pidfd is taken before READY, while the server is surely alive, and
    refers to that process even if its pid is reused later.
    """
    try:
        pidfd = os.pidfd_open(os.getppid())
    except (AttributeError, OSError):
        return None, None

    def watch() -> None:
        select.select([pidfd], [], [])
        os._exit(EXIT_SERVER_GONE)

    thread = threading.Thread(target=watch, name="server-watchdog", daemon=True)
    thread.start()
    return thread, pidfd


if __name__ == "__main__":
    sys.exit(main())
