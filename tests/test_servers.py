"""Several servers behind one client, on loopback addresses 127.0.0.2-4.

Real servers, each on its own address: calls and maps spread by policy, a
server killed mid-map loses no result, jobs name the server that holds
them, questions fan out and merge, and the servers' ORCA load reports are
read by gRPC's own weighted_round_robin.
"""

from __future__ import annotations

import asyncio
import collections
import json
import os
import signal
import subprocess
import sys
import time

import grpc
import pytest

from distribute_client import (
    AuthenticationError,
    Client,
    JobNotFoundError,
    ServerUnavailableError,
    compute_this,
)
from distribute_client._servers import Servers
from pool_proto import orca_pb2, pool_pb2, pool_pb2_grpc
from pool_server.load import LoadReporter
from pool_server.scaling import WorkerLimits
from pool_server.supervisor import WorkerPool

from .conftest import AUTH_METADATA, ServerProcess, StartServer

HOSTS = ("127.0.0.2", "127.0.0.3", "127.0.0.4")


def server_pid(seconds: float = 0.0) -> int:
    """The pid of the server whose worker runs this (the worker's parent)."""
    time.sleep(seconds)
    return os.getppid()


def start_servers(start_server: StartServer, *workers: int) -> list[ServerProcess]:
    return [
        start_server("--host", host, "--workers", str(n))
        for host, n in zip(HOSTS, workers, strict=False)
    ]


def pids_of(servers: list[ServerProcess]) -> dict[int, int]:
    return {server.proc.pid: i for i, server in enumerate(servers)}


def test_a_comma_list_in_pool_server_is_several_servers(
    start_server: StartServer, monkeypatch: pytest.MonkeyPatch
) -> None:
    servers = start_servers(start_server, 1, 1, 1)
    monkeypatch.setenv("POOL_SERVER", ",".join(s.address for s in servers))
    remote = compute_this(server_pid)
    ran = collections.Counter(remote.map([0.05] * 30))
    assert set(ran) == {s.proc.pid for s in servers}, ran
    workers = Client().workers()
    assert sorted(w.server for w in workers) == sorted(s.address for s in servers)


def test_a_map_of_600_calls_is_spread_over_three_servers(start_server: StartServer) -> None:
    servers = start_servers(start_server, 2, 2, 2)
    remote = compute_this([s.address for s in servers])(server_pid)
    ran = collections.Counter(remote.map([0.002] * 600))
    assert sum(ran.values()) == 600
    shares = [ran[s.proc.pid] for s in servers]
    assert min(shares) >= 100, shares  # least_loaded: each server takes its part


def test_weights_one_to_two_split_the_calls_one_to_two(start_server: StartServer) -> None:
    first, second = start_servers(start_server, 2, 2)
    weights = {first.address: 1, second.address: 2}
    remote = compute_this([first.address, second.address], weights=weights)(server_pid)

    async def calls() -> list[int]:
        return await asyncio.gather(*(remote.async_run() for _ in range(300)))

    ran = collections.Counter(asyncio.run(calls()))
    ratio = ran[second.proc.pid] / ran[first.proc.pid]
    assert 1.8 <= ratio <= 2.2, ran


def test_round_robin_takes_each_server_in_turn(start_server: StartServer) -> None:
    servers = start_servers(start_server, 1, 1, 1)
    remote = compute_this([s.address for s in servers], policy="round_robin")(server_pid)
    order = [remote().compute() for _ in range(9)]
    pids = [s.proc.pid for s in servers]
    assert sorted(collections.Counter(order).values()) == [3, 3, 3]
    assert order[:3] == order[3:6] == order[6:9]
    assert set(order[:3]) == set(pids)


def test_least_loaded_sends_more_to_the_server_with_more_workers(
    start_server: StartServer,
) -> None:
    small, large = start_servers(start_server, 1, 4)
    remote = compute_this([small.address, large.address])(server_pid)

    async def calls() -> list[int]:
        return await asyncio.gather(*(remote.async_run(0.05) for _ in range(100)))

    ran = collections.Counter(asyncio.run(calls()))
    assert ran[large.proc.pid] >= 3 * ran[small.proc.pid], ran


def test_a_server_killed_mid_map_loses_no_result_and_is_skipped(
    start_server: StartServer,
) -> None:
    servers = start_servers(start_server, 2, 2, 2)
    doomed = servers[1]
    remote = compute_this([s.address for s in servers], retries=2)(server_pid)
    results = []
    with remote.map([0.01] * 600, chunk_size=4) as ran:
        for i, pid in enumerate(ran):
            results.append(pid)
            if i == 100:
                doomed.proc.kill()
                killed_at = len(results)
    assert len(results) == 600
    assert doomed.proc.pid in results[:killed_at]
    # Chunks sent well after the kill never went to it (results come in order,
    # and at most a few hundred calls were in flight then).
    assert doomed.proc.pid not in results[450:]
    assert isinstance(Client([s.address for s in servers]).status().unreachable, tuple)
    status = Client([s.address for s in servers]).status()
    assert status.unreachable == (doomed.address,)
    assert {w.server for w in status.workers} == {servers[0].address, servers[2].address}


