"""Run the daemon: the worker pool, the gRPC server, signals and shutdown.

Stopping (issue 15): the first SIGTERM or SIGINT starts a drain. The port
stays open: new calls and submits are refused (UNAVAILABLE, "the server is
draining") while GetWorkers, job lookups and cancels still answer, so an
operator can see what the stop waits for. The drain ends as soon as the
running work is done, at the latest after ``--grace``, or at once on a
second signal; then the streams still open are ended and the port closed.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import resource
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING

import grpc
import uvloop
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from pool_proto import pool_pb2, pool_pb2_grpc
from pool_server.auth import Authenticator, AuthSetupError, TokenStore, reload_on_sighup
from pool_server.bind import BindError, listen
from pool_server.config import DEFAULT_PORT, ServerConfig
from pool_server.journal import JOURNAL_FILE, Journal, JournalError
from pool_server.journal_writer import JournalWriter
from pool_server.metrics import PoolMetrics
from pool_server.service import PoolService
from pool_server.state_dir import lock_state_dir, prepare_state_dir
from pool_server.supervisor import WorkerPool, open_pool
from pool_server.tls import TlsSetupError
from pool_server.tracker import JobTracker
from pool_wire.limits import GRPC_MESSAGE_OPTIONS
from pool_wire.tokens import port_state_dir, state_root

if TYPE_CHECKING:
    from pool_server.web import MetricsPort

log = logging.getLogger("pool_server")

EXIT_OK = 0
EXIT_BIND_FAILED = 3  # the address is taken or not ours to listen on
EXIT_WORKERS_FAILED = 4  # the workers never became ready
EXIT_STATE_UNUSABLE = 5  # the state dir is locked by another server, or the journal unreadable
EXIT_AUTH_UNUSABLE = 6  # the tokens or TLS files cannot be read or trusted

# How long the initial workers may take to say READY before the server gives
# up and exits, instead of serving with a pool that cannot run anything.
STARTUP_TIMEOUT_S = 60.0

# Once the drain is over, every call is answered; the answers get this long
# to leave before gRPC cancels whatever RPCs are left.
SHUTDOWN_SLACK_S = 2.0

# gRPC core cancels calls that arrive faster than the asyncio server accepts
# them once more than 1,000 are pending (3,000 hard), which a burst of a few
# thousand concurrent calls on one channel reaches. The job queue is this
# server's backpressure, so gRPC's own limit is raised out of its way.
MAX_PENDING_RPCS = 1_000_000

GRPC_OPTIONS = (
    *GRPC_MESSAGE_OPTIONS,
    ("grpc.so_reuseport", 0),  # a second server on a taken port must fail, not share it
    ("grpc.server.max_pending_requests", MAX_PENDING_RPCS),
    ("grpc.server.max_pending_requests_hard_limit", MAX_PENDING_RPCS),
    # Clients of several servers ping every half second to notice a cut link
    # within a second (distribute_client._servers.KEEPALIVE_OPTIONS).
    ("grpc.keepalive_permit_without_calls", 1),
    ("grpc.http2.min_ping_interval_without_data_ms", 250),
    ("grpc.http2.max_ping_strikes", 0),
)

SERVICE_NAME = pool_pb2.DESCRIPTOR.services_by_name["Pool"].full_name


def run(config: ServerConfig) -> int:
    """Serve until SIGTERM or SIGINT; return the process exit code."""
    _raise_open_file_limit()
    code: int = uvloop.run(_serve(config))
    # Everything is stopped; a second SIGTERM arriving now must not turn a
    # clean exit into death by signal.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, signal.SIG_IGN)
    return code


def _raise_open_file_limit() -> None:
    """Every client connection holds a file descriptor, and the usual soft
    limit of 1,024 would stop the server from accepting its thousandth client
    (the connection just hangs); take the hard limit, as most daemons do."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):  # refused: keep what we have
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def _serve(config: ServerConfig) -> int:
    """Tokens, then the port, then the state dir: the default one is named
    after the port bound (``--port 0`` picks it), and holds the token only
    when given (by default every server of this user shares the state
    root's token, which the clients of this user find for any port)."""
    started = time.monotonic()
    stop, hurry = _stop_on_signals()
    token_dir = config.state_dir or state_root()
    try:
        prepare_state_dir(token_dir)
    except OSError as e:
        log.error("%s", e)
        return EXIT_STATE_UNUSABLE
    try:
        tokens = _load_tokens(config, token_dir)
    except AuthSetupError as e:
        log.error("%s", e)
        return EXIT_AUTH_UNUSABLE
    metrics = PoolMetrics() if config.metrics_port is not None else None
    interceptors = [metrics.grpc] if metrics is not None else []  # first: refusals count too
    server = grpc.aio.server(
        interceptors=[*interceptors, Authenticator(tokens)], options=GRPC_OPTIONS
    )
    try:
        port = listen(server, config)
    except TlsSetupError as e:
        log.error("%s", e)
        return EXIT_AUTH_UNUSABLE
    except BindError as e:
        log.error("%s", e)
        return EXIT_BIND_FAILED
    state_dir = config.state_dir or _default_state_dir(token_dir, port, config.port)
    try:
        prepare_state_dir(state_dir)
        lock = lock_state_dir(state_dir)
    except OSError as e:
        log.error("%s", e)
        await server.stop(None)
        return EXIT_STATE_UNUSABLE
    try:
        journal = Journal(state_dir)
    except JournalError as e:
        log.error("%s", e)
        lock.__exit__(None, None, None)
        await server.stop(None)
        return EXIT_STATE_UNUSABLE
    with lock:
        writer = JournalWriter(journal)
        try:
            return await _serve_journaled(
                config, tokens, writer, stop, hurry, started, (server, port, metrics)
            )
        finally:
            await writer.close()  # after the pool: its last changes are journaled too


