"""The server's settings, validated once at start-up."""

from __future__ import annotations

import os
from dataclasses import dataclass

LOG_LEVELS = ("debug", "info", "warning", "error")

# Queued calls beyond the busy workers. Each holds its payload in memory, and
# a call that cannot enter the queue waits in its RPC instead (backpressure),
# so the bound trades memory for how many calls are accepted up front.
DEFAULT_QUEUE_SIZE = 1000

# How long running calls may take to finish after SIGTERM/SIGINT.
DEFAULT_GRACE_S = 30.0


@dataclass(frozen=True)
class ServerConfig:
    workers: int = os.cpu_count() or 1
    host: str = "127.0.0.1"
    port: int = 50051
    queue_size: int = DEFAULT_QUEUE_SIZE
    grace: float = DEFAULT_GRACE_S
    log_level: str = "info"

    def __post_init__(self) -> None:
        if self.workers < 1:
            raise ValueError(f"workers must be at least 1, got {self.workers}")
        if not 0 <= self.port <= 65535:
            raise ValueError(f"port must be 0..65535 (0 picks a free one), got {self.port}")
        if self.queue_size < 1:
            raise ValueError(f"queue size must be at least 1, got {self.queue_size}")
        if self.grace < 0:
            raise ValueError(f"grace must be 0 or more seconds, got {self.grace}")
        if self.log_level not in LOG_LEVELS:
            raise ValueError(f"log level must be one of {', '.join(LOG_LEVELS)}")

    @property
    def address(self) -> str:
        return f"[{self.host}]:{self.port}" if ":" in self.host else f"{self.host}:{self.port}"
