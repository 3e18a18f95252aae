"""A fault soak: mixed load against a real pool-server while it is broken on purpose.

Usage::

    python -m bench.soak [--minutes 10] [--workers 2] [--round-seconds 15]
                         [--server-kill-every 4] [--seed N]

It starts ``pool-server`` with its own temporary ``--state-dir`` (and a fresh
token in ``POOL_TOKEN``, for the server and for its own clients) and, in
rounds, runs at once: ``compute()`` and ``async_run`` calls, ``submit`` of
durable jobs (values, raising functions, jobs past their time limit, jobs
cancelled while queued or running), ``map``, and calls whose timeout is
shorter than the function's sleep. Meanwhile, at random moments:

- a worker (pid from ``Client.workers()``) is SIGKILLed every 1-4 s;
- in every ``--server-kill-every``-th round, the server is SIGKILLed and
  restarted on the same state dir and port (if the port is taken, on a new
  one, and the clients are pointed there);
- clients vanish mid-call: an asyncio task is cancelled, and a client
  subprocess that submitted a job and then called ``compute()`` is SIGKILLed.

Each round ends by waiting for the pool to drain; then the server's open fds
and resident memory are read. At the end every acknowledged job (a submit
that returned its id) is fetched once more, and these invariants are printed,
per round and overall; the exit code is 1 if one fails:

- ``jobs``: every acknowledged job reached exactly one final state (every
  observation of it agrees, across server restarts), with the right result.
  By the README's semantics a job may also be FAILED by a worker crash or a
  server stop during its last attempt (its attempts are then all used),
  CANCELLED only if it was cancelled, TIMED_OUT only if it had a time limit.
- ``calls``: every call returned the right value, or failed with the fault
  injected (a SIGKILLed worker, the server down) or its deadline.
- ``deadlines``: no call outlived its timeout by more than a second (client
  side), and no job ran past its time limit by more than a second.
- ``orphans``: no worker process outlived its server (after each server
  kill, and after the final stop).
- ``drain``: after each round the queue empties and every worker is idle.
- ``flat``: the server's fd count and RSS do not grow from one round to the
  next of the same server process (its first round, a warm-up, aside).

Speed figures (calls, jobs, restart times) are printed, never asserted.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import random
import secrets
import signal
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Awaitable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from distribute_client import (
    CallTimeoutError,
    Client,
    JobCancelledError,
    JobInterruptedError,
    JobNotFoundError,
    JobTimedOutError,
    PoolError,
    RemoteFunction,
    WorkerCrashedError,
    compute_this,
)
from pool_wire.names import WorkerState

ROOT = Path(__file__).resolve().parents[1]
TOKEN_ENV = "POOL_TOKEN"
SERVER_ENV = "POOL_SERVER"
# Set in the server's environment, so its workers carry it: how this soak
# tells its own worker processes from those of any other server on the machine.
MARKER_ENV = "POOL_SOAK_RUN"

CALL_TIMEOUT_S = 30.0  # calls that are not about deadlines
DEADLINE_SLACK_S = 1.0  # how far past its timeout a call may end
START_TIMEOUT_S = 90.0  # the server waits up to 60 s for its workers itself
STOP_TIMEOUT_S = 30.0
EXIT_BIND_FAILED = 3  # pool_server.app's exit code for a taken port
ORPHAN_GRACE_S = 5.0  # for workers to notice their server died
DRAIN_TIMEOUT_S = 30.0  # for the pool to go idle once a round's load stops
FINAL_WAIT_S = 60.0  # for every acknowledged job to finish at the end
COLLECT_WAIT_S = 2.0  # per unfinished job, at the end of a round
# A refused call counts as the injected fault if it began while the server
# was down or within this long of its restart (gRPC's reconnect backoff).
RECONNECT_SLACK_S = 20.0
# Flat means at most this growth from one round to the next.
FD_SLACK = 4
RSS_SLACK_MIB = 8.0
# ... and over one server's life: SQLite's page cache (2 MiB a connection)
# and the allocator's arenas fill for minutes, ever slower (5-minute soaks of
# one server process: 46.8 -> 49.5 MiB and 47.3 -> 49.9 MiB).
RSS_LIFE_SLACK_MIB = 16.0
JOB_FETCH_CONCURRENCY = 16


def work(x: int, nap: float = 0.0) -> int:
    time.sleep(nap)
    return x * x + 1


def fail(x: int) -> int:
    raise ValueError(f"soak {x}")


# The server under test


@dataclass
class Server:
    workers: int
    state_dir: Path
    env: dict[str, str]
    port: int = 0
    pid: int = 0
    repointed: int = 0
    restart_s: list[float] = field(default_factory=list)
    proc: asyncio.subprocess.Process | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir.with_suffix(".log")

    async def start(self) -> None:
        """Start on ``self.port`` (any port the first time); if it is taken,
        on a new one, and point this process's clients there."""
        for _ in range(5):
            code = await self._launch(self.port)
            if code is None:
                return
            if code != EXIT_BIND_FAILED:
                break
            await asyncio.sleep(0.5)
        else:
            code = await self._launch(0)
            self.repointed += 1
        if code is not None:
            log = self.log_path.read_text(errors="replace").splitlines()[-20:]
            raise RuntimeError(f"pool-server exited with {code} at start:\n" + "\n".join(log))

    async def _launch(self, port: int) -> int | None:
        """None once it serves, else its exit code."""
        command = [sys.executable, "-m", "pool_server", "--workers", str(self.workers)]
        command += ["--port", str(port), "--state-dir", str(self.state_dir)]
        with self.log_path.open("ab") as log:
            proc = await asyncio.create_subprocess_exec(
                *command,
                "--log-level",
                "warning",
                stdout=asyncio.subprocess.PIPE,
                stderr=log,
                env=self.env,
            )
        assert proc.stdout is not None
        line = (await asyncio.wait_for(proc.stdout.readline(), START_TIMEOUT_S)).decode()
        if "serving on" not in line:
            return await proc.wait()
        self.proc, self.pid = proc, proc.pid
        address = line.split("serving on ", 1)[1].split()[0]
        self.port = int(address.rsplit(":", 1)[1])
        os.environ[SERVER_ENV] = address
        return None

    async def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        await self.proc.wait()
        self.proc, self.pid = None, 0

    async def stop(self) -> int | None:
        """SIGTERM; the exit code, or None if it did not stop in time (then SIGKILLed)."""
        assert self.proc is not None
        self.proc.terminate()
        try:
            return await asyncio.wait_for(self.proc.wait(), STOP_TIMEOUT_S)
        except TimeoutError:
            await self.kill()
            return None
        finally:
            self.proc, self.pid = None, 0

    def sample(self) -> tuple[int, float]:
        """The server's open fds and resident memory (MiB), from /proc."""
        fds = len(os.listdir(f"/proc/{self.pid}/fd"))
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return fds, int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS in /proc status")


