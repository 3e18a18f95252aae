"""The parent side: run every session as a child process, one at a time.

A session that writes nothing for ``plan.stall_timeout_s`` is taken as hung:
its process group gets SIGTERM (the child stops its system), then SIGKILL,
and each workload it had not reported is recorded as timed out. After one
such failure, or a skip, the system's remaining sessions are not started:
they would only fail the same way, slowly.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench.suite.plan import Plan, sessions
from bench.suite.results import Record, Results
from bench.suite.systems import FLOORS

REPO_ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.2
TERM_GRACE_S = 20.0


def child_env() -> dict[str, str]:
    """The children's environment: the repo importable by every worker each peer
    spawns (its own pythonpath travels to none of them), Ray's telemetry off."""
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO_ROOT), env.get("PYTHONPATH")]))
    env["RAY_DISABLE_USAGE_STATS"] = "1"
    return env


def _signal_group(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        pass


def _stop(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the session's group, SIGKILL whatever is left after a grace period."""
    _signal_group(proc.pid, signal.SIGTERM)
    try:
        proc.wait(TERM_GRACE_S)
    except subprocess.TimeoutExpired:
        pass
    _signal_group(proc.pid, signal.SIGKILL)
    proc.wait()


def _read(path: Path) -> list[Record]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def run_session(
    system: str,
    workers: int,
    workloads: tuple[str, ...],
    plan: Plan,
    workdir: Path,
    on_record: Callable[[Record], None],
) -> tuple[list[Record], bool]:
    """Run one session; its records, and whether it ended cleanly."""
    out = workdir / f"{system}-w{workers}.jsonl"
    log = workdir / f"{system}-w{workers}.log"
    command = [sys.executable, "-m", "bench.suite.session", "--system", system]
    command += ["--workers", str(workers), "--plan-workers", str(plan.workers)]
    command += ["--workloads", ",".join(workloads), "--out", str(out)]
    command += ["--quick"] if plan.quick else []
    with log.open("wb") as log_file:
        proc = subprocess.Popen(
            command,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            cwd=REPO_ROOT,
            env=child_env(),
            start_new_session=True,  # its own group, so everything it starts can be stopped
        )
    seen = 0
    last_progress = time.monotonic()
    hung = False
    while proc.poll() is None:
        time.sleep(POLL_S)
        records = _read(out)
        if len(records) > seen:
            for record in records[seen:]:
                on_record(record)
            seen, last_progress = len(records), time.monotonic()
        elif time.monotonic() - last_progress > plan.stall_timeout_s:
            hung = True
            _stop(proc)
    _signal_group(proc.pid, signal.SIGKILL)  # anything it left behind in its group
    records = _read(out)
    for record in records[seen:]:
        on_record(record)
    clean = not hung and proc.returncode == 0
    records += _missing(system, workers, workloads, records, hung, proc.returncode, plan)
    return records, clean


def _missing(
    system: str,
    workers: int,
    workloads: tuple[str, ...],
    records: list[Record],
    hung: bool,
    returncode: int,
    plan: Plan,
) -> list[Record]:
    """Records for what a killed or crashed session never reported."""
    events = {r.get("event") for r in records}
    if "skipped" in events:
        return []
    why = (
        f"timed out: no progress for {plan.stall_timeout_s:.0f} s"
        if hung
        else f"session exited with code {returncode}"
    )
    if "started" not in events:
        return [{"system": system, "workers": workers, "event": "skipped", "reason": why}]
    done = {r.get("workload") for r in records}
    missing = [
        {"system": system, "workers": workers, "workload": name, "error": why}
        for name in workloads
        if name not in done
    ]
    if not missing and not events & {"stopped", "stop-failed"}:  # it hung or died stopping
        missing.append(
            {"system": system, "workers": workers, "event": "stop-failed", "reason": why}
        )
    return missing


def run_all(
    plan: Plan,
    systems: list[str],
    out_dir: Path,
    on_record: Callable[[Record], None],
    only: tuple[str, ...] | None = None,
) -> Results:
    results = Results(plan.workers, plan.quick, systems)
    logs = out_dir / "logs"
    shutil.rmtree(logs, ignore_errors=True)
    with tempfile.TemporaryDirectory(prefix="bench-suite-") as tmp:
        workdir = Path(tmp)
        for system in systems:
            planned = sessions(plan, system in FLOORS, only)
            for index, (workers, workloads) in enumerate(planned):
                records, clean = run_session(system, workers, workloads, plan, workdir, on_record)
                results.records += records
                if not clean or any("error" in r or "reason" in r for r in records):
                    logs.mkdir(parents=True, exist_ok=True)  # keep the log of what went wrong
                    shutil.copy(workdir / f"{system}-w{workers}.log", logs)
                if not clean or any(r.get("event") == "skipped" for r in records):
                    results.records += [
                        {
                            "system": system,
                            "workers": later,
                            "event": "skipped",
                            "reason": f"not run after the session at {workers} w failed",
                        }
                        for later, _ in planned[index + 1 :]
                    ]
                    break
    return results
