"""A map whose function references a large global (issue 15's 32 MB array):
time, the client's peak memory and the journal's size.

Usage::

    python -m bench.large_globals [--mib 32] [--items 40] [--workers 2]

Each case runs in a fresh client process against one 2-worker server: a
plain map, a durable map (journaled chunks), and a durable map with
``chunk_size=1`` (one job per item), and a plain map whose function refers
to the global stored once with ``Client.put`` (timed with the put). The
function returns a byte of the global, so the work is nothing and the
figures are what moving the global costs. Prints seconds, the client's
peak RSS (``ru_maxrss``), and the state dir's size once the map has
returned: the journal with its WAL, and the payload files of large
unfinished payloads.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from bench._server import pool_server

CASES: dict[str, dict[str, object]] = {
    "plain map": {},
    "durable map": {"durable": True},
    "durable map, chunk_size=1": {"durable": True, "chunk_size": 1},
    "plain map, put() + Ref": {"ref": True},
}


def client(address: str, mib: int, items: int, options: dict[str, object]) -> None:
    """One case, in this process: prints its seconds and peak RSS as JSON."""
    from distribute_client import Client, compute_this

    table = os.urandom(mib << 20)
    start = time.perf_counter()
    options = dict(options)
    stored: bytes = Client(address).put(table) if options.pop("ref", False) else table  # type: ignore[assignment]

    @compute_this(address)
    def lookup(i: int) -> int:
        return stored[i * 4096]

    with lookup.map(range(items), **options) as results:  # type: ignore[arg-type]
        values = list(results)
    seconds = time.perf_counter() - start
    assert values == [table[i * 4096] for i in range(items)]
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"seconds": seconds, "rss": peak}))


def state_mib(state_dir: Path) -> str:
    """The state dir's size: the journal, its WAL, the payload files."""
    journal = state_dir / "journal.sqlite3"
    wal = state_dir / "journal.sqlite3-wal"
    files = sum(p.stat().st_size for p in (state_dir / "payloads").glob("*"))
    sizes = [p.stat().st_size if p.exists() else 0 for p in (journal, wal)]
    return f"{sum(sizes) / 2**20:6.1f} + {files / 2**20:6.1f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mib", type=int, default=32)
    parser.add_argument("--items", type=int, default=40)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--client", nargs=2, metavar=("ADDRESS", "CASE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.client:
        address, case = args.client
        client(address, args.mib, args.items, CASES[case])
        return
    print(f"a map of {args.items} items over a {args.mib} MiB global, {args.workers} workers")
    print(f"{'case':28} {'seconds':>8} {'client peak RSS':>16}   journal + payload files")
    with pool_server(args.workers) as server:
        for case in CASES:
            command = [sys.executable, "-m", "bench.large_globals", "--mib", str(args.mib)]
            command += ["--items", str(args.items), "--client", server.address, case]
            done = subprocess.run(command, capture_output=True, text=True, timeout=900)
            if done.returncode != 0:
                print(f"{case:28} failed: {done.stderr.strip().splitlines()[-1]}")
                continue
            figures = json.loads(done.stdout.splitlines()[-1])
            print(
                f"{case:28} {figures['seconds']:8.2f} {figures['rss'] / 2**20:12.0f} MiB   "
                f"{state_mib(server.state_dir)}"
            )


if __name__ == "__main__":
    main()