def soak_workers(marker: str) -> dict[int, int]:
    """This soak's live worker processes (pid -> parent pid), from /proc."""
    found = {}
    tag = f"{MARKER_ENV}={marker}".encode()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            proc_dir = Path("/proc", entry)
            if b"worker_proc" not in (proc_dir / "cmdline").read_bytes():
                continue
            if tag not in (proc_dir / "environ").read_bytes().split(b"\0"):
                continue
            state, ppid = (proc_dir / "stat").read_text().rsplit(")", 1)[1].split()[:2]
        except OSError:  # gone meanwhile, or not ours to read
            continue
        if state != "Z":
            found[int(entry)] = int(ppid)
    return found


async def orphans(marker: str, server_pid: int) -> list[str]:
    """Workers whose parent is not the live server, once they have had
    ``ORPHAN_GRACE_S`` to die; any found are reported, then killed."""
    deadline = time.monotonic() + ORPHAN_GRACE_S
    while True:
        left = {p: pp for p, pp in soak_workers(marker).items() if pp != server_pid}
        if not left or time.monotonic() > deadline:
            break
        await asyncio.sleep(0.05)
    for pid in left:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
    return [f"worker pid {pid} (parent {ppid})" for pid, ppid in sorted(left.items())]


# What happened


@dataclass(frozen=True)
class Final:
    """A finished job as one observation saw it; ``detail`` is "" when the
    observation (a CancelJob reply) gives the state alone."""

    state: str
    detail: str = ""


