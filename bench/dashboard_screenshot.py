"""A screenshot of the dashboard, and a /metrics sample, during a test_load.py run.

Usage::

    python -m bench.dashboard_screenshot [--workers 4] [--out docs]

Starts a pool-server with ``--metrics-port 0``, runs ``test_load.py``
against it (``$POOL_SERVER``) and, once its first calls are back, a
batch of jobs that report progress, so every panel has something to show. Once calls wait in
the queue and a job is running, headless Chromium (Debian's, driven by
playwright) opens the page with the token and takes ``dashboard.png``,
and ``/metrics`` is saved as ``metrics-sample.txt``, both under ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from playwright.sync_api import sync_playwright

from distribute_client import compute_this, progress

STARTUP_TIMEOUT_S = 60.0
SCREENSHOT_TIMEOUT_S = 60.0

# The page draws a snapshot a second; give it two before the picture.
SETTLE_S = 2.5


def simulate(seed: int, steps: int = 12) -> int:
    """A job of the batch: steps of work, each reported."""
    for step in range(steps):
        time.sleep(0.4)
        progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return seed


def start_server(workers: int, state_dir: str) -> tuple[subprocess.Popen[bytes], str, str]:
    """The server, its gRPC address and its metrics URL (from its start-up line)."""
    command = [sys.executable, "-m", "pool_server", "--workers", str(workers), "--port", "0"]
    command += ["--metrics-port", "0", "--log-level", "warning", "--state-dir", state_dir]
    proc = subprocess.Popen(command, stdout=subprocess.PIPE)
    assert proc.stdout is not None
    line = proc.stdout.readline().decode()
    if "metrics on " not in line:
        raise RuntimeError(f"pool-server did not start (exit code {proc.wait()}): {line!r}")
    address = line.split("serving on ", 1)[1].split()[0]
    url = line.split("metrics on ", 1)[1].split(")")[0]
    return proc, address, url


def fetch(url: str) -> bytes:
    request = urllib.request.Request(
        url, headers={"Authorization": f"Bearer {os.environ['POOL_TOKEN']}"}
    )
    with urllib.request.urlopen(request, timeout=10) as reply:
        body: bytes = reply.read()
        return body


def state(url: str) -> dict[str, Any]:
    snapshot: dict[str, Any] = json.loads(fetch(url + "state"))
    return snapshot


def wait_for(url: str, what: str, condition: Callable[[dict[str, Any]], bool]) -> None:
    deadline = time.monotonic() + SCREENSHOT_TIMEOUT_S
    while not condition(state(url)):
        if time.monotonic() > deadline:
            raise RuntimeError(f"the server never had {what}")
        time.sleep(0.2)


def busy_enough(snapshot: dict[str, Any]) -> bool:
    """Calls waiting, calls done, and jobs of the batch running with some progress."""
    running = [j for j in snapshot["jobs"] if j["state"] == "RUNNING" and j["progress"]]
    return bool(
        snapshot["queue"]["length"] >= 2
        and snapshot["totals"]["calls"] >= 20
        and max((j["progress"] for j in running), default=0) >= 0.3
    )


def capture(url: str, out: Path) -> None:
    wait_for(url, "calls waiting and a job running", busy_enough)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        raise RuntimeError("no chromium: apt-get install chromium (tools/system-packages)")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=chromium)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 860})
            page.goto(f"{url}?token={os.environ['POOL_TOKEN']}")
            page.wait_for_selector('#connection[data-connected="true"]')
            page.wait_for_timeout(SETTLE_S * 1000)
            page.screenshot(path=out / "dashboard.png", full_page=True)
            (out / "metrics-sample.txt").write_bytes(fetch(url + "metrics"))
        finally:
            browser.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--workers", type=int, default=4)
    parser.add_argument("--out", type=Path, default=Path("docs"))
    args = parser.parse_args()
    os.environ.setdefault("POOL_TOKEN", secrets.token_urlsafe(32))
    with tempfile.TemporaryDirectory(prefix="pool-dashboard-") as state_dir:
        proc, address, url = start_server(args.workers, state_dir)
        try:
            env = {**os.environ, "POOL_SERVER": address}
            load = subprocess.Popen([sys.executable, "test_load.py", "--seed", "7"], env=env)
            wait_for(url, "calls finished", lambda s: s["totals"]["calls"] >= 3 * args.workers)
            batch = threading.Thread(
                target=lambda: list(
                    compute_this(address)(simulate).map(
                        range(6), batch_id="nightly-sims", chunk_size=1
                    )
                )
            )
            batch.start()
            capture(url, args.out)
            code = load.wait()
            batch.join()
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
    print(f"wrote {args.out / 'dashboard.png'} and {args.out / 'metrics-sample.txt'}")
    return code


if __name__ == "__main__":
    sys.exit(main())
