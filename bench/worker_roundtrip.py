"""A large argument and result through one worker, below gRPC (issue 10).

``python -m bench.worker_roundtrip [MiB] [rounds]`` starts one worker the
way the supervisor does (``WorkerProcess.start``), sends it an echo call of
``MiB`` MiB of bytes ``rounds`` times, and prints each round's time and the
peak RSS growth of this process (the server's side) and of the worker,
against the payload, with their shared-memory part (the arena) apart: the
arena's pages are counted in both processes' RSS but exist once.

The first round pays for fresh pages; later rounds show the steady state.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

import cloudpickle

from pool_server.process import WorkerProcess
from pool_wire.payload import CallOutcome, CallRequest, dumps, loads_outcome

MIB = 1 << 20


def echo(data: bytes) -> bytes:
    return data


def _status(pid: int) -> dict[str, int]:
    """VmRSS, VmHWM, RssShmem of ``pid``, in bytes."""
    fields = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM", "RssShmem", "RssAnon"):
                fields[name] = int(value.split()[0]) * 1024
    return fields


def _reset_peak(pid: int) -> None:
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS


async def main(mib: int, rounds: int) -> None:
    data = os.urandom(mib * MIB)
    payload = dumps(CallRequest(cloudpickle.dumps(echo), cloudpickle.dumps(((data,), {})), ()))
    process = await WorkerProcess.start(1)
    try:
        for round_ in range(1, rounds + 1):
            pids = (os.getpid(), process.pid)
            before = {pid: _status(pid) for pid in pids}
            for pid in pids:
                _reset_peak(pid)
            started = time.perf_counter()
            reply = await process.send(f"r{round_}", payload, lambda _: None)
            never: asyncio.Future[None] = asyncio.get_running_loop().create_future()
            answer = await process.outcome(reply, never, None)
            took = time.perf_counter() - started
            after = {pid: _status(pid) for pid in pids}  # before the check's own copies
            assert answer is not None
            outcome = loads_outcome(answer.outcome)
            assert isinstance(outcome, CallOutcome)
            assert cloudpickle.loads(outcome.value) == data
            report = [f"round {round_}: {took * 1000:.0f} ms"]
            for side, pid in zip(("server", "worker"), pids, strict=True):
                growth = after[pid]["VmHWM"] - before[pid]["VmRSS"]
                shmem = after[pid]["RssShmem"] - before[pid]["RssShmem"]
                report.append(
                    f"{side} peak RSS +{growth / len(data):.2f}x payload "
                    f"(shared memory +{shmem / len(data):.2f}x)"
                )
            print(", ".join(report), flush=True)
            del answer, outcome, reply
    finally:
        await process.stop()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("mib", type=int, nargs="?", default=128, help="(default: %(default)s)")
    parser.add_argument("rounds", type=int, nargs="?", default=3, help="(default: %(default)s)")
    args = parser.parse_args()
    asyncio.run(main(args.mib, args.rounds))
