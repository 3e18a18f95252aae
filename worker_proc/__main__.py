"""Entry point of a worker process: ``python -m worker_proc``.

Before any user code runs, the protocol moves off fds 0 and 1 onto private
descriptors: fd 0 becomes /dev/null and fd 1 a copy of fd 2 (the worker's
stderr, which the server logs). A function that prints, calls
``os.write(1, ...)`` or reads stdin therefore cannot corrupt the protocol.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading
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
        try:
            messages = reader.feed(chunk)
        except ProtocolError as e:
            sys.stderr.write(f"worker {os.getpid()}: {e}\n")
            return EXIT_PROTOCOL_ERROR
        while messages:
            message = messages.pop(0)
            if not isinstance(message, JobRequest):
                sys.stderr.write(f"worker {os.getpid()}: unexpected {type(message).__name__}\n")
                return EXIT_PROTOCOL_ERROR
            job_id = message.job_id
            with reporting(job_id, write):
                status, outcome = run_payload(message.payload)
            del message  # let a large payload go before its outcome is written
            write(JobOutcome(job_id, status, outcome))
    return 0  # EOF on the protocol channel: the server is done with us


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
