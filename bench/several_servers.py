"""One server against three, each in its own network namespace, under the
same open-loop load (``pool-client load``) of 50 ms sleep calls.

    sudo .venv/bin/python -m bench.several_servers [--rates 30,60,100] [--duration 20]

Needs root and ip(8): the servers run in namespaces made by the tests'
harness (``tests/netns.py``), 2 workers each. Prints, per offered rate, the
achieved rate and the corrected p99 for one server and for three; a 2-worker
server saturates at about 2 / 0.05 s = 40 calls/s.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys

from tests.netns import Network, network

WORKERS = 2
FUNCTION = "sleep:50"


def load(servers: str, rate: float, duration: float) -> dict[str, object]:
    """One ``pool-client load`` run against ``servers``: its JSON report."""
    command = [sys.executable, "-m", "distribute_client.cli", "--server", servers, "load"]
    command += ["--rps", str(rate), "--duration", str(duration), "--warmup", "2"]
    command += ["--function", FUNCTION, "--json"]
    out = subprocess.run(command, capture_output=True, text=True, timeout=duration + 120)
    if not out.stdout:
        raise SystemExit(f"pool-client load failed ({out.returncode}): {out.stderr}")
    report: dict[str, object] = json.loads(out.stdout)
    return report


def measure(net: Network, rates: list[float], duration: float) -> None:
    servers = [net.start_server(i, "--workers", str(WORKERS)) for i in range(3)]
    one, three = servers[0].address, ",".join(s.address for s in servers)
    print(f"servers: {three}, {WORKERS} workers each; function {FUNCTION}; {duration:g} s per run")
    print("| offered /s | servers | achieved /s | corrected p50 | corrected p99 | max | dropped |")
    print("|---|---|---|---|---|---|---|")
    for rate in rates:
        for label, target in (("1", one), ("3", three)):
            report = load(target, rate, duration)
            corrected = report["corrected_ms"]
            assert isinstance(corrected, dict)
            print(
                f"| {rate:g} | {label} | {report['achieved_rps']:.1f} | "
                f"{corrected.get('p50', float('nan')):.1f} ms | "
                f"{corrected.get('p99', float('nan')):.1f} ms | "
                f"{corrected.get('max', float('nan')):.0f} ms | {report['dropped']} |",
                flush=True,
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rates", default="30,60,100", help="offered rates, comma separated")
    parser.add_argument("--duration", type=float, default=20.0, help="seconds per run")
    args = parser.parse_args()
    rates = [float(rate) for rate in args.rates.split(",")]
    with network(3) as net:
        measure(net, rates, args.duration)


if __name__ == "__main__":
    main()
