"""The daemon's life: start-up, health, bad requests, signals, no orphans."""

from __future__ import annotations

import asyncio
import pwd
import resource
import signal
import subprocess
import sys
import time
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from distribute_client import ProtocolError, ServerUnavailableError, compute_this
from pool_proto import pool_pb2, pool_pb2_grpc
from pool_server.cli import parse_args
from pool_wire.payload import CallOutcome, OutcomeStatus, loads_outcome

from .conftest import (
    AUTH_METADATA,
    SERVER_COMMAND,
    ServerProcess,
    StartServer,
    pid_alive,
    wait_until,
)


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def test_health_service_reports_serving(server: ServerProcess) -> None:
    """The standard gRPC health service says SERVING for the server and the Pool service."""
    with grpc.insecure_channel(server.address) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        for service in ("", "pool.Pool"):
            reply = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_empty_payload_is_rejected_and_the_pool_serves_on(server: ServerProcess) -> None:
    """A Run without a payload gets INVALID_ARGUMENT with a readable message."""
    with grpc.insecure_channel(server.address) as channel:
        stub = pool_pb2_grpc.PoolStub(channel)
        with pytest.raises(grpc.RpcError) as info:
            stub.Run(pool_pb2.RunRequest(payload=b""), timeout=10, metadata=AUTH_METADATA)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "empty payload" in info.value.details()
        # Garbage reaches a worker, which answers BAD_REQUEST and keeps its pid.
        pids = server.pids()
        reply = stub.Run(
            pool_pb2.RunRequest(payload=b"not a pickle"), timeout=10, metadata=AUTH_METADATA
        )
        outcome = loads_outcome(reply.outcome)
        assert isinstance(outcome, CallOutcome) and outcome.status is OutcomeStatus.BAD_REQUEST
        assert server.pids() == pids
    assert compute_this(server.address)(nap)(0).compute() == 0


def test_empty_payload_maps_to_protocol_error(server: ServerProcess) -> None:
    """The client maps INVALID_ARGUMENT to ProtocolError (a PoolError)."""
    from distribute_client import _transport

    address = _transport.Address.parse(server.address)
    request = pool_pb2.RunRequest(payload=b"")
    with pytest.raises(ProtocolError, match="empty payload"):
        asyncio.run(_transport.run(address, request, 10))


def test_help_describes_the_options() -> None:
    """--help lists every option."""
    out = subprocess.run([*SERVER_COMMAND, "--help"], capture_output=True, text=True, check=True)
    for option in ("--workers", "--host", "--port", "--queue-size", "--grace", "--log-level"):
        assert option in out.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--workers", "0"], "workers must be at least 1"),
        (["--queue-size", "0"], "queue size must be at least 1"),
        (["--port", "70000"], "port must be 0..65535"),
        (["--grace", "-1"], "grace must be 0 or more"),
    ],
)
def test_bad_options_exit_2_with_a_message(args: list[str], message: str) -> None:
    """Invalid settings are refused before anything starts."""
    out = subprocess.run([*SERVER_COMMAND, *args], capture_output=True, text=True, timeout=30)
    assert out.returncode == 2
    assert message in out.stderr


