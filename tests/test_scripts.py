"""The original's two scripts, run as a user runs them, against a real server."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from .conftest import ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def run_script(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, *args], cwd=ROOT, capture_output=True, text=True, timeout=120
    )


def test_smoke_script_prints_success(server: ServerProcess) -> None:
    """test.py against a live server prints exactly `success` and exits 0."""
    out = run_script("test.py", server.address)
    assert (out.returncode, out.stdout) == (0, "success\n"), out.stderr


def test_smoke_script_reports_an_unreachable_server() -> None:
    """test.py with nothing listening says so and exits 1."""
    out = run_script("test.py", "127.0.0.1:1")
    assert out.returncode == 1
    assert "no pool-server answered at 127.0.0.1:1" in out.stdout


def test_load_script_prints_the_original_report(server: ServerProcess) -> None:
    """test_load.py prints each series in the original's format, histogram included."""
    out = run_script("test_load.py", server.address, "--factors", "1", "3", "--equal", "0.2")
    assert out.returncode == 0, out.stdout + out.stderr
    series = out.stdout.split("-" * 80 + "\n")[1:]
    assert len(series) == 2
    for calls, text in zip((2, 6), series, strict=True):
        assert f"workers: 2\ncalls: {calls}\n" in text
        assert re.search(r"effectiveness of parallelization: \d+\.\d\d%", text)
        assert f"num of calls: served by num of wokers\n{calls // 2}: 2\n" in text


def test_load_script_random_sleeps_print_the_schedule_bound(server: ServerProcess) -> None:
    """With random sleeps the best first-come schedule is printed too."""
    out = run_script("test_load.py", server.address, "--factors", "2", "--seed", "1")
    assert out.returncode == 0, out.stdout + out.stderr
    assert "schedule_execution_time:" in out.stdout


def make_dry_run(target: str, venv: Path) -> str:
    """What `make TARGET` would run on a clean clone (a venv not yet made)."""
    out = subprocess.run(
        ["make", "-n", target, f"VENV={venv}"], cwd=ROOT, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_make_demo_installs_only_what_running_needs(tmp_path: Path) -> None:
    """`make demo` installs the project alone; the development toolchain
    ('.[dev]': pytest, ruff, mypy...) comes with `make test` (and so .ci/run)."""
    demo = make_dry_run("demo", tmp_path / "venv")
    assert "pip install --quiet -e .\n" in demo
    assert "[dev]" not in demo
    assert "pool-server --workers" in demo
    test = make_dry_run("test", tmp_path / "venv")
    assert "pip install --quiet -e '.[dev]'" in test and "pytest" in test
    assert (ROOT / ".ci" / "run").read_text().rstrip().endswith("make test")