@dataclass
class Acked:
    """A job whose submit returned its id."""

    id: str
    kind: str  # value, raise, time-limit, cancel
    x: int
    retries: int = 0
    time_limit: float | None = None
    cancel_sent: bool = False
    seen: list[Final] = field(default_factory=list)

    @property
    def finished(self) -> bool:
        return any(f.detail for f in self.seen)


@dataclass
class Round:
    index: int
    server_kill: bool
    server_pids: set[int] = field(default_factory=set)
    calls: Counter[str] = field(default_factory=Counter)  # ok, fault, deadline
    bad: list[str] = field(default_factory=list)  # broken invariants seen in the round
    worst_overrun_s: float = -99.0  # elapsed minus timeout, the largest
    jobs_acked: int = 0
    submits_refused: int = 0
    maps: Counter[str] = field(default_factory=Counter)  # ok, interrupted
    worker_kills: int = 0
    disconnects: int = 0
    orphans: list[str] = field(default_factory=list)
    drained: bool = True
    sample: tuple[int, int, float] | None = None  # pid, fds, RSS MiB


@dataclass
class Ledger:
    marker: str
    rng: random.Random
    rounds: list[Round] = field(default_factory=list)
    jobs: dict[str, Acked] = field(default_factory=dict)
    batches: list[str] = field(default_factory=list)
    down: list[tuple[float, float]] = field(default_factory=list)  # server kill -> ready
    down_since: float | None = None

    @property
    def now(self) -> Round:
        return self.rounds[-1]

    def server_down_during(self, started: float) -> bool:
        """Was the server down (or just back) at some time since ``started``?"""
        if self.down_since is not None:
            return True
        return any(started <= back + RECONNECT_SLACK_S for _, back in self.down)

    def fault(self, error: Exception, started: float) -> bool:
        """Is ``error``, raised by a call begun at ``started``, what an injected fault explains?"""
        if isinstance(error, WorkerCrashedError):
            return error.signal_name == "SIGKILL"
        if isinstance(error, CallTimeoutError):
            return False
        return isinstance(error, PoolError) and self.server_down_during(started)

    def ack(self, job: Acked) -> None:
        self.jobs[job.id] = job
        self.now.jobs_acked += 1


# The load


Work = RemoteFunction[[int, float], int]


def remote(timeout: float | None = CALL_TIMEOUT_S, retries: int = 0) -> Work:
    """``work`` on the current server (``$POOL_SERVER``, read per call)."""
    return compute_this(timeout=timeout, retries=retries)(work)


async def timed_call(ledger: Ledger, call: Awaitable[int], x: int, timeout_s: float) -> None:
    """Await one call, check its value or error, and how long it took against ``timeout_s``."""
    started = time.monotonic()
    try:
        value: int | None = await call
        error: Exception | None = None
    except Exception as e:
        value, error = None, e
    elapsed = time.monotonic() - started
    rnd = ledger.now
    rnd.worst_overrun_s = max(rnd.worst_overrun_s, elapsed - timeout_s)
    if elapsed > timeout_s + DEADLINE_SLACK_S:
        rnd.bad.append(f"deadlines: a call took {elapsed:.2f} s with a {timeout_s:.2f} s timeout")
    if error is None:
        if value == work(x):
            rnd.calls["ok"] += 1
        else:
            rnd.bad.append(f"calls: work({x}) returned {value!r}, not {work(x)}")
    elif isinstance(error, CallTimeoutError):
        rnd.calls["deadline"] += 1
    elif ledger.fault(error, started):
        rnd.calls["fault"] += 1
        await asyncio.sleep(0.2)  # the server may be down: do not spin
    else:
        rnd.bad.append(f"calls: work({x}) raised {type(error).__name__}: {error}")


async def async_run_lane(ledger: Ledger, end: float) -> None:
    f = remote()
    while time.monotonic() < end:
        x, nap = ledger.rng.randrange(1000), ledger.rng.uniform(0, 0.2)
        await timed_call(ledger, f.async_run(x, nap), x, CALL_TIMEOUT_S)


