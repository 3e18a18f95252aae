"""``pool-server``: parse the command line into a ServerConfig and run it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pool_server.app import run
from pool_server.config import (
    DEFAULT_GRACE_S,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RESULT_TTL_S,
    LOG_LEVELS,
    ServerConfig,
    default_max_queued_bytes,
    default_state_dir,
)

EXIT_USAGE = 2


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="pool-server",
        description="Run Python functions for remote clients on a supervised pool of "
        "worker processes, over gRPC.",
        epilog="Example: pool-server --workers 8 --port 50051. "
        "Stop with SIGTERM or Ctrl-C: running calls get --grace seconds to finish.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=os.cpu_count() or 1,
        help="worker processes to keep running (default: CPU count, %(default)s)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=50051,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--queue-size",
        type=int,
        default=DEFAULT_QUEUE_SIZE,
        help="calls that may wait for a worker; further calls wait for room (default: %(default)s)",
    )
    parser.add_argument(
        "--max-queued-bytes",
        type=int,
        default=default_max_queued_bytes(),
        help="payload bytes that may wait for a worker; a call beyond it waits for room and a "
        "submit is refused (default: a quarter of memory, %(default)s)",
    )
    parser.add_argument(
        "--grace",
        type=float,
        default=DEFAULT_GRACE_S,
        help="seconds running calls get to finish on SIGTERM/SIGINT (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        default=default_state_dir(),
        help="where the job journal lives; one server per directory (default: %(default)s)",
    )
    parser.add_argument(
        "--result-ttl",
        type=float,
        default=DEFAULT_RESULT_TTL_S,
        help="seconds finished jobs' results stay retrievable (default: %(default)s, a week)",
    )
    parser.add_argument(
        "--log-level", choices=LOG_LEVELS, default="info", help="(default: %(default)s)"
    )
    args = parser.parse_args(argv)
    try:
        return ServerConfig(
            workers=args.workers,
            host=args.host,
            port=args.port,
            queue_size=args.queue_size,
            max_queued_bytes=args.max_queued_bytes,
            grace=args.grace,
            log_level=args.log_level,
            state_dir=args.state_dir,
            result_ttl=args.result_ttl,
        )
    except ValueError as e:
        parser.error(str(e))


def main(argv: list[str] | None = None) -> int:
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
