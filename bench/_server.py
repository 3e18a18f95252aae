"""Start a throwaway pool-server, or time the bare echo floor, for a benchmark."""

from __future__ import annotations

import os
import secrets
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import grpc
import uvloop

from bench.suite.systems.grpc_echo_server import MESSAGE_OPTIONS, METHOD, SERVICE

STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Server:
    address: str
    pid: int
    state_dir: Path

    def rss_mib(self) -> float:
        """The server process's resident memory, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")


@contextmanager
def pool_server(workers: int | None, *extra: str) -> Iterator[Server]:
    """A pool-server on a free port with a temporary state dir; SIGTERMed at the end.
    ``workers`` None leaves the pool's size to ``extra`` (``--max-workers``).

    It requires a token, as by default: this process (and its children, the
    peer suite's clients) send the one in $POOL_TOKEN, set here if unset.
    """
    os.environ.setdefault("POOL_TOKEN", secrets.token_urlsafe(32))
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as state_dir:
        command = [sys.executable, "-m", "pool_server", "--port", "0"]
        command += ["--workers", str(workers)] if workers is not None else []
        command += ["--log-level", "warning", "--state-dir", state_dir, *extra]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()  # the server gives up by itself if never ready
            if "serving on" not in line:
                raise RuntimeError(f"pool-server did not start (exit code {proc.wait()}): {line!r}")
            yield Server(line.split("serving on ", 1)[1].split()[0], proc.pid, Path(state_dir))
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()


def echo_median_s(request: bytes, calls: int, warm_up: int, *flags: str) -> float:
    """The median round trip of ``request`` through the suite's bare grpc.aio
    echo server (``flags``: ``--pipe`` relays each one through a child's pipes)."""
    command = [sys.executable, "-m", "bench.suite.systems.grpc_echo_server", *flags]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    try:
        assert proc.stdout is not None
        address = f"127.0.0.1:{int(proc.stdout.readline().split()[1])}"

        async def measure() -> float:
            async with grpc.aio.insecure_channel(address, options=MESSAGE_OPTIONS) as channel:
                echo = channel.unary_unary(f"/{SERVICE}/{METHOD}")
                for _ in range(warm_up):
                    await echo(request)
                samples = []
                for _ in range(calls):
                    start = time.perf_counter()
                    await echo(request)
                    samples.append(time.perf_counter() - start)
            return statistics.median(samples)

        return uvloop.run(measure())
    finally:
        proc.terminate()
        proc.wait()