def _default_state_dir(root: Path, port: int, asked: int) -> Path:
    """``<root>/port-<port>``; but before each port had its own, every
    server's journal was the state root's, and the server of the default
    port (where the earlier one most likely ran) goes on with it, jobs and
    all, until its own exists."""
    own = port_state_dir(port)
    old = root / JOURNAL_FILE
    if old.exists() and port == DEFAULT_PORT and not (own / JOURNAL_FILE).exists():
        log.info("going on with the journal an earlier version left in %s", root)
        return root
    if old.exists():
        log.warning(
            "%s holds the journal of an earlier version's server; this one keeps its jobs "
            "in %s (start one with --state-dir %s to read the old jobs)",
            root,
            own,
            root,
        )
    if asked == 0:
        log.warning(
            "--port 0 without --state-dir: this server's jobs are journaled in %s, which a "
            "restart on another port does not read; give --state-dir to keep durable jobs "
            "across restarts",
            own,
        )
    return own


async def _serve_journaled(
    config: ServerConfig,
    tokens: TokenStore | None,
    writer: JournalWriter,
    stop: asyncio.Event,
    hurry: asyncio.Event,
    started: float,
    bound: tuple[grpc.aio.Server, int, PoolMetrics | None],
) -> int:
    server, port, metrics = bound
    _warn_if_exposed(config)

    async with open_pool(
        config.limits,
        config.queue_size,
        config.max_queued_bytes,
        config.recycling,
        config.scale_down_delay,
        config.workdir,
    ) as pool:
        tracker = JobTracker(pool, writer, config.result_ttl)
        try:
            await tracker.recover()
        except JournalError as e:
            log.error("cannot recover the jobs in the journal: %s", e)
            return EXIT_STATE_UNUSABLE
        if not await _wait_ready(pool, stop):
            return EXIT_OK if stop.is_set() else EXIT_WORKERS_FAILED
        service = PoolService(pool, tracker, config.max_object_bytes)
        try:
            web = await _open_metrics_port(config, tokens, metrics, pool, tracker)
        except TlsSetupError as e:
            log.error("%s", e)
            return EXIT_AUTH_UNUSABLE
        except OSError as e:
            log.error("cannot listen on %s:%s for metrics: %s", config.host, config.metrics_port, e)
            return EXIT_BIND_FAILED
        health_servicer = await _start_grpc(server, service, pool, config.serve_original_api)
        print(
            f"pool-server: serving on {config.host}:{port} with {_pool_summary(config)} "
            f"(pid {os.getpid()}; {_security_summary(config, tokens)}"
            f"{f'; metrics on {web.url}' if web else ''}"
            f"{'; the original RemoteExecuteAPI too' if config.serve_original_api else ''})",
            flush=True,
        )
        expiry = asyncio.create_task(tracker.expire_forever(), name="expiry")
        await stop.wait()
        expiry.cancel()
        log.info(
            "draining: refusing new calls, still answering GetWorkers and job lookups; "
            "running work gets up to --grace %.3g s (signal again to stop at once)",
            config.grace,
        )
        await health_servicer.enter_graceful_shutdown()
        service.drain()
        await pool.shut_down(config.grace, hurry)
        service.close()  # every call is answered: end the streams and the waits
        await server.stop(SHUTDOWN_SLACK_S)
        if web is not None:
            await web.close()

    log.info(
        "stopped after %.0f s: %d calls answered, %d failed, %d jobs submitted, %d worker restarts",
        time.monotonic() - started,
        service.calls_answered,
        service.calls_failed,
        service.jobs_submitted,
        sum(w.restarts for w in pool.workers),
    )
    return EXIT_OK


