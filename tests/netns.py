"""Pool-servers in Linux network namespaces, for tests that cut their network.

One ``Network`` is a bridge in the root namespace (where pytest and its
clients run) and N namespaces, each wired to it by a veth pair::

    root namespace: bridge pbr<pid><seq>, 10.231.S.1/24
      ├── pvh<pid><seq>0 ══ veth ══ eth0 in namespace pns<pid><seq>0, 10.231.S.10/24
      ├── pvh<pid><seq>1 ══ veth ══ eth0 in namespace pns<pid><seq>1, 10.231.S.11/24
      └── ...

``S`` is 0 unless another live run holds 10.231.0.0/24, then the next free
one. A test uses the ``netns`` fixture (three namespaces), or ``network(n,
log_dir)`` as a context manager::

    from .netns import Network, netns

    __all__ = ["netns"]  # the fixture is used, as ruff sees it

    def test_x(netns: Network) -> None:
        server = netns.start_server(0, "--workers", "1")  # conftest's ServerProcess
        server.address  # '10.231.0.10:41234'
        netns.cut(0)  # the cable is pulled: calls to it stall, then time out
        netns.restore(0)

**How a cut is made.** ``cut`` sets the *host-side* veth down (``ip link set
pvh... down``). The namespace's ``eth0`` stays administratively up but loses
its carrier (NO-CARRIER), so its address and routes stay and the server
notices nothing, as with a pulled cable: its own connects time out too. The
bridge drops what the root namespace sends that way. Setting the inside end
down instead also stalls the root namespace's connections silently (tried:
the same timeouts), but it removes the namespace's routes, so the server's
own sends fail at once with ENETUNREACH ("Network is unreachable"), which a
cable cut does not do. Either way no RST comes back: an open connection's
sends are retransmitted into the void and a new connection's SYN goes
unanswered, so a call fails only by its deadline. One more thing would break
the silence: after a minute or so without answers to ARP, the kernel marks
the peer's neighbour entry FAILED and ``connect`` fails with EHOSTUNREACH
("No route to host"; observed some 80 s into a cut). So every namespace's
address has a permanent neighbour entry on the bridge, and the bridge's
address one in each namespace (the bridge's MAC is set at creation, so it
never changes): a cut stays silent however long it lasts (observed: connects
still timing out 90 s into one).

On ``restore`` the port forwards at once (the bridge has no STP), but a
stalled connection resumes only with TCP's next retransmission, and those
back off from 200 ms, doubling: after a cut of T seconds the first answer
may take about T more (observed with a one-server client, which sends no
keepalive pings: 6.4 s after a 7 s cut, 2-3 s after a 4 s one). Calls that
timed out during the cut reach the server then, with their cancels: one
that starts running has its worker replaced.

**How a server enters its namespace.** ``nsenter --net=/run/netns/NS --``
execs the server (the Popen's pid is the server's) with only its network
namespace changed. ``ip netns exec`` would also remount ``/sys``, losing
``/sys/fs/cgroup``, and the server would fall back from cgroup.kill to
process groups for stopping workers (its start-up log says so): a different
server from the one the other tests run.

Everything a ``Network`` made is removed when it ends, whether the test
passed or not: servers stopped (after restoring any cut link, so that their
final checks can reach them), processes still in a namespace killed, the
host-side veths (which takes the inside ends with them at once; deleting a
namespace frees its devices only later), the namespaces and the bridge.
Leftovers of runs whose process is gone (a killed pytest) are removed when
a ``Network`` starts; names carry the owning pid for that.

Needs root, ``ip`` (Debian: iproute2) and ``nsenter`` (util-linux); without
them the test is skipped with the reason.
"""

from __future__ import annotations

import contextlib
import fcntl
import itertools
import json
import os
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path

import pytest

from .conftest import ServerProcess, launch_server, pid_alive

NAMESPACES = 3  # the ``netns`` fixture's
SUBNET_PREFIX = "10.231"  # networks are 10.231.S.0/24
FIRST_HOST = 10  # namespace i has 10.231.S.(10 + i)
INNER_VETH = "eth0"  # the namespace's end of its veth pair
IP_TIMEOUT_S = 10.0

# pbr<pid><seq>, pvh<pid><seq><i>, pns<pid><seq><i>: a pid has at most 7
# digits (pid_max 4194304), so the longest, a veth, is 3 + 7 + 1 + 2 = 13
# characters, within the 15 an interface name may have.
_NAME = re.compile(r"^(pbr|pvh|pns)(\d+)[a-z]\d*$")
_sequence = itertools.count()


class NetnsError(RuntimeError):
    """An ``ip`` command failed; the message has its command line and stderr."""


def _ip(*args: str, check: bool = True) -> str:
    """Run ``ip ARGS``; its stdout, or NetnsError with its stderr."""
    command = ["ip", *args]
    done = subprocess.run(command, capture_output=True, text=True, timeout=IP_TIMEOUT_S)
    if check and done.returncode != 0:
        raise NetnsError(f"{' '.join(command)}: exit {done.returncode}: {done.stderr.strip()}")
    return done.stdout


