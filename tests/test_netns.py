"""The network-namespace harness (tests/netns.py) against real servers: each
server answers from its own namespace, a cut server stalls until its call's
deadline while the others answer, and a restored one answers again."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from distribute_client import CallTimeoutError, ServerUnavailableError, compute_this

from .conftest import ServerProcess
from .netns import Network, netns, network, remove_leftovers, require_netns

__all__ = ["netns"]  # the fixture, imported for the tests below


CUT_TIMEOUT_S = 2.0


def where() -> tuple[int, int]:
    """The worker's pid and the inode of its network namespace."""
    return os.getpid(), os.stat("/proc/self/ns/net").st_ino


def ask(server: ServerProcess, timeout: float) -> tuple[int, int]:
    return compute_this(server.address, timeout=timeout)(where)().compute()


def assert_stalls(server: ServerProcess) -> None:
    """A call to a cut server fails by its deadline, not at once (no RST)."""
    start = time.monotonic()
    with pytest.raises((CallTimeoutError, ServerUnavailableError)):
        ask(server, CUT_TIMEOUT_S)
    elapsed = time.monotonic() - start
    assert CUT_TIMEOUT_S * 0.9 <= elapsed < CUT_TIMEOUT_S + 3, elapsed


def test_cut_server_stalls_while_the_other_answers(netns: Network) -> None:
    servers = [netns.start_server(i, "--workers", "1") for i in range(2)]
    for i, server in enumerate(servers):
        assert server.address.startswith(f"{netns[i].address}:")  # 10.231.0.(10 + i):PORT
        # nsenter exec'd the server: signals from stop() reach it, not a wrapper.
        assert b"pool_server" in Path(f"/proc/{server.proc.pid}/cmdline").read_bytes()
        pid, inode = ask(server, 30)
        assert inode == netns[i].inode() != os.stat("/proc/self/ns/net").st_ino
        assert pid in server.pids()

    netns.cut(0)
    assert_stalls(servers[0])
    assert ask(servers[1], 30)[1] == netns[1].inode()
    assert_stalls(servers[0])  # a second call on the same stalled connection

    netns.restore(0)
    start = time.monotonic()
    assert ask(servers[0], 30)[1] == netns[0].inode()
    # At TCP's next retransmission: after this ~4 s cut, within about 4 s more.
    assert time.monotonic() - start < 15


def test_a_new_connection_to_a_cut_server_stalls(netns: Network) -> None:
    server = netns.start_server(2, "--workers", "1")
    netns.cut(2)  # before this process ever connected to it
    assert_stalls(server)
    # Left cut: the fixture restores the link before stopping the server.


def test_everything_is_removed_and_leftovers_of_dead_runs_too(tmp_path: Path) -> None:
    require_netns()
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # its pid is a run that was killed, for the leftovers below
    subprocess.run(["ip", "link", "add", f"pbr{dead.pid}a", "type", "bridge"], check=True)
    subprocess.run(["ip", "netns", "add", f"pns{dead.pid}a0"], check=True)
    with network(1, tmp_path) as net:
        names = [net.bridge, net[0].host_veth]
        links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
        assert all(name in links for name in names)
        assert f"pbr{dead.pid}a" not in links
        assert net[0].name in subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
        net.cut(0)
    links = subprocess.run(["ip", "-br", "link"], capture_output=True, text=True).stdout
    namespaces = subprocess.run(["ip", "netns"], capture_output=True, text=True).stdout
    assert not any(name in links for name in names), links
    assert net[0].name not in namespaces and f"pns{dead.pid}a0" not in namespaces
    assert remove_leftovers() == []
