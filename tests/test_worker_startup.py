"""A worker's start-up, before it says READY: its pipes are read from spawn.

The worker under test is the real ``worker_proc``, behind a package of the
same name in the server's working directory (``python -m worker_proc`` finds
that one first). Its ``__init__`` makes noise on stderr, as a chatty
sitecustomize or a flood of import warnings would, then hands over to the
real package by extending its ``__path__``.
"""

from __future__ import annotations

import importlib.util
import re
import time
from pathlib import Path

from distribute_client import compute_this
from pool_server.process import READY_TIMEOUT_S

from .conftest import StartServer

# Lines of 1 KiB: 1 MiB in all. asyncio buffers up to twice a pipe reader's
# limit (2 x 256 KiB here) before it stops reading, and the pipe holds 64 KiB:
# an unread stderr blocks the worker once it has written about 576 KiB.
NOISE_LINES = 1024

NOISY_INIT = """\
import os
for i in range({lines}):
    line = b"start-up noise %d " % i
    os.write(2, line + b"n" * (1023 - len(line)) + b"\\n")
__path__.append({real!r})
"""


def echo(x: object) -> object:
    return x


def real_worker_dir() -> str:
    spec = importlib.util.find_spec("worker_proc")
    assert spec is not None and spec.submodule_search_locations
    return str(spec.submodule_search_locations[0])


def test_noisy_start_up_is_logged_and_does_not_stall_the_worker(
    start_server: StartServer, tmp_path: Path
) -> None:
    """A worker that writes 1 MiB to stderr before READY starts at once (a
    full, unread stderr pipe would block it until the READY timeout), its
    noise is in the server log with the worker's id, and calls work."""
    fake = tmp_path / "worker_proc"
    fake.mkdir()
    (fake / "__init__.py").write_text(NOISY_INIT.format(lines=NOISE_LINES, real=real_worker_dir()))
    started = time.monotonic()
    server = start_server("--workers", "2", cwd=tmp_path)
    took = time.monotonic() - started
    assert took < READY_TIMEOUT_S * 2 / 3, f"start-up took {took:.1f} s"
    log = server.log()
    for worker in (1, 2):
        noise = re.findall(rf"worker {worker} \(pid \d+\): start-up noise (\d+) n+$", log, re.M)
        assert noise == [str(i) for i in range(NOISE_LINES)], log[-2000:]
    assert [compute_this(server.address)(echo)(i).compute() for i in range(4)] == [0, 1, 2, 3]