async def compute_lane(ledger: Ledger, end: float) -> None:
    f = remote()
    while time.monotonic() < end:
        x, nap = ledger.rng.randrange(1000), ledger.rng.uniform(0, 0.2)
        await timed_call(ledger, asyncio.to_thread(f(x, nap).compute), x, CALL_TIMEOUT_S)


async def deadline_lane(ledger: Ledger, end: float) -> None:
    """Calls whose timeout is shorter (mostly) or longer than the function's sleep."""
    while time.monotonic() < end:
        x, timeout = ledger.rng.randrange(1000), ledger.rng.uniform(0.3, 1.0)
        nap = timeout + ledger.rng.uniform(0.3, 1.5)
        if ledger.rng.random() < 0.25:
            nap = timeout / 4
        f = remote(timeout=timeout)
        await timed_call(ledger, f.async_run(x, nap), x, timeout)


async def cancelled_task_lane(ledger: Ledger, end: float) -> None:
    """A client that goes away mid-call: its asyncio task is cancelled."""
    f = remote()
    while time.monotonic() < end:
        task = asyncio.ensure_future(f.async_run(1, ledger.rng.uniform(0.5, 2.0)))
        await asyncio.sleep(ledger.rng.uniform(0.05, 1.0))
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, PoolError):
            await task
        ledger.now.disconnects += 1


async def child_client_lane(ledger: Ledger, end: float) -> None:
    """A client process that submits a job, then is SIGKILLed in a compute() call."""
    while time.monotonic() < end:
        x = ledger.rng.randrange(1000)
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "bench.soak",
            "--child",
            str(x),
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.DEVNULL,
            cwd=ROOT,
        )
        assert child.stdout is not None
        with contextlib.suppress(TimeoutError):
            line = await asyncio.wait_for(child.stdout.readline(), CALL_TIMEOUT_S)
            if line.strip():
                ledger.ack(Acked(line.decode().strip(), "value", x))
        await asyncio.sleep(ledger.rng.uniform(0.2, 1.0))
        with contextlib.suppress(ProcessLookupError):  # its call failed, and it exited
            child.kill()
        await child.wait()
        ledger.now.disconnects += 1


def child(x: int) -> None:
    """The client process of :func:`child_client_lane`."""
    job = remote().submit(x, 0.2)
    print(job.id, flush=True)
    remote()(x, 5.0).compute()  # killed during this call


async def submit_one(ledger: Ledger) -> Acked | None:
    """Submit one job of a random kind; its record once acknowledged."""
    rng, x = ledger.rng, ledger.rng.randrange(1000)
    kind = rng.choice(["value", "value", "value", "raise", "time-limit", "cancel"])
    started = time.monotonic()
    try:
        if kind == "raise":
            job = await compute_this()(fail).async_submit(x)
            acked = Acked(job.id, kind, x)
        elif kind == "time-limit":
            job = await remote(timeout=0.4).async_submit(x, 1.5)
            acked = Acked(job.id, kind, x, time_limit=0.4)
        else:
            retries = rng.choice([0, 2])
            nap = rng.uniform(0.5, 2.0) if kind == "cancel" else rng.uniform(0, 0.3)
            job = await remote(retries=retries).async_submit(x, nap)
            acked = Acked(job.id, kind, x, retries=retries)
    except PoolError as e:
        if not ledger.fault(e, started):
            ledger.now.bad.append(f"jobs: a {kind} submit raised {type(e).__name__}: {e}")
        ledger.now.submits_refused += 1
        await asyncio.sleep(0.2)
        return None
    ledger.ack(acked)
    return acked


async def submit_lane(ledger: Ledger, end: float) -> None:
    """Durable jobs; some cancelled, some waited for at once, the rest collected later."""
    while time.monotonic() < end:
        acked = await submit_one(ledger)
        if acked is None:
            continue
        if acked.kind == "cancel":
            await asyncio.sleep(ledger.rng.uniform(0.05, 1.0))
            acked.cancel_sent = True
            with contextlib.suppress(PoolError):
                status = await Client().job(acked.id).async_cancel()
                if status.finished:
                    acked.seen.append(Final(status.state.value))
        elif ledger.rng.random() < 0.5:
            await observe(acked, time.monotonic() + 10.0)


