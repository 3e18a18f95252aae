"""A private ``redis-server`` on a free loopback port, for Celery's broker and results.

Not persisted (no RDB, no AOF): it lives for one session. Redis's pub/sub
output-buffer limit is lifted because Celery's Redis result backend publishes
each whole result on a channel, and Redis drops a subscriber once 32 MiB are
pending, which a single large result exceeds.
"""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from bench.suite.adapter import free_port, rss_mib

READY_TIMEOUT_S = 10.0
STOP_TIMEOUT_S = 10.0
TRIES = 3  # the free port may be taken between choosing and binding it


def ping(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1.0) as s:
            s.sendall(b"PING\r\n")
            return s.recv(16).startswith(b"+PONG")
    except OSError:
        return False


class RedisServer:
    def __init__(self) -> None:
        self._proc: subprocess.Popen[bytes] | None = None
        self.url = ""

    def start(self) -> str:
        """Start it; its ``redis://`` URL."""
        binary = shutil.which("redis-server")
        if binary is None:
            raise RuntimeError("redis-server not found (Debian: apt-get install redis-server)")
        for _ in range(TRIES):
            port = free_port()
            command = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            command += ["--appendonly", "no", "--loglevel", "warning"]
            command += ["--client-output-buffer-limit", "pubsub 0 0 0"]
            self._proc = subprocess.Popen(command, stdout=subprocess.DEVNULL)
            deadline = time.monotonic() + READY_TIMEOUT_S
            while self._proc.poll() is None and time.monotonic() < deadline:
                if ping(port):
                    self.url = f"redis://127.0.0.1:{port}/0"
                    return self.url
                time.sleep(0.05)
            self.stop()
        raise RuntimeError(f"redis-server did not start in {TRIES} tries")

    def stop(self) -> None:
        if self._proc is None:
            return
        self._proc.terminate()
        try:
            self._proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self._proc.kill()
            self._proc.wait()
        self._proc = None

    def rss_mib(self) -> float | None:
        return rss_mib(self._proc.pid) if self._proc is not None else None
