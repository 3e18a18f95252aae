"""Start a throwaway pool-server for a benchmark."""

from __future__ import annotations

import signal
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

STOP_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Server:
    address: str
    pid: int

    def rss_mib(self) -> float:
        """The server process's resident memory, from /proc."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")


@contextmanager
def pool_server(workers: int, *extra: str) -> Iterator[Server]:
    """A pool-server on a free port with a temporary state dir; SIGTERMed at the end."""
    with tempfile.TemporaryDirectory(prefix="pool-bench-") as state_dir:
        command = [sys.executable, "-m", "pool_server", "--workers", str(workers), "--port", "0"]
        command += ["--log-level", "warning", "--state-dir", state_dir, *extra]
        proc = subprocess.Popen(command, stdout=subprocess.PIPE)
        try:
            assert proc.stdout is not None
            line = proc.stdout.readline().decode()  # the server gives up by itself if never ready
            if "serving on" not in line:
                raise RuntimeError(f"pool-server did not start (exit code {proc.wait()}): {line!r}")
            yield Server(line.split("serving on ", 1)[1].split()[0], proc.pid)
        finally:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(STOP_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            if proc.stdout is not None:
                proc.stdout.close()
