"""The metrics port: /metrics scraped during real calls, its tokens, and TLS."""

from __future__ import annotations

import os
import socket
import ssl
import subprocess
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.cookies import SimpleCookie
from pathlib import Path

import grpc
import pytest

from distribute_client import Client, WorkerCrashedError, compute_this
from pool_proto import pool_pb2, pool_pb2_grpc

from .conftest import AUTH_METADATA, SERVER_COMMAND, ServerProcess, StartServer, wait_until
from .metrics_port import Samples, get, metrics_url, scrape, value
from .test_tls import Authority, tls_args


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def crash() -> None:
    os._exit(3)


def fail() -> None:
    raise ValueError("on purpose")


def grpc_handled(samples: Samples, method: str, code: str) -> float:
    return sum(
        v
        for (name, labels), v in samples.items()
        if name == "grpc_server_handled_total"
        and ("grpc_method", method) in labels
        and ("grpc_code", code) in labels
    )


def scraped_until(
    url: str, condition: str, check: Callable[[Samples], bool], timeout: float = 20.0
) -> Samples:
    """Scrape until ``check(samples)`` holds; fail naming ``condition`` if it never does."""
    found: list[Samples] = []

    def holds() -> bool:
        found[:] = [scrape(url)]
        return check(found[0])

    wait_until(holds, timeout, condition)
    return found[0]


@pytest.fixture
def metered(start_server: StartServer) -> ServerProcess:
    return start_server("--workers", "2", "--metrics-port", "0")


def test_metrics_count_real_calls_queue_crashes_and_rpcs(metered: ServerProcess) -> None:
    """Calls, their phases and payloads, the queue while calls wait, a crash
    as a restart, workers and RSS by slot, and gRPC codes of unary and
    streaming RPCs all appear in /metrics with the values that happened."""
    url = metrics_url(metered)
    sleepy = compute_this(metered.address)(nap)
    with ThreadPoolExecutor(6) as pool:
        futures = [pool.submit(lambda: sleepy(1.0).compute()) for _ in range(6)]
        waiting = scraped_until(
            url,
            "calls waiting in the queue with both workers busy",
            lambda s: (
                value(s, "pool_queue_length") >= 2 and value(s, "pool_workers", state="busy") == 2
            ),
        )
        assert value(waiting, "pool_queue_capacity") == 100_000
        assert value(waiting, "pool_queue_payload_bytes") > 0
        assert [f.result(timeout=30) for f in futures] == [1.0] * 6

    with pytest.raises(WorkerCrashedError):
        compute_this(metered.address)(crash)().compute()
    with pytest.raises(ValueError, match="on purpose"):
        compute_this(metered.address)(fail)().compute()
    job = Client(metered.address).submit_json("operator:add", [1, 2])
    assert job.result(timeout=30) == 3
    with grpc.insecure_channel(metered.address) as channel:
        stub = pool_pb2_grpc.PoolStub(channel)
        watched = stub.WatchJob(pool_pb2.JobRef(job_id=job.id), timeout=10, metadata=AUTH_METADATA)
        assert len(list(watched)) == 1  # finished already: its status once
        call = b'{"function": "operator:mul", "args": [6, 7]}'
        stub.Run(pool_pb2.RunRequest(payload=call), timeout=30, metadata=AUTH_METADATA)
        with pytest.raises(grpc.RpcError):
            stub.Run(pool_pb2.RunRequest(payload=b""), timeout=10, metadata=AUTH_METADATA)
        assert list(stub.Calls(iter([]), timeout=10, metadata=AUTH_METADATA)) == []
        with pytest.raises(grpc.RpcError):
            list(stub.Calls(iter([]), timeout=10))  # no token

    samples = scraped_until(
        url,
        "the crash counted as a restart, and its worker back",
        lambda s: (
            value(s, "pool_worker_restarts_total", reason="crash") == 1
            and value(s, "pool_workers", state="idle") == 2
        ),
    )
    assert value(samples, "pool_calls_total", outcome="done") == 6 + 2  # naps, Run, the job
    assert value(samples, "pool_calls_total", outcome="crashed") == 1
    assert value(samples, "pool_calls_total", outcome="error") == 1
    for phase in ("queue", "run", "total"):
        count = value(samples, "pool_call_duration_seconds_count", phase=phase)
        assert count == 10, (phase, count)
        assert value(samples, "pool_call_duration_seconds_bucket", phase=phase, le="+Inf") == count
    # The naps waited: four of them queued behind two running ones for at least a second.
    assert value(samples, "pool_call_duration_seconds_sum", phase="queue") > 4 * 0.9
    assert value(samples, "pool_call_duration_seconds_bucket", phase="run", le="0.5") == 4
    assert value(samples, "pool_payload_bytes_count", direction="in") == 10
    assert value(samples, "pool_payload_bytes_count", direction="out") == 9  # not the crash
    assert value(samples, "pool_payload_bytes_sum", direction="in") > 10 * 40
    assert value(samples, "pool_workers", state="idle") == 2
    for slot in ("1", "2"):
        assert value(samples, "pool_worker_rss_bytes", slot=slot) > 5 << 20
    assert value(samples, "pool_jobs", state="queued") == 0

    assert grpc_handled(samples, "Run", "OK") == 1
    assert grpc_handled(samples, "Run", "INVALID_ARGUMENT") == 1
    assert grpc_handled(samples, "Calls", "OK") >= 1
    assert grpc_handled(samples, "Calls", "UNAUTHENTICATED") == 1
    assert grpc_handled(samples, "Submit", "OK") == 1
    assert grpc_handled(samples, "WatchJob", "OK") == 1
    labels = {"grpc_method": "Run", "grpc_service": "pool.Pool", "grpc_type": "unary"}
    assert value(samples, "grpc_server_handling_seconds_count", **labels) == 2
    assert value(samples, "grpc_server_started_total", **labels) == 2


