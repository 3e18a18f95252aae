"""``pool-server``: parse the command line into a ServerConfig and run it."""

from __future__ import annotations

import argparse
import logging
import os
import sys
from pathlib import Path

from pool_server.app import run
from pool_server.auth import AuthSetupError, ensure_token_file, read_token_file, rotate_token_file
from pool_server.config import (
    AUTH_MODES,
    DEFAULT_GRACE_S,
    DEFAULT_PORT,
    DEFAULT_QUEUE_SIZE,
    DEFAULT_RESULT_TTL_S,
    LOG_LEVELS,
    ServerConfig,
    default_max_queued_bytes,
)
from pool_server.recycling import RecyclePolicy
from pool_server.scaling import DEFAULT_SCALE_DOWN_DELAY_S
from pool_server.sizes import SIZE_HELP, parse_size
from pool_server.state_dir import prepare_state_dir
from pool_server.tls import TlsFiles
from pool_wire.tokens import state_root

EXIT_USAGE = 2


STATE_ROOT_DEFAULT = "$XDG_STATE_HOME/pool-server, else ~/.local/state/pool-server"
STATE_DIR_DEFAULT = f"<state root>/port-PORT, the state root being {STATE_ROOT_DEFAULT}"


def _state_root(parser: argparse.ArgumentParser) -> Path:
    """The state root, looked up only when --state-dir is not given: a user
    with no home directory (a bare container uid) must give one."""
    try:
        return state_root()
    except (RuntimeError, KeyError):  # Path.home() for a uid with no $HOME and no passwd entry
        parser.error("this user has no home directory: give --state-dir (or $XDG_STATE_HOME)")


def parse_args(argv: list[str] | None = None) -> ServerConfig:
    parser = argparse.ArgumentParser(
        prog="pool-server",
        description="Run Python functions for remote clients on a supervised pool of "
        "worker processes, over gRPC.",
        epilog="Example: pool-server --workers 8 --port 50051; `pool-server token` prints the "
        "token clients need (those of the same user find it themselves). "
        "Stop with SIGTERM or Ctrl-C: the server drains (new calls are refused as draining, "
        "GetWorkers and job lookups still answer) until the running calls are done, at most "
        "--grace seconds; a second signal stops it at once.",
    )
    parser.add_argument(
        "--workers",
        type=int,
        help=f"worker processes to keep running: a fixed pool (default: CPU count, "
        f"{os.cpu_count() or 1}, unless --min-workers/--max-workers)",
    )
    parser.add_argument(
        "--host", default="127.0.0.1", help="address to listen on (default: %(default)s)"
    )
    parser.add_argument(
        "--port",
        type=int,
        default=DEFAULT_PORT,
        help="port to listen on; 0 picks a free one (default: %(default)s)",
    )
    parser.add_argument(
        "--metrics-port",
        type=int,
        metavar="P",
        help="also serve Prometheus metrics (/metrics) and a live dashboard (/) over HTTP on "
        "this port, with the same --host, tokens and TLS as the gRPC port; 0 picks a free one "
        "(default: off)",
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
        help="the most seconds running calls get to finish on SIGTERM/SIGINT; the server "
        "stops as soon as they are done (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="where the job journal (and, when given, the token file) lives; one server per "
        f"directory (default: {STATE_DIR_DEFAULT}, so each port lists only its own jobs; "
        "the token file is then the state root's, shared by this user's servers)",
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
    _add_pool_arguments(parser)
    security = parser.add_argument_group(
        "security",
        "Clients need a token unless --auth none: POOL_TOKEN, else the lines of --token-file "
        "(or POOL_TOKEN_FILE), else <state-dir>/token (without --state-dir: the state root's, "
        "shared by this user's servers), made on first start. "
        "`pool-server token [--rotate]` prints (or adds) one; SIGHUP reloads the file.",
    )
    security.add_argument(
        "--auth",
        choices=AUTH_MODES,
        default="token",
        help="require a bearer token on every call but the health check (default: %(default)s)",
    )
    security.add_argument(
        "--token-file",
        type=Path,
        help="accepted tokens, one per line: TOKEN, NAME:TOKEN or NAME:TOKEN:admin",
    )
    security.add_argument("--tls-cert", type=Path, help="serve TLS with this certificate (PEM)")
    security.add_argument("--tls-key", type=Path, help="the certificate's private key (PEM)")
    security.add_argument(
        "--tls-client-ca",
        type=Path,
        help="require client certificates signed by this CA (mutual TLS)",
    )
    security.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow --auth none on an address other hosts can reach",
    )
    parser.add_argument(
        "--max-object-bytes",
        type=_size,
        default=default_max_queued_bytes(),
        metavar="SIZE",
        help="bytes of objects clients may store for their calls to use by reference "
        "(Client.put), in memory until deleted or the server stops "
        "(default: a quarter of memory, %(default)s)",
    )
    parser.add_argument(
        "--workdir",
        type=Path,
        metavar="DIR",
        help="the workers' working directory, and so the first entry of their sys.path, "
        "where depmodules and modules pickled by reference are imported from "
        "(default: the server's working directory)",
    )
    parser.add_argument(
        "--serve-original-api",
        action="store_true",
        help="also serve the original Go server's RemoteExecuteAPI on the same port, so its "
        "clients work unchanged (needs --auth none: they cannot send a token)",
    )
    args = parser.parse_args(argv)
    if args.state_dir is None:
        _state_root(parser)  # a user with no home is asked now, not at start
    autoscaled = args.min_workers is not None or args.max_workers is not None
    if args.workers is not None and autoscaled:
        parser.error(
            "--workers N fixes the pool's size; for a pool that sizes itself to the work, "
            "give --min-workers and --max-workers instead"
        )
    try:
        return ServerConfig(
            workers=args.workers if args.workers is not None else os.cpu_count() or 1,
            min_workers=args.min_workers,
            max_workers=args.max_workers,
            scale_down_delay=args.scale_down_delay,
            recycling=RecyclePolicy(
                max_tasks=args.max_tasks_per_worker,
                max_tasks_jitter=args.max_tasks_jitter,
                max_rss=args.worker_max_rss,
                rss_limit=args.worker_rss_limit,
            ),
            host=args.host,
            port=args.port,
            queue_size=args.queue_size,
            max_queued_bytes=args.max_queued_bytes,
            grace=args.grace,
            log_level=args.log_level,
            state_dir=args.state_dir,
            result_ttl=args.result_ttl,
            auth=args.auth,
            token_file=args.token_file,
            tls=_tls_files(args),
            insecure_no_auth=args.insecure_no_auth,
            metrics_port=args.metrics_port,
            serve_original_api=args.serve_original_api,
            workdir=args.workdir.resolve() if args.workdir is not None else None,
            max_object_bytes=args.max_object_bytes,
        )
    except ValueError as e:
        parser.error(str(e))


