"""The fault soak (``bench/soak.py``), one minute of it, as part of the suite."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
INVARIANTS = ("jobs", "calls", "deadlines", "orphans", "drain", "flat")


@pytest.mark.slow
@pytest.mark.timeout(240)
def test_one_minute_soak_holds_every_invariant() -> None:
    """Under a minute of mixed load with workers and the server SIGKILLed and
    clients vanishing mid-call, every invariant the soak checks holds: jobs end
    once and right, calls answer right or with the fault, deadlines hold, no
    worker is orphaned, the pool drains, and fds and RSS stay flat."""
    command = [sys.executable, "-m", "bench.soak", "--minutes", "1", "--workers", "2"]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=230)
    report = f"{done.stdout}\n{done.stderr}"
    assert done.returncode == 0, report
    for name in INVARIANTS:
        assert f"invariant {name}: HOLDS" in done.stdout, report
    killed = re.search(r"server SIGKILLed (\d+)", done.stdout)
    assert killed is not None and int(killed[1]) >= 1, report