def test_the_port_takes_the_servers_tokens(metered: ServerProcess) -> None:
    """No token: 401; a wrong one: 403; a bearer header works; ?token= sets an
    HttpOnly, SameSite=Strict cookie and redirects to the URL without it,
    and the cookie then works."""
    url = metrics_url(metered)
    token = os.environ["POOL_TOKEN"]
    refused = get(url + "metrics")
    assert refused.status == 401
    assert refused.headers["WWW-Authenticate"].startswith("Bearer")
    assert b"pool-server token" in refused.body
    assert get(url + "metrics", token="not-the-token").status == 403
    assert get(url + "metrics", token=token).status == 200
    assert get(url + "?token=not-the-token").status == 403

    redirect = get(url + f"?token={token}&view=1")
    assert redirect.status == 303
    assert redirect.headers["Location"] == "/?view=1"
    cookie = SimpleCookie(redirect.headers["Set-Cookie"])["pool_token"]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    page = get(url, cookie=f"pool_token={cookie.value}")
    assert page.status == 200 and b"<title>pool-server</title>" in page.body
    assert "script-src 'self'" in page.headers["Content-Security-Policy"]
    assert get(url + "state", cookie=f"pool_token={cookie.value}").json()["workers"]
    assert get(url + "metrics", cookie="pool_token=stale").status == 403
    assert token not in metered.log()  # the access log is off: no ?token= in it


def test_auth_none_needs_no_token(start_server: StartServer) -> None:
    """With --auth none the metrics port, like the gRPC port, asks for nothing."""
    server = start_server("--workers", "1", "--auth", "none", "--metrics-port", "0")
    url = metrics_url(server)
    assert get(url + "metrics").status == 200
    assert get(url).status == 200


def test_tls_serves_https_with_the_servers_certificate(
    start_server: StartServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With --tls-cert the port speaks HTTPS with the gRPC port's certificate."""
    ca = Authority(tmp_path, "metrics")
    monkeypatch.setenv("POOL_TLS_CA", str(ca.path))
    server = start_server(
        "--workers", "1", "--metrics-port", "0", *tls_args(ca.issue("server", server=True))
    )
    url = metrics_url(server)
    assert url.startswith("https://")
    context = ssl.create_default_context(cafile=str(ca.path))
    samples = scrape(url, context=context)
    assert value(samples, "pool_workers", state="idle") == 1
    with pytest.raises(ssl.SSLError):
        get(url + "metrics", context=ssl.create_default_context())  # not the system's CA


def test_a_taken_metrics_port_exits_3(tmp_path: Path) -> None:
    """A metrics port that cannot be bound stops the start, as a taken gRPC port does."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        command = [*SERVER_COMMAND, "--port", "0", "--workers", "1", "--metrics-port", str(port)]
        command += ["--state-dir", str(tmp_path / "state")]
        out = subprocess.run(command, capture_output=True, text=True, timeout=60)
    assert out.returncode == 3
    assert f"cannot listen on 127.0.0.1:{port} for metrics" in out.stderr


def test_recycles_and_worker_limits_are_scraped(start_server: StartServer) -> None:
    server = start_server(
        "--min-workers", "1", "--max-workers", "2", "--max-tasks-per-worker", "2",
        "--metrics-port", "0",
    )  # fmt: skip
    url = metrics_url(server)
    samples = scrape(url)
    assert value(samples, "pool_worker_limits", bound="min") == 1
    assert value(samples, "pool_worker_limits", bound="max") == 2
    remote = compute_this(server.address)(nap)
    for _ in range(4):
        remote(0.0).compute()
    samples = scraped_until(
        url,
        "two recycles after four calls on one worker",
        lambda s: value(s, "pool_worker_restarts_total", reason="recycled-tasks") == 2,
    )
    assert value(samples, "pool_worker_restarts_total", reason="crash") == 0
