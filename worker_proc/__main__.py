"""Entry point of a worker process: ``python -m worker_proc``.

Before any user code runs, the protocol moves off fds 0 and 1 onto private
descriptors: fd 0 becomes /dev/null and fd 1 a copy of fd 2 (the worker's
stderr, which the server logs). A function that prints, calls
``os.write(1, ...)`` or reads stdin therefore cannot corrupt the protocol.

The server never sends a broken line; if one comes anyway, the jobs that
arrived whole before it in the same read are run and answered (the server
awaits them), then the worker exits with ``EXIT_PROTOCOL_ERROR``, since
nothing after the break can be trusted.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import BinaryIO

from tblib import pickling_support

from pool_wire.protocol import (
    PROTOCOL_VERSION,
    JobOutcome,
    JobRequest,
    LineReader,
    Message,
    ProtocolError,
    Ready,
    encode_parts,
)
from worker_proc.reporting import reporting
from worker_proc.runner import run_payload

EXIT_PROTOCOL_ERROR = 3  # the server sent something this worker cannot parse

READ_CHUNK_BYTES = 1024 * 1024  # a large JOB line is decoded this much at a time

_PR_SET_PDEATHSIG = 1  # from <sys/prctl.h>


def main() -> int:
    protocol_in, protocol_out = _claim_protocol_fds()
    _die_with_parent()
    pickling_support.install()  # exceptions pickle with their tracebacks
    write_lock = threading.Lock()  # progress timers write from other threads

    def write(message: Message) -> None:
        parts = encode_parts(message)
        with write_lock:
            protocol_out.writelines(parts)
            protocol_out.flush()

    write(Ready(os.getpid(), PROTOCOL_VERSION))
    reader = LineReader()
    while chunk := os.read(protocol_in, READ_CHUNK_BYTES):
        broken = None
        try:
            messages = reader.feed(chunk)
        except ProtocolError as e:
            broken, messages = e, e.messages
        error = _run_jobs(messages, write) or broken
        if error is not None:
            sys.stderr.write(f"worker {os.getpid()}: {error}\n")
            return EXIT_PROTOCOL_ERROR
    return 0  # EOF on the protocol channel: the server is done with us


def _run_jobs(messages: list[Message], write: Callable[[Message], None]) -> str | None:
    """Run and answer each job in turn; at a message that is not a job, stop
    and say what it was."""
    while messages:
        message = messages.pop(0)
        if not isinstance(message, JobRequest):
            return f"unexpected {type(message).__name__} line"
        job_id = message.job_id
        with reporting(job_id, write):
            status, outcome = run_payload(message.payload)
        del message  # let a large payload go before its outcome is written
        write(JobOutcome(job_id, status, outcome))
    return None


def _claim_protocol_fds() -> tuple[int, BinaryIO]:
    protocol_in = os.dup(0)
    protocol_out = os.fdopen(os.dup(1), "wb")
    devnull = os.open(os.devnull, os.O_RDONLY)
    os.dup2(devnull, 0)
    os.close(devnull)
    os.dup2(2, 1)
    sys.stdin = open(os.devnull)  # fd 0 is /dev/null now; input() gets EOF
    return protocol_in, protocol_out


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL us when the server dies, even by SIGKILL."""
    if not sys.platform.startswith("linux"):
        return  # elsewhere, EOF on the protocol channel still ends the worker
    libc = ctypes.CDLL(None, use_errno=True)
    libc.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() == 1:  # the server died before prctl took effect
        os._exit(1)


if __name__ == "__main__":
    sys.exit(main())