def test_a_call_whose_server_dies_fails_without_retries(start_server: StartServer) -> None:
    first, second = start_servers(start_server, 1, 1)
    remote = compute_this([first.address, second.address], policy="round_robin")(server_pid)

    async def one_call_on_each() -> list[int | BaseException]:
        calls = [asyncio.create_task(remote.async_run(2.0)) for _ in range(2)]
        await asyncio.sleep(0.5)
        first.proc.kill()
        return await asyncio.gather(*calls, return_exceptions=True)

    outcomes = asyncio.run(one_call_on_each())
    assert second.proc.pid in outcomes
    assert any(isinstance(o, ServerUnavailableError) for o in outcomes), outcomes
    assert remote().compute() == second.proc.pid  # the dead one is skipped


def test_every_server_down_says_so(start_server: StartServer) -> None:
    first, second = start_servers(start_server, 1, 1)
    addresses = [first.address, second.address]
    first.stop()
    second.stop()
    with pytest.raises(ServerUnavailableError, match="none of the servers"):
        compute_this(addresses)(server_pid)().compute()


def test_jobs_name_their_server_and_any_client_finds_them(start_server: StartServer) -> None:
    servers = start_servers(start_server, 1, 1)
    addresses = [s.address for s in servers]
    remote = compute_this(addresses, policy="round_robin")(server_pid)
    jobs = [remote.submit() for _ in range(4)]
    assert {job.id.rpartition("/")[0] for job in jobs} == set(addresses)
    other = Client(",".join(addresses))  # another client with the same servers
    for job in jobs:
        server = job.id.rpartition("/")[0]
        owner = next(s for s in servers if s.address == server)
        assert other.job(job.id).result(timeout=30) == owner.proc.pid
    listed = other.jobs()
    assert {status.id for status in listed} == {job.id for job in jobs}
    assert {status.server for status in listed} == set(addresses)
    with pytest.raises(JobNotFoundError, match="does not say which"):
        other.job(jobs[0].server_job_id)


def test_a_durable_map_is_one_batch_over_the_servers(start_server: StartServer) -> None:
    servers = start_servers(start_server, 1, 1)
    addresses = [s.address for s in servers]
    remote = compute_this(addresses, policy="round_robin")(server_pid)
    ran = remote.map([0.0] * 40, chunk_size=2, durable=True)
    assert len(list(ran)) == 40
    assert ran.batch_id is not None
    batch = Client(addresses).batch(ran.batch_id)
    assert batch.total == 40  # calls, over both servers' jobs
    assert batch.states == {"DONE": 40}
    assert batch.percent_done == 100.0
    per_server = [s.client().batch(ran.batch_id).total for s in servers]
    assert sum(per_server) == 40 and min(per_server) > 0


def test_each_server_may_have_its_own_token(start_server: StartServer) -> None:
    env = dict(os.environ)
    first = start_server(
        "--host", HOSTS[0], env={**env, "POOL_TOKEN": "token-one"}, token="token-one"
    )
    second = start_server(
        "--host", HOSTS[1], env={**env, "POOL_TOKEN": "token-two"}, token="token-two"
    )
    tokens = {first.address: "token-one", second.address: "token-two"}
    remote = compute_this([first.address, second.address], token=tokens, policy="round_robin")
    ran = {remote(server_pid)().compute() for _ in range(4)}
    assert ran == {first.proc.pid, second.proc.pid}
    with pytest.raises(AuthenticationError):
        Client([first.address, second.address], token="token-one").job(
            f"{second.address}/j0"
        ).status()
    with pytest.raises(ValueError, match="no entry for server"):
        Client([first.address, second.address], token={first.address: "token-one"})