@cache
def unavailable_reason() -> str | None:
    """Why namespaces cannot be made here, or None if they can (tried once
    per process: a namespace, a bridge and a veth pair are made and deleted)."""
    if os.geteuid() != 0:
        return "not running as root"
    for tool, package in (("ip", "iproute2"), ("nsenter", "util-linux")):
        if shutil.which(tool) is None:
            return f"no {tool} command (Debian package {package})"
    tag = f"{os.getpid()}z"
    probes = (
        ("netns", "add", f"pns{tag}"),
        ("link", "add", f"pbr{tag}", "type", "bridge"),
        (
            "link",
            "add",
            f"pvh{tag}",
            "type",
            "veth",
            "peer",
            "name",
            INNER_VETH,
            "netns",
            f"pns{tag}",
        ),
    )
    try:
        for probe in probes:
            _ip(*probe)
    except (NetnsError, OSError, subprocess.TimeoutExpired) as e:
        return f"ip {probe[0]} add failed: {e}"
    finally:
        _ip("link", "del", f"pvh{tag}", check=False)
        _ip("link", "del", f"pbr{tag}", check=False)
        _ip("netns", "del", f"pns{tag}", check=False)
    return None


def require_netns() -> None:
    """Skip the test where network namespaces cannot be made."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"network namespaces need root and ip(8): {reason}")


@dataclass
class Namespace:
    """One namespace of a Network, and its veth pair's host-side end."""

    index: int
    name: str  # for ip netns
    address: str  # of its eth0, e.g. 10.231.0.10
    host_veth: str  # on the bridge, in the root namespace
    is_cut: bool = False

    @property
    def prefix(self) -> tuple[str, ...]:
        """What runs a command in this namespace (and nothing else changed)."""
        return ("nsenter", f"--net=/run/netns/{self.name}", "--")

    def run(self, *command: str) -> subprocess.CompletedProcess[str]:
        """Run a command in the namespace and wait for it (no check)."""
        return subprocess.run(
            [*self.prefix, *command], capture_output=True, text=True, timeout=IP_TIMEOUT_S
        )

    def inode(self) -> int:
        """The namespace's inode, as ``os.stat('/proc/self/ns/net')`` of a
        process in it reports it."""
        return os.stat(f"/run/netns/{self.name}").st_ino


@dataclass
class Network:
    """A bridge and its namespaces; see the module docstring."""

    bridge: str
    gateway: str  # the bridge's address: the root namespace's, as the servers see it
    namespaces: list[Namespace]
    log_dir: Path
    servers: list[ServerProcess] = field(default_factory=list)

    def __getitem__(self, index: int) -> Namespace:
        return self.namespaces[index]

    def _ns(self, ns: Namespace | int) -> Namespace:
        return ns if isinstance(ns, Namespace) else self.namespaces[ns]

    def start_server(
        self,
        ns: Namespace | int,
        *args: str,
        env: dict[str, str] | None = None,
        token: str | None = None,
    ) -> ServerProcess:
        """Start a pool-server in ``ns`` on its address and a free port, as
        conftest's ``start_server`` does (journal beside its log in
        ``log_dir``); it is stopped when the Network ends."""
        ns = self._ns(ns)
        log_path = self.log_dir / f"{ns.name}-server{len(self.servers)}.log"
        server = launch_server(
            log_path, "--host", ns.address, *args, env=env, token=token, prefix=ns.prefix
        )
        self.servers.append(server)
        return server

    def cut(self, ns: Namespace | int) -> None:
        """Pull the namespace's cable: its host-side veth down. Connections
        to and from it stall without an error until ``restore``."""
        ns = self._ns(ns)
        _ip("link", "set", ns.host_veth, "down")
        ns.is_cut = True

    def restore(self, ns: Namespace | int) -> None:
        """Plug the cable back in: stalled connections resume at TCP's next
        retransmission (after a cut of T s, up to about T s later)."""
        ns = self._ns(ns)
        _ip("link", "set", ns.host_veth, "up")
        ns.is_cut = False


def _random_mac() -> str:
    """A locally administered unicast MAC."""
    return ":".join(f"{b:02x}" for b in (0x02, *secrets.token_bytes(5)))


def _link_names() -> list[str]:
    return [link["ifname"] for link in json.loads(_ip("-j", "link", "show") or "[]")]


def _netns_names() -> list[str]:
    return [line.split()[0] for line in _ip("netns", "list").splitlines() if line.strip()]


def _kill_processes_in(ns_name: str) -> None:
    """SIGKILL what is left in a namespace (a server that would not stop):
    a namespace holding processes outlives ``ip netns del``."""
    for pid in _ip("netns", "pids", ns_name, check=False).split():
        with contextlib.suppress(ProcessLookupError):
            os.kill(int(pid), signal.SIGKILL)


def remove_leftovers() -> list[str]:
    """Delete the bridges, veths and namespaces of runs whose process is
    gone (their names hold its pid); returns what was deleted."""
    removed: list[str] = []

    def dead(name: str) -> bool:
        match = _NAME.match(name)
        return match is not None and not pid_alive(int(match[2]))

    # Host-side veths first (their inside ends go with them), then bridges.
    for name in sorted((n for n in _link_names() if dead(n)), key=lambda n: n[:3] != "pvh"):
        _ip("link", "del", name, check=False)
        removed.append(name)
    for name in _netns_names():
        if dead(name):
            _kill_processes_in(name)
            _ip("netns", "del", name, check=False)
            removed.append(name)
    return removed


