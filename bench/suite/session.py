"""One start of one system in a child process: ``python -m bench.suite.session ...``.

Writes one JSON line per event to ``--out`` as soon as it has it (started,
one per workload, stopped), so a parent that has to kill a hung session keeps
every figure the session did produce. SIGTERM runs ``stop()`` before exiting.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import time
import traceback
from pathlib import Path
from typing import Any, NoReturn

from bench.suite.adapter import System, Unsupported
from bench.suite.measure import WORKLOADS
from bench.suite.plan import Plan, make_plan
from bench.suite.systems import REGISTRY, create


class Emitter:
    def __init__(self, path: Path, system: str, workers: int) -> None:
        self._file = path.open("a")
        self._base: dict[str, Any] = {"system": system, "workers": workers}

    def __call__(self, record: dict[str, Any]) -> None:
        self._file.write(json.dumps({**self._base, **record}) + "\n")
        self._file.flush()


def _terminated(signum: int, frame: object) -> NoReturn:
    raise SystemExit(128 + signum)  # unwinds through stop() in main's finally


def describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}".strip().splitlines()[0][:300]


def run_workloads(
    system: System, names: list[str], emit: Emitter, plan: Plan, workers: int
) -> None:
    for name in names:
        print(f"session: {system.name} w={workers}: {name}", file=sys.stderr, flush=True)
        try:
            figures = WORKLOADS[name](system, plan, workers)
        except Unsupported as e:
            emit({"workload": name, "na": str(e)})
        except Exception as e:
            traceback.print_exc()
            emit({"workload": name, "error": describe(e)})
        else:
            emit({"workload": name, **figures})


def stop(system: System, emit: Emitter) -> None:
    stopping = time.perf_counter()
    try:
        system.stop()
    except Exception as e:  # the figures are in; say so, and let the parent clean up
        traceback.print_exc()
        emit({"event": "stop-failed", "reason": describe(e)})
    else:
        emit({"event": "stopped", "stop_s": time.perf_counter() - stopping})


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--system", required=True, choices=list(REGISTRY))
    parser.add_argument("--workers", type=int, required=True, help="this session's worker count")
    parser.add_argument("--plan-workers", type=int, required=True, help="the run's --workers")
    parser.add_argument("--workloads", required=True, help="comma-separated names")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    signal.signal(signal.SIGTERM, _terminated)
    emit = Emitter(args.out, args.system, args.workers)
    plan = make_plan(args.quick, args.plan_workers)
    try:
        system = create(args.system)
    except ImportError as e:
        emit({"event": "skipped", "reason": f"not installed: {e} (pip install -e '.[bench]')"})
        return 0
    try:
        started = time.perf_counter()
        try:
            system.start(args.workers)
        except Exception as e:
            traceback.print_exc()
            emit({"event": "skipped", "reason": f"could not start ({describe(e)})"})
            return 0
        emit(
            {
                "event": "started",
                "start_s": time.perf_counter() - started,
                "name": system.name,
                "kind": system.kind,
                "version": system.version(),
            }
        )
        run_workloads(system, args.workloads.split(","), emit, plan, args.workers)
    finally:  # also after a failed start, and on SIGTERM: whatever did start is stopped
        stop(system, emit)
    return 0


if __name__ == "__main__":
    sys.exit(main())