async def map_lane(ledger: Ledger, end: float) -> None:
    f = remote(retries=2)
    while time.monotonic() < end:
        xs = list(range(ledger.rng.randrange(1, 60)))
        durable = ledger.rng.random() < 0.5  # journaled jobs, or plain calls
        results = f.async_map(xs, [0.01] * len(xs), chunk_size=8, durable=durable)
        if results.batch_id is not None:
            ledger.batches.append(results.batch_id)
        started = time.monotonic()
        try:
            values = [value async for value in results]
        except PoolError as e:
            if not ledger.fault(e, started):
                ledger.now.bad.append(f"calls: a map raised {type(e).__name__}: {e}")
            ledger.now.maps["interrupted"] += 1
            await asyncio.sleep(0.2)
            continue
        finally:
            with contextlib.suppress(PoolError):
                await results.aclose()
        if values == [work(x) for x in xs]:
            ledger.now.maps["ok"] += 1
        else:
            ledger.now.bad.append(f"calls: map over {len(xs)} items returned wrong values")


LANES = (
    async_run_lane,
    async_run_lane,
    compute_lane,
    deadline_lane,
    cancelled_task_lane,
    child_client_lane,
    submit_lane,
    submit_lane,
    map_lane,
)


# The faults


async def kill_workers(ledger: Ledger, end: float) -> None:
    """SIGKILL a worker (a busy one when there is one) every 1-4 s."""
    while (pause := ledger.rng.uniform(1.0, 4.0)) < end - time.monotonic():
        await asyncio.sleep(pause)
        try:
            workers = await Client().async_status()
        except PoolError:
            continue
        ours = soak_workers(ledger.marker)
        pids = [w.pid for w in workers.workers if w.pid in ours]
        busy = [w.pid for w in workers.workers if w.pid in ours and w.state is WorkerState.BUSY]
        if busy or pids:
            with contextlib.suppress(ProcessLookupError):
                os.kill(ledger.rng.choice(busy or pids), signal.SIGKILL)
                ledger.now.worker_kills += 1


async def kill_server(ledger: Ledger, server: Server, end: float) -> None:
    """SIGKILL the server at a random moment, check its workers died with it, restart it."""
    await asyncio.sleep(ledger.rng.uniform(0.2, 0.7) * (end - time.monotonic()))
    ledger.down_since = time.monotonic()
    await server.kill()
    ledger.now.orphans += await orphans(ledger.marker, 0)
    restart = time.monotonic()
    await server.start()
    server.restart_s.append(time.monotonic() - restart)
    ledger.down.append((ledger.down_since, time.monotonic()))
    ledger.down_since = None
    ledger.now.server_pids.add(server.pid)


# Checking jobs


async def observe(acked: Acked, deadline: float) -> None:
    """Wait until ``deadline`` (monotonic) for the job's result; note its final state if
    it has one."""
    job = Client().job(acked.id)
    try:
        value = await job.async_result(timeout=max(0.1, deadline - time.monotonic()))
        final = Final("DONE", repr(value))
    except JobTimedOutError:
        final = Final("TIMED_OUT", "JobTimedOutError")
    except CallTimeoutError:
        return  # not finished yet
    except JobCancelledError:
        final = Final("CANCELLED", "JobCancelledError")
    except (WorkerCrashedError, JobInterruptedError) as e:
        final = Final("FAILED", type(e).__name__)
    except JobNotFoundError:
        final = Final("LOST", "JobNotFoundError")
    except ValueError as e:
        final = Final("FAILED", f"ValueError: {e}")
    except PoolError:
        return  # the server is down: later
    acked.seen.append(final)


def judge(acked: Acked, final: Final) -> str | None:
    """Why ``final`` is not a right end for ``acked``; None if it is."""
    if final.state == "DONE" and acked.kind in ("value", "cancel"):
        return None if final.detail == repr(work(acked.x)) else "a wrong value"
    if final.state == "FAILED" and final.detail in ("WorkerCrashedError", "JobInterruptedError"):
        return None
    if final.state == "FAILED" and acked.kind == "raise":
        return None if final.detail == f"ValueError: soak {acked.x}" else "the wrong error"
    if final.state == "CANCELLED" and acked.cancel_sent:
        return None
    if final.state == "TIMED_OUT" and acked.kind == "time-limit":
        return None
    return "a state it cannot reach"


