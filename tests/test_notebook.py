"""The notebook check (issue 15): in a real ipykernel, driven by
jupyter_client as Jupyter drives it, a map with progress=True shows a bar
(tqdm.auto's widget, or its text bar where ipywidgets is missing), and a
line a running job prints is streamed to the cell before the job finishes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from jupyter_client.manager import start_new_kernel

from .conftest import ServerProcess

CELL = """
import os, time
from distribute_client import compute_this

def square(x):
    return x * x

def talk_then_wait(go):
    print("a line from a running job", flush=True)
    deadline = time.monotonic() + 60
    while not os.path.exists(go) and time.monotonic() < deadline:
        time.sleep(0.01)
    return "finished"

remote = compute_this({address!r})
print("sum", sum(remote(square).map(range(20), progress=True)))
job = remote(talk_then_wait).submit({go!r})
for text in job.logs(follow=True):
    print(text, end="")
    if "a line from a running job" in text and not os.path.exists({go!r}):
        print("streamed while", job.status().state)
        open({go!r}, "w").close()  # only now may the job finish
print(job.result())
"""


def test_a_notebook_shows_the_bar_and_live_output(server: ServerProcess, tmp_path: Path) -> None:
    manager, client = start_new_kernel(kernel_name="python3", cwd=str(tmp_path))
    messages: list[dict[str, Any]] = []
    try:
        cell = CELL.format(address=server.address, go=str(tmp_path / "go"))
        reply = client.execute_interactive(cell, output_hook=messages.append, timeout=120)
    finally:
        client.stop_channels()
        manager.shutdown_kernel(now=True)
    errors = [m["content"] for m in messages if m["msg_type"] == "error"]
    assert reply["content"]["status"] == "ok", errors
    streams = {"stdout": "", "stderr": ""}
    for message in messages:
        if message["msg_type"] == "stream":
            streams[message["content"]["name"]] += message["content"]["text"]
    widget = any(
        "application/vnd.jupyter.widget-view+json" in m["content"].get("data", {})
        for m in messages
        if m["msg_type"] == "display_data"
    )
    text_bar = "20/20" in streams["stderr"] and "100%|" in streams["stderr"]
    assert widget or text_bar, streams["stderr"]
    out = streams["stdout"]
    assert "sum 2470" in out
    # Printed by the job, streamed to the cell, while the job still ran
    # (result() then replays the job's captured output, as compute() does).
    assert "streamed while RUNNING" in out
    assert out.index("a line from a running job") < out.index("streamed while RUNNING")
    assert out.endswith("a line from a running job\nfinished\n")