def _add_pool_arguments(parser: argparse.ArgumentParser) -> None:
    scaling = parser.add_argument_group(
        "autoscaling",
        "Size the pool to the work: clamp(busy + queued, MIN, MAX) workers, at most two "
        "starting at a time; idle ones go after --scale-down-delay above that. "
        "`pool-client workers --set MIN:MAX` changes the limits while it runs.",
    )
    scaling.add_argument("--min-workers", type=int, metavar="A", help="fewest workers (default 1)")
    scaling.add_argument(
        "--max-workers", type=int, metavar="B", help="most workers (default: CPU count)"
    )
    scaling.add_argument(
        "--scale-down-delay",
        type=float,
        default=DEFAULT_SCALE_DOWN_DELAY_S,
        metavar="S",
        help="seconds the pool stays above its target before idle workers go "
        "(default: %(default)s)",
    )
    recycling = parser.add_argument_group(
        "recycling",
        "Replace workers that still work, between calls, so leaky code cannot eat the "
        "machine; a recycle is not a crash and never interrupts a call.",
    )
    recycling.add_argument(
        "--max-tasks-per-worker",
        type=int,
        metavar="N",
        help="replace a worker after N calls (default: never)",
    )
    recycling.add_argument(
        "--max-tasks-jitter",
        type=int,
        default=0,
        metavar="J",
        help="add 0..J calls to each worker's N, so workers do not all restart at once",
    )
    recycling.add_argument(
        "--worker-max-rss",
        type=_size,
        metavar="SIZE",
        help="soft limit: replace a worker whose RSS is past SIZE after a call, its result "
        f"returned first (SIZE is {SIZE_HELP})",
    )
    recycling.add_argument(
        "--worker-rss-limit",
        type=_size,
        metavar="SIZE",
        help="hard limit: kill a worker whose RSS passes SIZE (sampled every 250 ms); its call "
        "fails with WorkerCrashedError, retried where allowed",
    )


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _tls_files(args: argparse.Namespace) -> TlsFiles | None:
    if args.tls_cert is None and args.tls_key is None:
        if args.tls_client_ca is not None:
            raise ValueError("--tls-client-ca needs --tls-cert and --tls-key")
        return None
    if args.tls_cert is None or args.tls_key is None:
        raise ValueError("TLS needs both --tls-cert and --tls-key")
    return TlsFiles(args.tls_cert, args.tls_key, args.tls_client_ca)


def token_command(argv: list[str]) -> int:
    """``pool-server token [--rotate]``: print the token clients send, making it if needed."""
    parser = argparse.ArgumentParser(
        prog="pool-server token",
        description="Print the token clients of this server send (the token file's first "
        "line), creating the file if it does not exist.",
        epilog="Rotate: pool-server token --rotate, then SIGHUP the server (kill -HUP PID); "
        "remove the old line from the file once no client uses it, and SIGHUP again.",
    )
    parser.add_argument(
        "--state-dir",
        type=Path,
        help="the --state-dir of the server, whose token file is used (default: the state "
        f"root's, which every server without --state-dir uses: {STATE_ROOT_DEFAULT})",
    )
    parser.add_argument("--token-file", type=Path, help="use this token file instead")
    parser.add_argument(
        "--rotate", action="store_true", help="add a new token as the first line, and print it"
    )
    args = parser.parse_args(argv)
    args.state_dir = args.state_dir or _state_root(parser)
    path = args.token_file or args.state_dir / "token"
    try:
        if args.token_file is None:
            prepare_state_dir(args.state_dir)
            ensure_token_file(path)
        token = rotate_token_file(path) if args.rotate else read_token_file(path)[0]
    except (AuthSetupError, OSError) as e:
        print(f"pool-server token: {e}", file=sys.stderr)
        return EXIT_USAGE
    print(token.secret)
    if args.rotate:
        print(
            f"added to {path}; `kill -HUP <server pid>` makes the server accept it",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["token"]:
        return token_command(argv[1:])
    config = parse_args(argv)
    logging.basicConfig(
        level=config.log_level.upper(),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    return run(config)


if __name__ == "__main__":
    sys.exit(main())