async def check_job(acked: Acked, client: Client) -> list[str]:
    """The broken invariants of one acknowledged job, once it has been fetched at the end."""
    if not acked.finished:
        return [f"jobs: {acked.kind} job {acked.id} never finished"]
    problems = []
    if len({f.state for f in acked.seen}) > 1 or len({f.detail for f in acked.seen} - {""}) > 1:
        problems.append(f"jobs: {acked.kind} job {acked.id} seen as {acked.seen}")
    for final in {f for f in acked.seen if f.detail}:  # a CancelJob reply has the state alone
        why = judge(acked, final)
        if why is not None:
            problems.append(f"jobs: {acked.kind} job {acked.id} ended {final}: {why}")
    final = acked.seen[-1]
    if final.detail in ("WorkerCrashedError", "JobInterruptedError", "JobTimedOutError"):
        status = await client.job(acked.id).async_status()
        if final.state == "FAILED" and status.attempts != status.max_attempts:
            problems.append(f"jobs: {acked.id} {final} after {status.attempts} attempts")
        ran = status.finished_at - status.started_at
        if acked.time_limit is not None and ran > acked.time_limit + DEADLINE_SLACK_S:
            problems.append(f"deadlines: job {acked.id} ran {ran:.2f} s, limit {acked.time_limit}")
    return problems


async def gather_limited(coroutines: list[Awaitable[Any]]) -> list[Any]:
    semaphore = asyncio.Semaphore(JOB_FETCH_CONCURRENCY)

    async def one(coroutine: Awaitable[Any]) -> Any:
        async with semaphore:
            return await coroutine

    return await asyncio.gather(*(one(c) for c in coroutines))


async def check_batches(ledger: Ledger) -> tuple[Counter[str], list[str]]:
    """Every job of every map's batch is finished."""
    states: Counter[str] = Counter()
    problems = []
    for batch_id in ledger.batches:
        with contextlib.suppress(JobNotFoundError):  # a map that never got its jobs in
            for status in await Client().async_jobs(batch_id=batch_id, limit=1000):
                states[status.state] += 1
                if not status.finished:
                    problems.append(f"jobs: map job {status.id} is still {status.state}")
    return states, problems


# Rounds


