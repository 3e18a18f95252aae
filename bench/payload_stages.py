"""Where a large payload's round trip goes: each stage of the path timed alone.

Usage::

    python -m bench.payload_stages [--mib 128] [--repeat 3]

Times one ``f(data).compute()`` of an identity function on ``--mib`` MiB of
random bytes against a 2-worker server, then every stage that call goes
through, each alone in this process (the median of ``--repeat``): pickling
and protobuf on the client, base64 lines on the server and in the worker,
the worker's unpickling and pickling, and the two transports (a bare
grpc.aio echo of the same bytes, and a pipe round trip of the base64 line).
The stages' sum against the whole call says how much is overlap or noise;
each stage's share says what removing it would buy.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import Any

from bench._server import echo_median_s, pool_server
from distribute_client import _codec, compute_this
from pool_proto import pool_pb2
from pool_wire.protocol import JobOutcome, JobRequest, LineReader, ResultStatus, encode_parts
from worker_proc.runner import run_payload

PIPE_CHILD = (
    "import os\nwhile chunk := os.read(0, 1 << 20):\n"
    "    view = memoryview(chunk)\n    while view:\n        view = view[os.write(1, view):]\n"
)


def identity(data: bytes) -> bytes:
    return data


def median_seconds(repeat: int, stage: Callable[[], Any]) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        stage()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def read_line(line: bytes) -> Any:
    reader = LineReader()
    view = memoryview(line)
    messages = []
    for start in range(0, len(view), 1 << 20):
        messages += reader.feed(bytes(view[start : start + (1 << 20)]))
    (message,) = messages
    return message


def pipe_seconds(line: bytes, repeat: int) -> float:
    """``line`` to a child process and back through pipes (about a JOB line
    there and its RESULT line back, for an identity call)."""
    child = subprocess.Popen(
        [sys.executable, "-c", PIPE_CHILD], stdin=subprocess.PIPE, stdout=subprocess.PIPE
    )
    assert child.stdin is not None and child.stdout is not None
    stdin, stdout = child.stdin, child.stdout

    def write() -> None:
        stdin.write(line)
        stdin.flush()

    def round_trip() -> None:
        writer = threading.Thread(target=write)
        writer.start()
        received = 0
        while received < len(line):
            chunk = os.read(stdout.fileno(), 1 << 20)
            if not chunk:
                raise RuntimeError("the pipe child exited")
            received += len(chunk)
        writer.join()

    try:
        return median_seconds(repeat, round_trip)
    finally:
        stdin.close()
        child.wait()


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--mib", type=int, default=128, help="(default: %(default)s)")
    parser.add_argument("--repeat", type=int, default=3, help="(default: %(default)s)")
    args = parser.parse_args()
    data = os.urandom(args.mib << 20)
    repeat = args.repeat

    with pool_server(2) as server:
        remote = compute_this(server.address)(identity)
        remote(data).compute()
        whole = median_seconds(repeat, lambda: remote(data).compute())

    call = remote(data)
    payload = call.payload()
    request = pool_pb2.RunRequest(payload=payload).SerializeToString()
    job = JobRequest("j-1", payload)
    job_line = b"".join(encode_parts(job))
    _, outcome = run_payload(payload)
    result = JobOutcome("j-1", ResultStatus.OK, outcome)
    result_line = b"".join(encode_parts(result))
    reply = pool_pb2.RunReply(outcome=outcome).SerializeToString()

    def client_reply() -> Any:
        outcome = pool_pb2.RunReply.FromString(reply).outcome
        return _codec.decode_outcome(outcome, "identity", "here")

    in_process: list[tuple[str, str, Callable[[], Any]]] = [
        ("client", "pickle the call", call.payload),
        (
            "client",
            "protobuf request",
            lambda: pool_pb2.RunRequest(payload=payload).SerializeToString(),
        ),
        ("server", "protobuf request", lambda: pool_pb2.RunRequest.FromString(request).payload),
        ("server", "JOB line: base64", lambda: b"".join(encode_parts(job))),
        ("worker", "JOB line: read, unbase64", lambda: read_line(job_line)),
        ("worker", "unpickle, call, pickle", lambda: run_payload(payload)),
        ("worker", "RESULT line: base64", lambda: b"".join(encode_parts(result))),
        ("server", "RESULT line: read, unbase64", lambda: read_line(result_line)),
        (
            "server",
            "protobuf reply",
            lambda: pool_pb2.RunReply(outcome=outcome).SerializeToString(),
        ),
        ("client", "protobuf reply, unpickle", client_reply),
    ]
    stages = [(where, what, median_seconds(repeat, stage)) for where, what, stage in in_process]
    stages += [
        ("gRPC", "request and reply (bare echo)", echo_median_s(payload, repeat, 1)),
        ("pipes", "JOB line there, RESULT back", pipe_seconds(job_line, repeat)),
    ]
    print(f"machine: {os.cpu_count()} CPUs, Python {sys.version.split()[0]}")
    print(
        f"{args.mib} MiB round trip, f(data).compute() on 2 workers: {whole:.2f} s "
        f"({2 * args.mib / whole:.0f} MiB/s); each stage alone, median of {repeat}:"
    )
    total = sum(seconds for _, _, seconds in stages)
    for where, what, seconds in stages:
        print(f"  {where:7} {what:32} {seconds:6.3f} s  {seconds / whole:5.0%}")
    print(f"  {'':7} {'sum of the stages':32} {total:6.3f} s  {total / whole:5.0%}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
