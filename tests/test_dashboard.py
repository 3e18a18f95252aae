"""The dashboard as a person sees it: the real page in headless Chromium
(Debian's, driven by playwright; no browser download), while real calls
and a job that reports progress run on the server."""

from __future__ import annotations

import os
import shutil
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, expect, sync_playwright

from distribute_client import compute_this, progress

from .conftest import ServerProcess, StartServer
from .metrics_port import metrics_url

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="no Chromium to drive (Debian: apt-get install chromium; tools/system-packages "
    "installs it as root)",
)

# The page refreshes once a second; a state it shows for 2 s is always seen.
SEEN_WITHIN_MS = 10_000


def nap(seconds: float) -> float:
    time.sleep(seconds)
    return seconds


def stepped(steps: int, seconds: float) -> int:
    for step in range(steps):
        time.sleep(seconds)
        progress((step + 1) / steps, f"step {step + 1} of {steps}")
    return steps


@pytest.fixture
def page(start_server: StartServer) -> Iterator[tuple[ServerProcess, Page]]:
    server = start_server("--workers", "2", "--metrics-port", "0")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            # Once with the token in the address; it is swapped for a cookie.
            page.goto(metrics_url(server) + f"?token={os.environ['POOL_TOKEN']}")
            assert "token=" not in page.url
            yield server, page
        finally:
            browser.close()


def test_tiles_follow_a_call_and_a_jobs_bar_moves(
    page: tuple[ServerProcess, Page], tmp_path: Path
) -> None:
    """Worker tiles go idle -> busy -> idle around a call, naming what runs;
    a job's progress bar shows several growing fractions, then DONE."""
    server, view = page
    tiles = view.locator(".tile")
    expect(tiles).to_have_count(2, timeout=SEEN_WITHIN_MS)
    expect(view.locator('.tile[data-state="idle"]')).to_have_count(2, timeout=SEEN_WITHIN_MS)
    expect(view.locator("#connection")).to_have_attribute("data-connected", "true")

    call = threading.Thread(target=lambda: compute_this(server.address)(nap)(2.5).compute())
    call.start()
    busy = view.locator('.tile[data-state="busy"]')
    expect(busy).to_have_count(1, timeout=SEEN_WITHIN_MS)
    expect(busy.locator(".call")).to_contain_text("call r")
    call.join(30)
    expect(view.locator('.tile[data-state="idle"]')).to_have_count(2, timeout=SEEN_WITHIN_MS)
    expect(view.locator("#tasks rect.task.done")).to_have_count(1)

    job = compute_this(server.address)(stepped).submit(8, 0.5)
    row = view.locator(f'tr[data-job="{job.id}"]')
    expect(row).to_have_attribute("data-state", "RUNNING", timeout=SEEN_WITHIN_MS)
    expect(view.locator('.tile[data-state="busy"] .call')).to_contain_text("stepped")
    seen: list[float] = []
    deadline = time.monotonic() + 30
    while row.get_attribute("data-state") != "DONE" and time.monotonic() < deadline:
        shown = row.locator(".bar").get_attribute("data-progress")
        if shown and (not seen or float(shown) != seen[-1]):
            seen.append(float(shown))
        view.wait_for_timeout(100)
    view.screenshot(path=tmp_path / "dashboard.png", full_page=True)
    assert row.get_attribute("data-state") == "DONE"
    assert job.result(timeout=10) == 8
    moving = [f for f in seen if 0 < f < 1]
    assert len(moving) >= 2 and moving == sorted(moving), seen
    expect(row).to_contain_text("step 8 of 8")
