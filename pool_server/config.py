"""The server's settings, validated once at start-up."""

from __future__ import annotations

import ipaddress
import os
from dataclasses import dataclass, field
from pathlib import Path

from pool_server.recycling import RecyclePolicy
from pool_server.scaling import DEFAULT_SCALE_DOWN_DELAY_S, WorkerLimits
from pool_server.tls import TlsFiles

LOG_LEVELS = ("debug", "info", "warning", "error")
AUTH_MODES = ("token", "none")

# Calls and jobs waiting for a worker. Each holds its payload in memory (about
# 1 KiB for a small call); a call that finds the queue full waits in its RPC
# (backpressure) and a submit is refused, so the bound trades memory for how
# much work is accepted up front.
DEFAULT_QUEUE_SIZE = 100_000

DEFAULT_PORT = 50051

# How long finished jobs' results stay retrievable.
DEFAULT_RESULT_TTL_S = 7 * 24 * 3600.0


def default_max_queued_bytes() -> int:
    """A quarter of the machine's memory: queued payloads are held in memory."""
    return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") // 4


# How long running calls may take to finish after SIGTERM/SIGINT.
DEFAULT_GRACE_S = 30.0


@dataclass(frozen=True)
class ServerConfig:
    workers: int = os.cpu_count() or 1
    host: str = "127.0.0.1"
    port: int = DEFAULT_PORT
    queue_size: int = DEFAULT_QUEUE_SIZE
    max_queued_bytes: int = field(default_factory=default_max_queued_bytes)
    grace: float = DEFAULT_GRACE_S
    log_level: str = "info"
    # None: <state root>/port-<the port bound> (pool_wire.tokens.port_state_dir),
    # its token the state root's, shared by this user's servers.
    state_dir: Path | None = None
    result_ttl: float = DEFAULT_RESULT_TTL_S
    auth: str = "token"
    token_file: Path | None = None
    tls: TlsFiles | None = None
    insecure_no_auth: bool = False  # serve other hosts without a token, knowingly
    metrics_port: int | None = None  # Prometheus metrics and the dashboard over HTTP; None: off
    # An autoscaled pool between these (either given); None for both: fixed at ``workers``.
    min_workers: int | None = None
    max_workers: int | None = None
    scale_down_delay: float = DEFAULT_SCALE_DOWN_DELAY_S
    recycling: RecyclePolicy = field(default_factory=RecyclePolicy)
    # Also serve the original Go server's RemoteExecuteAPI (pool_server.original_api).
    serve_original_api: bool = False
    workdir: Path | None = None  # the workers' working directory; None: the server's
    # Bytes of objects stored for calls to use by reference (Client.put).
    max_object_bytes: int = field(default_factory=default_max_queued_bytes)

    def __post_init__(self) -> None:
        self._check_pool()
        _check_port("port", self.port)
        if self.metrics_port is not None:
            _check_port("metrics port", self.metrics_port)
        if self.queue_size < 1:
            raise ValueError(f"queue size must be at least 1, got {self.queue_size}")
        if self.max_object_bytes < 0:
            raise ValueError(f"max object bytes must be 0 or more, got {self.max_object_bytes}")
        if self.max_queued_bytes < 1:
            raise ValueError(f"max queued bytes must be at least 1, got {self.max_queued_bytes}")
        if self.grace < 0:
            raise ValueError(f"grace must be 0 or more seconds, got {self.grace}")
        if self.result_ttl <= 0:
            raise ValueError(f"result TTL must be more than 0 seconds, got {self.result_ttl}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")
        if self.auth not in AUTH_MODES:
            raise ValueError(f"auth must be one of {', '.join(AUTH_MODES)}")
        if self.auth == "none" and not self.loopback and not self.insecure_no_auth:
            raise ValueError(
                f"--host {self.host} with --auth none would let anyone who can reach this "
                "machine run code as this server's user; keep the default --auth token "
                "(clients send the token from `pool-server token`), listen on 127.0.0.1, or "
                "pass --insecure-no-auth if the network itself is trusted"
            )

        self._check_features()

    def _check_features(self) -> None:
        if self.workdir is not None and not self.workdir.is_dir():
            raise ValueError(f"--workdir {self.workdir} is not a directory")
        if self.serve_original_api and self.auth != "none":
            raise ValueError(
                "--serve-original-api needs --auth none: the original's clients cannot send "
                "a token (and off loopback, --insecure-no-auth too)"
            )

    def _check_pool(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        self.limits  # noqa: B018 - WorkerLimits checks itself
        if self.scale_down_delay < 0:
            raise ValueError(
                f"scale-down delay must be 0 or more seconds, got {self.scale_down_delay}"
            )

    @property
    def autoscaled(self) -> bool:
        return self.min_workers is not None or self.max_workers is not None

    @property
    def limits(self) -> WorkerLimits:
        """The pool's size limits: ``--min-workers`` (default 1) to
        ``--max-workers`` (default: CPU count), or ``workers`` twice."""
        if not self.autoscaled:
            return WorkerLimits(self.workers, self.workers)
        low = self.min_workers if self.min_workers is not None else 1
        high = self.max_workers if self.max_workers is not None else max(os.cpu_count() or 1, low)
        return WorkerLimits(low, high)

    @property
    def loopback(self) -> bool:
        """Whether only this machine can reach the listening address."""
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:  # a host name: it may resolve to anything
            return False

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"


def _check_port(what: str, port: int) -> None:
    if not 0 <= port <= 65535:
        raise ValueError(f"{what} must be 0..65535 (0 picks a free one), got {port}")
