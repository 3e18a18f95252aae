"""Fixtures that start the real pool-server as a subprocess on 127.0.0.1:0.

The server prints its bound address once its workers are ready; fixtures
read that line instead of probing for a free port, and stop every server
(and check no worker outlives it) when the test ends.
"""

from __future__ import annotations

import contextlib
import os
import re
import secrets
import select
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from distribute_client import Client, PoolError

# Servers require a token by default. Every server and client of the suite
# (subprocesses included) shares this one through the environment; tests of
# the token lookup itself set up their own.
os.environ["POOL_TOKEN"] = secrets.token_urlsafe(32)

# For tests that call the raw gRPC stubs: the metadata the client adds.
AUTH_METADATA = (("authorization", f"Bearer {os.environ['POOL_TOKEN']}"),)

STARTUP_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0
SERVER_COMMAND = (sys.executable, "-m", "pool_server")
_STARTUP_LINE = re.compile(rb"serving on (\S+):(\d+) with (\d+)(?:\.\.\d+)? workers?")


def pid_alive(pid: int) -> bool:
    """True if ``pid`` is a live process (zombies count as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):  # gone, or going while it was read
        return False
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


def wait_until(condition: Callable[[], bool], timeout: float, what: str) -> None:
    """Poll ``condition`` until it holds; fail the test with ``what`` if it never does."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out after {timeout} s waiting for {what}")
        time.sleep(0.02)


@dataclass
class ServerProcess:
    proc: subprocess.Popen[bytes]
    address: str
    log_path: Path
    worker_pids: set[int] = field(default_factory=set)
    token: str | None = field(default=None, repr=False)  # None: the environment's

    def client(self) -> Client:
        return Client(self.address, token=self.token)

    def pids(self) -> list[int]:
        """Current worker pids (remembered, so stop() can check they all died)."""
        pids = [w.pid for w in self.client().workers() if w.pid]
        self.worker_pids.update(pids)
        return pids

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def stop(self, sig: int = signal.SIGTERM) -> int:
        """Signal the server, wait for it, and check that no worker outlived it."""
        if self.proc.poll() is None:
            with contextlib.suppress(PoolError):  # it may be stopping already
                self.pids()
            self.proc.send_signal(sig)
        try:
            code = self.proc.wait(STOP_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            pytest.fail(f"server did not stop within {STOP_TIMEOUT_S} s of signal {sig}")
        finally:
            if self.proc.stdout is not None:
                self.proc.stdout.close()
        wait_until(
            lambda: not any(pid_alive(p) for p in self.worker_pids),
            10.0,
            f"workers {sorted(self.worker_pids)} to exit after the server",
        )
        return code


def launch_server(
    log_path: Path,
    *args: str,
    cwd: Path | None = None,
    env: dict[str, str] | None = None,
    token: str | None = None,
    prefix: Sequence[str] = (),
) -> ServerProcess:
    """Start a server; its journal lives next to its log unless ``args`` say
    otherwise. ``env`` replaces the environment; ``token`` is what the
    fixture's own clients send (default: the environment's). A server given
    ``--tls-cert`` gets a ``grpcs://`` address (its CA from $POOL_TLS_CA).
    ``prefix`` goes before the server's command, e.g. ``nsenter`` and its
    options to run it in a network namespace (tests/netns.py); it must exec
    the server, not fork it, so that signals reach the server itself."""
    if "--state-dir" not in args:
        args = (*args, "--state-dir", str(log_path.with_suffix(".state")))
    log = log_path.open("ab")
    proc = subprocess.Popen(
        [*prefix, *SERVER_COMMAND, "--port", "0", *args],
        stdout=subprocess.PIPE,
        stderr=log,
        cwd=cwd,
        env=env,
    )
    log.close()
    assert proc.stdout is not None
    ready, _, _ = select.select([proc.stdout], [], [], STARTUP_TIMEOUT_S)
    line = proc.stdout.readline() if ready else b""
    match = _STARTUP_LINE.search(line)
    if match is None:
        proc.kill()
        proc.wait()
        pytest.fail(f"server did not start: {line!r}\n{log_path.read_text(errors='replace')}")
    scheme = "grpcs://" if "--tls-cert" in args else ""
    address = f"{scheme}{match[1].decode()}:{match[2].decode()}"
    server = ServerProcess(proc, address, log_path, token=token)
    try:
        server.pids()
    except PoolError as e:  # it said it serves, then did not answer: say how it ended
        time.sleep(0.5)
        code = proc.poll()
        proc.kill()
        proc.wait()
        proc.stdout.close()
        pytest.fail(
            f"server printed {line!r} but then did not answer ({e}); exit code {code} "
            f"(negative: killed by that signal)\n{log_path.read_text(errors='replace')}"
        )
    return server


StartServer = Callable[..., ServerProcess]


@pytest.fixture
def start_server(tmp_path: Path) -> Iterator[StartServer]:
    """Factory: ``start_server("--workers", "2")``; every server is stopped after the test."""
    servers: list[ServerProcess] = []

    def start(
        *args: str,
        cwd: Path | None = None,
        env: dict[str, str] | None = None,
        token: str | None = None,
    ) -> ServerProcess:
        log_path = tmp_path / f"server{len(servers)}.log"
        server = launch_server(log_path, *args, cwd=cwd, env=env, token=token)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerProcess]:
    """One 2-worker server shared by a module's tests that do not break it."""
    log_path = tmp_path_factory.mktemp("server") / "server.log"
    shared = launch_server(log_path, "--workers", "2")
    yield shared
    assert shared.stop() == 0


@pytest.fixture
def pool_env(server: ServerProcess, monkeypatch: pytest.MonkeyPatch) -> str:
    """Point the default client address ($POOL_SERVER) at the shared server."""
    monkeypatch.setenv("POOL_SERVER", server.address)
    return server.address


def all_idle(server: ServerProcess, workers: int) -> Callable[[], bool]:
    def check() -> bool:
        states = [w.state for w in server.client().workers()]
        return states == ["idle"] * workers

    return check