def test_pool_client_takes_a_list(start_server: StartServer) -> None:
    servers = start_servers(start_server, 1, 2)
    command = [sys.executable, "-m", "distribute_client.cli"]
    server_list = ",".join(s.address for s in servers)
    out = subprocess.run(
        [*command, "--server", server_list, "workers", "--json"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    rows = json.loads(out)
    rows = rows["workers"] if isinstance(rows, dict) else rows
    assert collections.Counter(row["server"] for row in rows) == {
        servers[0].address: 1,
        servers[1].address: 2,
    }


def test_dns_names_every_address_and_skips_those_that_do_not_answer(
    start_server: StartServer,
) -> None:
    server = start_server("--workers", "1")  # 127.0.0.1 only: ::1, if localhost has it, refuses
    port = server.address.rpartition(":")[2]
    remote = compute_this(f"dns:///localhost:{port}")(server_pid)
    assert [remote().compute() for _ in range(3)] == [server.proc.pid] * 3
    assert Client(f"dns:///localhost:{port}").workers()[0].server == f"127.0.0.1:{port}"


def test_bad_server_lists_are_refused_saying_why(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match="names a server twice"):
        Servers.parse("127.0.0.2:1,127.0.0.2:1")
    with pytest.raises(ValueError, match="'nope' is not host:port"):
        Servers.parse(["127.0.0.2:1", "nope"])
    with pytest.raises(ValueError, match="names a backend"):
        Servers.parse("local,127.0.0.2:1")
    with pytest.raises(ValueError, match="policy must be one of"):
        Servers.parse("127.0.0.2:1,127.0.0.3:1", policy="fastest")
    with pytest.raises(ValueError, match="no weight for"):
        Servers.parse("127.0.0.2:1,127.0.0.3:1", weights={"127.0.0.2:1": 1})
    with pytest.raises(ValueError, match="positive"):
        Servers.parse("127.0.0.2:1,127.0.0.3:1", weights={"127.0.0.2:1": 1, "127.0.0.3:1": 0})
    with pytest.raises(ValueError, match="dns:///host:port"):
        Servers.parse("dns:///nowhere")
    monkeypatch.setenv("POOL_SERVER", " , ")
    with pytest.raises(ValueError, match=r"\$POOL_SERVER is ' , ', which names no server"):
        Servers.parse()


def test_grpcs_weighted_round_robin_balances_by_the_servers_orca_reports(
    start_server: StartServer,
) -> None:
    """A client in any language balances over pool-servers with gRPC alone:
    the servers' ORCA reports (endpoint-load-metrics-bin, which gRPC takes
    out of the trailers it shows) weigh a 3-worker server above a 1-worker
    one, where plain round robin would send both the same."""
    small, large = start_servers(start_server, 1, 3)
    payload = compute_this(small.address)(server_pid)(0.02).payload()
    targets = ",".join(s.address for s in (small, large))
    wrr = {"blackoutPeriod": "0.5s", "weightUpdatePeriod": "0.1s"}
    config = json.dumps({"loadBalancingConfig": [{"weighted_round_robin": wrr}]})
    ran: collections.Counter[int] = collections.Counter()

    async def load() -> None:
        options = [("grpc.service_config", config)]
        async with grpc.aio.insecure_channel(f"ipv4:{targets}", options=options) as channel:
            stub = pool_pb2_grpc.PoolStub(channel)

            async def client() -> None:
                finish = time.monotonic() + 4.0
                while time.monotonic() < finish:
                    request = pool_pb2.RunRequest(payload=payload)
                    reply = await stub.Run(request, metadata=AUTH_METADATA)
                    ran[reply.worker_pid] += 1

            await asyncio.gather(*(client() for _ in range(8)))

    asyncio.run(load())
    small_pids = set(small.pids())
    on_small = sum(n for pid, n in ran.items() if pid in small_pids)
    on_large = sum(ran.values()) - on_small
    assert on_large > 1.5 * on_small, (on_small, on_large)


def test_the_orca_report_says_utilisation_and_rate() -> None:
    reporter = LoadReporter(WorkerPool(WorkerLimits(2, 2), queue_size=10, max_queued_bytes=1 << 20))
    key, value = reporter.orca_trailer()
    assert key == "endpoint-load-metrics-bin"
    report = orca_pb2.OrcaLoadReport.FromString(value)
    assert report.application_utilization == 0.0  # no worker busy, nothing queued
    reporter._window_start -= 2.0  # two seconds ago, so the next call closes a window
    for _ in range(10):
        reporter.answered()
    assert orca_pb2.OrcaLoadReport.FromString(reporter.orca_trailer()[1]).rps_fractional > 0


def test_a_server_stopping_hands_its_untaken_calls_to_the_others(
    start_server: StartServer,
) -> None:
    first, second = start_servers(start_server, 1, 1)
    remote = compute_this([first.address, second.address])(server_pid)

    async def calls() -> list[int]:
        tasks = [asyncio.create_task(remote.async_run(0.05)) for _ in range(40)]
        await asyncio.sleep(0.3)
        first.proc.send_signal(signal.SIGTERM)
        return await asyncio.gather(*tasks)

    assert len(asyncio.run(calls())) == 40
    assert first.proc.wait(30) == 0


def test_a_server_that_comes_back_is_taken_back(start_server: StartServer) -> None:
    first, second = start_servers(start_server, 1, 1)
    addresses = [first.address, second.address]
    remote = compute_this(addresses, policy="round_robin")(server_pid)

    async def calls() -> tuple[set[int], set[int], float]:
        before = {await remote.async_run() for _ in range(4)}
        first.proc.kill()
        first.proc.wait()
        # A server that went away is skipped "within about a second" (its
        # stream breaks, or a keepalive ping goes unanswered): a call sent
        # sooner may still go to it, and fail, as it has no retries.
        await asyncio.sleep(1.0)
        while_down = {await remote.async_run() for _ in range(4)}
        host, _, port = first.address.rpartition(":")
        back = await asyncio.to_thread(start_server, "--host", host, "--port", port)
        started = time.monotonic()
        while await remote.async_run() != back.proc.pid:  # noqa: ASYNC110 - each try is a call
            await asyncio.sleep(0.05)
        return before, while_down, time.monotonic() - started

    before, while_down, took = asyncio.run(calls())
    assert before == {first.proc.pid, second.proc.pid}
    assert while_down == {second.proc.pid}
    assert took < 5.0, took  # gRPC reconnects within its 2 s backoff
