"""``python -m bench --quick`` end to end: the comparison table is written and complete.

Peers not installed (CI installs only ``.[dev]``) must show up as skipped with
a reason, never vanish; pool-server and both floors must have numbers.
"""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from bench.suite.systems import REGISTRY

REPO_ROOT = Path(__file__).resolve().parents[1]
RUN_TIMEOUT_S = 300
NUMBER = re.compile(r"\d+(\.\d+)? ?(ms|/s)")


def run_bench(*args: str) -> str:
    """``python -m <args>`` from the repository root; its stdout, once it succeeded."""
    proc = subprocess.run(
        [sys.executable, "-m", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=RUN_TIMEOUT_S,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return proc.stdout


def summary_rows(markdown: str) -> dict[str, list[str]]:
    """The summary table's rows by system name: the cells after the name."""
    section = markdown.split("## Summary", 1)[1].split("\n## ", 1)[0]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| ") and not line.startswith(("| system", "| ---")):
            cells = [cell.strip() for cell in line.strip("|").split("|")]
            rows[cells[0]] = cells[1:]
    return rows


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_quick_run_writes_a_complete_table(tmp_path: Path) -> None:
    stdout = run_bench("bench", "--quick", "--workers", "2", "--out", str(tmp_path))
    table = tmp_path / "results.md"
    assert table.exists(), stdout
    markdown = table.read_text()
    assert "Machine:" in markdown and "CPUs" in markdown and "Python" in markdown
    rows = summary_rows(markdown)

    assert len(rows) == len(REGISTRY), rows.keys()
    ours = rows["pool-server"]
    assert all(NUMBER.search(cell) for cell in ours[2:5]), ours  # latency, throughput
    for floor in ("grpc.aio echo (floor)", "pipe echo (floor)"):
        assert NUMBER.search(rows[floor][2]), rows[floor]  # latency p50
    peers = [name for name in rows if name != "pool-server" and "(floor)" not in name]
    for peer in peers:
        cells = rows[peer]
        assert any("skipped: " in cell for cell in cells) or NUMBER.search(cells[2]), (peer, cells)
    assert "ProcessPoolExecutor" in rows  # the standard library's pool is always there

    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert "No plots: matplotlib is not installed" in markdown
    else:
        for name in ("latency", "throughput", "efficiency", "payloads", "scaling"):
            assert (tmp_path / f"{name}.png").stat().st_size > 0


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_many_clients_reports_memory_per_client() -> None:
    """``python -m bench.many_clients``, small: every client is counted and answered."""
    stdout = run_bench("bench.many_clients", "--clients", "40", "--processes", "2")
    rounds = re.findall(
        r"round \d: \+40 fds while connected; .* KiB per client over idle\), "
        r".* MiB and \+0 fds once they left; all 40 calls answered",
        stdout,
    )
    assert len(rounds) == 2, stdout


@pytest.mark.slow
@pytest.mark.timeout(RUN_TIMEOUT_S + 30)
def test_payload_stages_account_for_the_whole_call() -> None:
    """``python -m bench.payload_stages``, small: every stage is timed and summed."""
    stdout = run_bench("bench.payload_stages", "--mib", "1", "--repeat", "1")
    assert re.search(r"1 MiB round trip, .* [\d.]+ s \(\d+ MiB/s\)", stdout), stdout
    assert len(re.findall(r"^  \w+ +.+ +[\d.]+ s +\d+%$", stdout, re.MULTILINE)) == 12