def test_a_user_without_a_home_is_asked_for_a_state_dir(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """A container's bare uid (no $HOME, no passwd entry: getpwuid raises
    KeyError) gets a usage error saying what to give, not a traceback from
    the option defaults."""
    monkeypatch.delenv("HOME", raising=False)
    monkeypatch.delenv("XDG_STATE_HOME", raising=False)

    def no_entry(uid: int) -> pwd.struct_passwd:
        raise KeyError(f"getpwuid(): uid not found: {uid}")

    monkeypatch.setattr(pwd, "getpwuid", no_entry)
    with pytest.raises(SystemExit) as exited:
        parse_args(["--port", "0"])
    assert exited.value.code == 2
    assert "give --state-dir" in capsys.readouterr().err
    assert parse_args(["--state-dir", "/tmp/x"]).state_dir == Path("/tmp/x")


def test_port_in_use_exits_3_with_one_line(server: ServerProcess, tmp_path: Path) -> None:
    """A second server on a taken port fails clearly instead of sharing it:
    one line that says what to do, and none of gRPC's own (issue 15)."""
    port = server.address.rsplit(":", 1)[1]
    out = subprocess.run(
        [*SERVER_COMMAND, "--workers", "1", "--port", port, "--state-dir", str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 3
    assert out.stderr.endswith(f"port {port} is in use; pick another with --port\n")
    assert len(out.stderr.splitlines()) == 1, out.stderr
    assert "add_port" not in out.stderr and "GRPC_VERBOSITY" not in out.stderr


def test_sigterm_lets_running_calls_finish(start_server: StartServer) -> None:
    """SIGTERM: a running call completes, then the server exits 0 with no worker left."""
    server = start_server("--workers", "2", "--grace", "20")
    pids = server.pids()

    async def scenario() -> float:
        call = asyncio.ensure_future(compute_this(server.address)(nap).async_run(1.5))
        await asyncio.to_thread(
            wait_until,
            lambda: "busy" in [w.state for w in server.client().workers()],
            30,
            "a busy worker",
        )
        server.proc.send_signal(signal.SIGTERM)
        return await call

    assert asyncio.run(scenario()) == 1.5
    assert server.stop() == 0
    assert not any(pid_alive(pid) for pid in pids)
    assert "stopped after" in server.log()


def test_sigterm_grace_cuts_long_calls_short(start_server: StartServer) -> None:
    """Past --grace, running calls are failed and their workers stopped; exit is still 0."""
    server = start_server("--workers", "1", "--grace", "0.5")

    async def scenario() -> None:
        call = asyncio.ensure_future(compute_this(server.address)(nap).async_run(60))
        await asyncio.to_thread(
            wait_until, lambda: server.client().workers()[0].state == "busy", 30, "busy"
        )
        started = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        with pytest.raises(ServerUnavailableError, match="stopped before the call finished"):
            await call
        assert time.monotonic() - started < 5

    asyncio.run(scenario())
    assert server.stop() == 0


def test_sigkill_of_the_server_takes_the_workers_with_it(start_server: StartServer) -> None:
    """Workers never outlive the server, even one killed without a chance to clean up."""
    server = start_server("--workers", "2")
    busy = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, time\nfrom distribute_client import compute_this\n"
            "compute_this(sys.argv[1])(time.sleep)(60).compute()",
            server.address,
        ],
        stderr=subprocess.DEVNULL,
    )
    try:
        wait_until(
            lambda: "busy" in [w.state for w in server.client().workers()], 30, "a busy worker"
        )
        pids = server.pids()
        server.proc.kill()
        wait_until(lambda: not any(pid_alive(p) for p in pids), 10, "workers to die")
    finally:
        busy.kill()
        busy.wait()
    assert server.stop() == -signal.SIGKILL


def test_startup_line_and_log_name_the_address(tmp_path: Path, start_server: StartServer) -> None:
    """The one startup line on stdout states the bound address and worker count."""
    server = start_server("--workers", "3")
    assert len(server.pids()) == 3
    assert server.address.startswith("127.0.0.1:")


def test_server_serves_more_clients_than_a_low_soft_open_file_limit(
    start_server: StartServer,
) -> None:
    """Started under a soft limit of 128 open files, the server takes the hard
    limit and answers 300 clients, each on its own connection."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < 1024:
        pytest.skip(f"the hard open file limit here is only {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (128, hard))
    try:
        server = start_server("--workers", "1")
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
    payload = compute_this(server.address)(nap)(0).payload()

    async def clients(count: int) -> list[bytes]:
        options = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel
        channels = [
            grpc.aio.insecure_channel(server.address, options=options) for _ in range(count)
        ]
        try:
            await asyncio.wait_for(asyncio.gather(*(c.channel_ready() for c in channels)), 30)
            request = pool_pb2.RunRequest(payload=payload)
            stubs = [pool_pb2_grpc.PoolStub(c) for c in channels]
            replies = await asyncio.gather(
                *(s.Run(request, timeout=60, metadata=AUTH_METADATA) for s in stubs)
            )
            return [reply.outcome for reply in replies]
        finally:
            await asyncio.gather(*(c.close() for c in channels))

    outcomes = [loads_outcome(outcome) for outcome in asyncio.run(clients(300))]
    assert all(isinstance(o, CallOutcome) for o in outcomes)
    assert all(o.status is OutcomeStatus.RETURNED for o in outcomes if isinstance(o, CallOutcome))