async def _open_metrics_port(
    config: ServerConfig,
    tokens: TokenStore | None,
    metrics: PoolMetrics | None,
    pool: WorkerPool,
    tracker: JobTracker,
) -> MetricsPort | None:
    """The metrics port, serving; None without --metrics-port."""
    if metrics is None:
        return None
    from pool_server.web import MetricsPort  # aiohttp takes 0.1 s to import: only when used

    return await MetricsPort.open(config, tokens, metrics, pool, tracker)


def _pool_summary(config: ServerConfig) -> str:
    """``4 workers``, ``1 worker``, or ``1..8 workers (autoscaled)``."""
    limits = config.limits
    if config.autoscaled:
        return f"{limits.min}..{limits.max} workers (autoscaled)"
    return f"{limits.min} worker{'' if limits.min == 1 else 's'}"


def _load_tokens(config: ServerConfig, token_dir: Path) -> TokenStore | None:
    """The accepted tokens (None with --auth none), reloaded on SIGHUP."""
    if config.auth == "none":
        return None
    tokens = TokenStore.load(config.token_file, token_dir)
    reload_on_sighup(tokens)
    return tokens


def _warn_if_exposed(config: ServerConfig) -> None:
    if config.loopback:
        return
    if config.auth == "none":
        log.warning(
            "serving %s with --auth none (--insecure-no-auth): anyone who can reach it "
            "runs code as this server's user",
            config.address,
        )
    elif config.tls is None:
        log.warning(
            "serving %s without TLS: tokens, calls and results travel in clear text; "
            "give --tls-cert and --tls-key",
            config.address,
        )


def _security_summary(config: ServerConfig, tokens: TokenStore | None) -> str:
    auth = f"tokens from {tokens.source}" if tokens is not None else "no auth"
    if config.tls is None:
        return auth
    return f"{auth}, TLS" + (" with client certificates" if config.tls.client_ca else "")


async def _start_grpc(
    server: grpc.aio.Server, service: PoolService, pool: WorkerPool, original_api: bool
) -> health.aio.HealthServicer:
    pool_pb2_grpc.add_PoolServicer_to_server(service, server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    services = [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME]
    if original_api:
        # Imported only when served: its messages would clash with a copy of
        # the original's own stubs loaded in the same process.
        from pool_server import original_api as original

        services.append(original.add_to_server(server, service, pool))
    reflection.enable_server_reflection(services, server)
    await server.start()
    for name in ("", SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    return health_servicer


def _stop_on_signals() -> tuple[asyncio.Event, asyncio.Event]:
    """Events set by the first SIGTERM or SIGINT (stop gracefully) and by the
    second (stop now, without waiting out the grace)."""
    stop, hurry = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if stop.is_set():
            log.info("%s again: stopping without waiting for running calls", sig.name)
            hurry.set()
        stop.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal, sig)
    return stop, hurry


async def _wait_ready(pool: WorkerPool, stop: asyncio.Event) -> bool:
    """Wait for every worker's first READY; False if stopped or timed out first."""
    ready = asyncio.ensure_future(pool.wait_ready())
    stopped = asyncio.ensure_future(stop.wait())
    try:
        done, _ = await asyncio.wait(
            (ready, stopped), timeout=STARTUP_TIMEOUT_S, return_when=asyncio.FIRST_COMPLETED
        )
    finally:
        ready.cancel()
        stopped.cancel()
    if stopped in done:
        log.info("stopped while the workers were starting")
        return False
    if ready not in done:
        log.error("workers not ready after %.0f s; see the errors above", STARTUP_TIMEOUT_S)
        return False
    return True
