"""pool-client load: an open-loop load generator, against a real 2-worker server."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from distribute_client import cli as pool_client
from distribute_client import load

from .conftest import ServerProcess


def run_load(address: str, *args: str, cwd: Path | None = None) -> tuple[int, dict[str, Any], str]:
    """``pool-client --server ADDRESS load ARGS --json``: exit code, report, stderr."""
    done = subprocess.run(
        [sys.executable, "-m", "distribute_client.cli", "--server", address, "load", *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=cwd,
    )
    assert "Traceback" not in done.stderr, done.stderr
    report = json.loads(done.stdout) if done.stdout.startswith("{") else {}
    return done.returncode, report, done.stderr


def check_counts(report: dict[str, Any], due: int) -> None:
    """Every call due in the window is sent or dropped; every sent one is accounted for."""
    assert report["sent"] + report["dropped"] == due
    errors = sum(report["errors"].values())
    assert report["sent"] == report["ok"] + errors + report["unfinished"]
    timeline = report["timeline"]
    for key in ("sent", "ok", "dropped"):
        assert sum(second[key] for second in timeline) == report[key]
    assert sum(second["errors"] for second in timeline) == errors


def test_a_rate_the_server_keeps_up_with(server: ServerProcess) -> None:
    """50 calls/s of 10 ms on 2 workers: all answered, at the offered rate, exit 0."""
    code, report, stderr = run_load(
        server.address, "--rps", "50", "--duration", "2", "--function", "sleep:10", "--json"
    )
    assert code == pool_client.EXIT_OK, (report, stderr)
    check_counts(report, due=100)
    assert (report["ok"], report["dropped"], report["errors"]) == (100, 0, {})
    assert report["kept_up"] and report["achieved_rps"] >= 0.95 * 50
    corrected, uncorrected = report["corrected_ms"], report["uncorrected_ms"]
    assert set(corrected) == {"p50", "p90", "p99", "p99.9", "max"}
    assert 10 <= uncorrected["p50"] <= corrected["p50"] < 1000
    assert all(uncorrected[k] <= corrected[k] for k in corrected)  # never started early
    assert corrected["p50"] <= corrected["p90"] <= corrected["p99"] <= corrected["max"]
    assert [s["second"] for s in report["timeline"]] == [0, 1]
    assert all(s["p99_ms"] >= 10 for s in report["timeline"])
    assert 0 <= report["lag_ms"]["p99"] <= report["lag_ms"]["max"]


def test_an_offered_rate_far_beyond_the_server(server: ServerProcess) -> None:
    """400 calls/s of 50 ms on 2 workers (40/s at best), at most 20 out: the rest
    are dropped, the achieved rate is the server's, and the exit code says so."""
    code, report, stderr = run_load(
        server.address,
        *("--rps", "400", "--duration", "2", "--function", "sleep:50"),
        *("--max-in-flight", "20", "--json"),
    )
    assert code == pool_client.EXIT_SLOW, (report, stderr)
    check_counts(report, due=800)
    assert report["dropped"] >= 600 and report["unfinished"] == 0
    assert not report["kept_up"] and report["achieved_rps"] <= 45
    # Each call sent waits behind the other 19 out: about 20 / 40 per s.
    assert report["uncorrected_ms"]["p50"] >= 250
    assert report["corrected_ms"]["p50"] >= report["uncorrected_ms"]["p50"]


def test_a_generator_that_stalls_is_not_hidden() -> None:
    """The coordinated-omission point: while the generator's own loop is
    blocked (a GC pause, say), the calls due then start late. Measured from
    their start they look fast; from their intended time they do not."""

    async def call() -> None:
        await asyncio.sleep(0.005)

    async def stalled() -> load.Report:
        asyncio.get_running_loop().call_later(0.3, time.sleep, 0.3)
        return await load.run_async(call, load.Plan(rps=100, duration=1), "stall")

    report = asyncio.run(stalled())
    assert report.ok == report.sent == 100
    # The ~30 calls due during the stall start up to 0.3 s late.
    assert report.lag_ms["max"] >= 250
    assert report.corrected_ms["p90"] >= 100
    assert report.uncorrected_ms["p90"] < 50