async def drain(ledger: Ledger) -> bool:
    """Wait for an empty queue and idle workers; False if that never comes."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while time.monotonic() < deadline:
        with contextlib.suppress(PoolError):
            status = await Client().async_status()
            if not status.queue_length and all(w.state == "idle" for w in status.workers):
                return True
        await asyncio.sleep(0.1)
    return False


async def run_round(ledger: Ledger, server: Server, index: int, seconds: float, every: int) -> None:
    rnd = Round(index, server_kill=every > 0 and index % every == 1, server_pids={server.pid})
    ledger.rounds.append(rnd)
    end = time.monotonic() + seconds
    async with asyncio.TaskGroup() as group:
        for lane in LANES:
            group.create_task(lane(ledger, end))
        group.create_task(kill_workers(ledger, end))
        if rnd.server_kill:
            group.create_task(kill_server(ledger, server, end))
    await gather_limited(
        [
            observe(job, time.monotonic() + COLLECT_WAIT_S)
            for job in ledger.jobs.values()
            if not job.finished
        ]
    )
    rnd.drained = await drain(ledger)
    if not rnd.drained:
        rnd.bad.append(f"drain: round {index} left work queued or workers busy")
    fds, rss = server.sample()
    rnd.sample = (server.pid, fds, rss)
    print_round(rnd)


def flat_problems(rounds: list[Round]) -> list[str]:
    """Growth of fds or RSS from one round to the next of one server process,
    and over its whole life. A server's first round (the soak's first, or the
    one it was restarted in) warms it up and is left out."""
    lives: dict[int, list[tuple[int, int, float]]] = {}
    for rnd in rounds:
        if rnd.sample is not None and rnd.index > 0 and not rnd.server_kill:
            pid, fds, rss = rnd.sample
            lives.setdefault(pid, []).append((rnd.index, fds, rss))
    problems = []
    for pid, life in lives.items():
        for (_, fds0, rss0), (index, fds1, rss1) in zip(life, life[1:], strict=False):
            if fds1 - fds0 > FD_SLACK:
                problems.append(f"flat: fds {fds0} -> {fds1} in round {index}")
            if rss1 - rss0 > RSS_SLACK_MIB:
                problems.append(f"flat: RSS {rss0:.1f} -> {rss1:.1f} MiB in round {index}")
        _, fds_first, rss_first = life[0]
        if max(f for _, f, _ in life) - fds_first > FD_SLACK:
            problems.append(f"flat: server {pid}'s fds grew over its life: {life}")
        if max(r for _, _, r in life) - rss_first > RSS_LIFE_SLACK_MIB:
            problems.append(f"flat: server {pid}'s RSS grew over its life: {life}")
    return problems


HEADER = (
    f"{'round':>5} {'server':>7} {'calls ok':>8} {'fault':>5} {'dline':>5} {'over s':>6} "
    f"{'jobs':>5} {'refused':>7} {'maps':>4} {'w-kill':>6} {'s-kill':>6} {'discon':>6} "
    f"{'orphan':>6} {'fds':>4} {'RSS MiB':>7}  broken"
)


def print_round(rnd: Round) -> None:
    pid, fds, rss = rnd.sample or (0, 0, 0.0)
    print(
        f"{rnd.index:>5} {pid:>7} {rnd.calls['ok']:>8} {rnd.calls['fault']:>5} "
        f"{rnd.calls['deadline']:>5} {rnd.worst_overrun_s:>6.2f} {rnd.jobs_acked:>5} "
        f"{rnd.submits_refused:>7} {rnd.maps['ok']:>4} {rnd.worker_kills:>6} "
        f"{'yes' if rnd.server_kill else '':>6} {rnd.disconnects:>6} {len(rnd.orphans):>6} "
        f"{fds:>4} {rss:>7.1f}  {len(rnd.bad) or ''}",
        flush=True,
    )


# The end


INVARIANTS = {
    "jobs": "every acknowledged job reached exactly one final state, with the right result",
    "calls": "every call returned the right value or failed with an injected fault or its deadline",
    "deadlines": "no call outlived its timeout, nor a job its time limit, by more than 1 s",
    "orphans": "no worker process outlived its server",
    "drain": "every round ended with an empty queue and idle workers",
    "flat": "the server's fds and RSS did not grow from round to round",
}


async def finish(ledger: Ledger, server: Server) -> list[str]:
    """Fetch every acknowledged job once more, stop the server; the broken invariants."""
    problems = [p for rnd in ledger.rounds for p in rnd.bad]
    problems += [f"orphans: {o} after a server kill" for r in ledger.rounds for o in r.orphans]
    deadline = time.monotonic() + FINAL_WAIT_S
    await gather_limited([observe(job, deadline) for job in ledger.jobs.values()])
    client = Client()
    for found in await gather_limited([check_job(job, client) for job in ledger.jobs.values()]):
        problems += found
    map_states, found = await check_batches(ledger)
    problems += found + flat_problems(ledger.rounds)
    code = await server.stop()
    if code != 0:
        problems.append(f"orphans: the server's final SIGTERM ended it with {code}, not 0")
    problems += [f"orphans: {o} after the final stop" for o in await orphans(ledger.marker, 0)]
    print_totals(ledger, server, map_states)
    return problems


def print_totals(ledger: Ledger, server: Server, map_states: Counter[str]) -> None:
    rounds = ledger.rounds
    calls = sum((r.calls for r in rounds), Counter[str]())
    finals = Counter(f"{j.kind} {j.seen[-1].state}" for j in ledger.jobs.values() if j.seen)
    failed = Counter(
        j.seen[-1].detail.split(":")[0]
        for j in ledger.jobs.values()
        if j.seen and j.seen[-1].state != "DONE"
    )
    samples = [r.sample for r in rounds if r.sample]
    restart = ", ".join(f"{s:.1f}" for s in server.restart_s) or "none"
    print(
        f"\ncalls: {calls['ok']} ok, {calls['fault']} failed by an injected fault, "
        f"{calls['deadline']} past their deadline; worst overrun "
        f"{max(r.worst_overrun_s for r in rounds):.3f} s"
    )
    print(
        f"jobs acknowledged: {len(ledger.jobs)}; submits refused while the server was down: "
        f"{sum(r.submits_refused for r in rounds)}"
    )
    for name, n in sorted(finals.items()):
        print(f"  {name:<24} {n:>6}")
    print("  failures by kind: " + ", ".join(f"{k} {n}" for k, n in sorted(failed.items())))
    print(
        f"maps: {sum(r.maps['ok'] for r in rounds)} complete, "
        f"{sum(r.maps['interrupted'] for r in rounds)} interrupted; their jobs: "
        + ", ".join(f"{k} {n}" for k, n in sorted(map_states.items()))
    )
    print(
        f"faults: workers SIGKILLed {sum(r.worker_kills for r in rounds)}, "
        f"server SIGKILLed {len(server.restart_s)} (restarted in {restart} s; "
        f"{server.repointed} on a new port), {sum(r.disconnects for r in rounds)} clients "
        "gone mid-call"
    )
    if samples:
        print(
            f"server fds {min(s[1] for s in samples)}-{max(s[1] for s in samples)}, "
            f"RSS {min(s[2] for s in samples):.1f}-{max(s[2] for s in samples):.1f} MiB "
            "at round ends"
        )


def print_invariants(problems: list[str]) -> None:
    print()
    for name, text in INVARIANTS.items():
        broken = [p for p in problems if p.startswith(f"{name}:")]
        print(f"invariant {name}: {'BROKEN' if broken else 'HOLDS'} ({text})")
        for problem in broken[:20]:
            print(f"    {problem}")
        if len(broken) > 20:
            print(f"    ... and {len(broken) - 20} more")


async def soak(args: argparse.Namespace) -> int:
    ledger = Ledger(secrets.token_hex(8), random.Random(args.seed))
    rounds = max(2, round(args.minutes * 60 / args.round_seconds))
    seconds = args.minutes * 60 / rounds
    with tempfile.TemporaryDirectory(prefix="pool-soak-") as tmp:
        env = {**os.environ, MARKER_ENV: ledger.marker}
        server = Server(args.workers, Path(tmp) / "state", env)
        await server.start()
        try:
            return await soak_rounds(args, ledger, server, rounds, seconds)
        finally:
            if server.proc is not None:  # the soak itself failed
                await server.kill()


async def soak_rounds(
    args: argparse.Namespace, ledger: Ledger, server: Server, rounds: int, seconds: float
) -> int:
    print(
        f"pool-server on {os.environ[SERVER_ENV]} with {args.workers} workers; "
        f"{rounds} rounds of {seconds:.1f} s, seed {args.seed}\n{HEADER}",
        flush=True,
    )
    for index in range(rounds):
        await run_round(ledger, server, index, seconds, args.server_kill_every)
    problems = await finish(ledger, server)
    print_invariants(problems)
    if problems:
        print("\nthe server log's last lines:")
        print("\n".join(server.log_path.read_text(errors="replace").splitlines()[-30:]))
    return 1 if problems else 0


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--minutes", type=float, default=10.0, help="load time (default: %(default)s)"
    )
    parser.add_argument("--workers", type=int, default=2, help="(default: %(default)s)")
    parser.add_argument(
        "--round-seconds", type=float, default=15.0, help="length of a round (default: %(default)s)"
    )
    parser.add_argument(
        "--server-kill-every",
        type=int,
        default=4,
        help="SIGKILL the server in rounds 1, 1+N, 1+2N, ...; 0: never (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=None, help="for the random faults and load")
    parser.add_argument("--child", type=int, help=argparse.SUPPRESS)  # the client process
    args = parser.parse_args()
    if args.child is not None:
        child(args.child)
        return 0
    if args.seed is None:
        args.seed = secrets.randbelow(2**32)
    os.environ[TOKEN_ENV] = secrets.token_urlsafe(32)  # the server's and every client's
    print(
        f"python -m bench.soak --minutes {args.minutes} --workers {args.workers} "
        f"({datetime.now(UTC):%Y-%m-%d %H:%M} UTC)"
    )
    return asyncio.run(soak(args))


if __name__ == "__main__":
    sys.exit(main())