@contextlib.contextmanager
def _subnet_lock() -> Iterator[None]:
    """Serialise choosing a subnet among runs on this machine."""
    with open(Path(tempfile.gettempdir()) / "pool-server-netns.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def _free_subnet() -> str:
    """The first 10.231.S that no interface of the root namespace uses."""
    used: set[str] = set()
    for link in json.loads(_ip("-j", "-4", "addr", "show") or "[]"):
        for info in link.get("addr_info", []):
            used.add(".".join(info.get("local", "").split(".")[:3]))
    for s in range(256):
        if f"{SUBNET_PREFIX}.{s}" not in used:
            return f"{SUBNET_PREFIX}.{s}"
    raise NetnsError(f"every {SUBNET_PREFIX}.S.0/24 is in use")


def _add_namespace(network: Network, tag: str, index: int, subnet: str, bridge_mac: str) -> None:
    name, veth = f"pns{tag}{index}", f"pvh{tag}{index}"
    address = f"{subnet}.{FIRST_HOST + index}"
    _ip("netns", "add", name)
    ns = Namespace(index, name, address, veth)
    network.namespaces.append(ns)  # from here on, teardown removes it
    _ip("link", "add", veth, "type", "veth", "peer", "name", INNER_VETH, "netns", name)
    _ip("link", "set", veth, "master", network.bridge)
    _ip("link", "set", veth, "up")
    _ip("-n", name, "addr", "add", f"{address}/24", "dev", INNER_VETH)
    _ip("-n", name, "link", "set", INNER_VETH, "up")
    _ip("-n", name, "link", "set", "lo", "up")
    (inner,) = json.loads(_ip("-n", name, "-j", "link", "show", INNER_VETH))
    # Permanent neighbours both ways, so a long cut never turns into
    # EHOSTUNREACH when ARP gives up (see the module docstring).
    mac = inner["address"]
    _ip("neigh", "replace", address, "lladdr", mac, "nud", "permanent", "dev", network.bridge)
    gateway = (network.gateway, "lladdr", bridge_mac, "nud", "permanent", "dev", INNER_VETH)
    _ip("-n", name, "neigh", "replace", *gateway)


def _teardown(network: Network) -> None:
    """Stop the servers, then delete everything; every step runs even if
    one before it failed, and the first failure is raised at the end."""
    with contextlib.ExitStack() as stack:
        # Registered in reverse: these run bridge last, servers first.
        stack.callback(_ip, "link", "del", network.bridge, check=False)
        for ns in network.namespaces:
            stack.callback(_ip, "netns", "del", ns.name, check=False)
            stack.callback(_kill_processes_in, ns.name)
            stack.callback(_ip, "link", "del", ns.host_veth, check=False)
        for server in network.servers:
            stack.callback(server.stop)
        for ns in network.namespaces:
            if ns.is_cut:
                stack.callback(network.restore, ns)


@contextlib.contextmanager
def network(count: int = NAMESPACES, log_dir: Path | None = None) -> Iterator[Network]:
    """``count`` namespaces on a new bridge; everything removed afterwards.
    Skips the test where namespaces cannot be made. ``log_dir`` holds the
    servers' logs and journals (default: a temporary directory)."""
    require_netns()
    remove_leftovers()
    with contextlib.ExitStack() as stack:
        if log_dir is None:
            log_dir = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        tag = f"{os.getpid()}{'abcdefghijklmnopqrstuvwxy'[next(_sequence) % 25]}"
        bridge, bridge_mac = f"pbr{tag}", _random_mac()
        for name in (bridge, *(f"pvh{tag}{i}" for i in range(count))):  # our own leftovers
            if name in _link_names():
                _ip("link", "del", name)
        for name in (f"pns{tag}{i}" for i in range(count)):
            if name in _netns_names():
                _ip("netns", "del", name)
        with _subnet_lock():
            subnet = _free_subnet()
            # The bridge's MAC is set here, so it never follows its ports'.
            _ip("link", "add", bridge, "address", bridge_mac, "type", "bridge")
            net = Network(bridge, f"{subnet}.1", [], log_dir)
            stack.callback(_teardown, net)
            _ip("addr", "add", f"{net.gateway}/24", "dev", bridge)
        _ip("link", "set", bridge, "up")
        for i in range(count):
            _add_namespace(net, tag, i, subnet, bridge_mac)
        yield net


@pytest.fixture
def netns(tmp_path: Path) -> Iterator[Network]:
    """Three namespaces on one bridge: ``netns.start_server(i, *args)`` starts
    a server in namespace i (address 10.231.0.(10 + i):PORT), ``netns.cut(i)``
    and ``netns.restore(i)`` pull and replug its cable. Everything is stopped
    and removed after the test; skipped where namespaces cannot be made."""
    with network(NAMESPACES, tmp_path) as net:
        yield net