def test_warmup_calls_are_sent_not_counted_and_hung_calls_unfinished() -> None:
    """Warmup calls fill the in-flight limit without being counted; calls
    still out after the drain are cancelled and counted as unfinished."""

    async def hang() -> None:
        await asyncio.sleep(3600)

    plan = load.Plan(rps=100, duration=0.5, warmup=0.1, max_in_flight=15, drain=0.1)
    report = load.run(hang, plan, "hang")
    # 10 warmup calls out, then 5 of the window's 50 fit.
    assert (report.sent, report.dropped, report.unfinished, report.ok) == (5, 45, 5, 0)
    assert report.corrected_ms == {} and not report.kept_up
    assert "hang: const arrivals at 100/s" in load.format_report(report)


def test_the_achieved_rate_is_how_fast_calls_came_back() -> None:
    """A backlog that drains after the window does not count as keeping up;
    calls slower than the window do not count as falling behind."""
    workers = asyncio.Semaphore(2)

    async def server_of_40_per_s() -> None:  # 2 workers, 50 ms a call
        async with workers:
            await asyncio.sleep(0.05)

    async def half_a_second() -> None:
        await asyncio.sleep(0.5)

    async def both() -> tuple[load.Report, load.Report]:
        behind = await load.run_async(server_of_40_per_s, load.Plan(rps=45, duration=2))
        slow = await load.run_async(half_a_second, load.Plan(rps=10, duration=0.5))
        return behind, slow

    behind, slow = asyncio.run(both())
    assert behind.ok == 90 and behind.unfinished == 0  # all came back, in the end
    assert 36 <= behind.achieved_rps <= 41 and not behind.kept_up
    assert slow.ok == 5 and slow.kept_up and slow.corrected_ms["p50"] >= 500


def test_arrival_times() -> None:
    """const: exactly every 1/rps; poisson: seeded, with a mean gap near 1/rps."""
    const = list(load.Plan(rps=10, duration=2, warmup=1).intended_times())
    assert const == [i / 10 for i in range(30)]
    poisson = load.Plan(rps=1000, duration=5, arrival="poisson", seed=7)
    times = list(poisson.intended_times())
    assert times == list(poisson.intended_times())
    assert 4500 <= len(times) <= 5500 and times == sorted(times) and times[-1] < 5


def test_the_functions_run(server: ServerProcess, tmp_path: Path) -> None:
    """payload:BYTES carries its bytes there; MODULE:FUNCTION is imported from
    the working directory and pickled by value (the server has no such file)."""
    (tmp_path / "lg_ping.py").write_text("def ping():\n    return 'pong'\n")
    for function in ("payload:100000", "lg_ping:ping"):
        code, report, stderr = run_load(
            server.address,
            *("--rps", "20", "--duration", "1", "--function", function, "--json"),
            cwd=tmp_path,
        )
        assert code == pool_client.EXIT_OK, (function, report, stderr)
        assert report["ok"] == 20 and report["function"] == function


@pytest.mark.parametrize(
    ("function", "message"),
    [
        ("garbage", "is not noop, sleep:MS, payload:BYTES or MODULE:FUNCTION"),
        ("sleep:soon", "sleep:MS needs MS in milliseconds"),
        ("payload:-1", "payload:BYTES needs a whole number of bytes"),
        ("no_such_module_here:f", "cannot import 'no_such_module_here'"),
        ("os:no_such_function", "os has no function 'no_such_function'"),
    ],
)
def test_bad_function_is_a_usage_error(
    function: str, message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exited:
        pool_client.main(["load", "--rps", "1", "--duration", "1", "--function", function])
    assert exited.value.code == pool_client.EXIT_USAGE
    assert message in capsys.readouterr().err


def test_no_server_is_errors_by_kind() -> None:
    """Nothing listening: each call is a ServerUnavailableError, counted, not a traceback."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    code, report, stderr = run_load(f"127.0.0.1:{port}", "--rps", "20", "--duration", "1", "--json")
    assert code == pool_client.EXIT_SLOW, stderr
    check_counts(report, due=20)
    assert report["errors"] == {"ServerUnavailableError": 20} and report["ok"] == 0
    assert report["achieved_rps"] == 0 and report["corrected_ms"] == {}
